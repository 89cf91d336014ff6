"""The graph port's value types: what a symbol edge and a provenance graph accept."""

from __future__ import annotations

import json

import pytest

from quantmesh.runtime.errors import InvalidArgument
from quantmesh.storage.graph import (
    DecisionProvenance,
    NodeKind,
    NodeRef,
    ProvenanceEdge,
    ProvenanceNode,
    Relation,
    SymbolEdge,
    decision_provenance,
)

DECISION = NodeRef(NodeKind.RISK_DECISION, "dec-1")
SIGNAL = NodeRef(NodeKind.SIGNAL, "sig-1")


def test_symbol_edges_are_checked_and_clipped() -> None:
    edge = SymbolEdge("EURUSD", "EUR", "USD", {"GBPUSD": 1.0000000001, "USDJPY": -0.3})
    assert edge.correlation == {"GBPUSD": 1.0, "USDJPY": -0.3}  # float noise past 1 clipped
    assert edge.other("USD") == "EUR"
    assert SymbolEdge.from_dict(json.loads(json.dumps(edge.to_dict()))) == edge
    for bad in (
        lambda: SymbolEdge("EURUSD", "EUR", "EUR"),
        lambda: SymbolEdge("EURUSD", "eur", "USD"),
        lambda: SymbolEdge("EURUSD", "EUR", "USD", {"GBPUSD": 1.5}),
        lambda: SymbolEdge("EURUSD", "EUR", "USD", {"GBPUSD": float("nan")}),
        lambda: SymbolEdge("EURUSD", "EUR", "USD", {"EURUSD": 1.0}),
        lambda: SymbolEdge("", "EUR", "USD"),
    ):
        with pytest.raises(InvalidArgument):
            bad()


def test_the_usual_provenance_has_the_documented_edges() -> None:
    provenance = decision_provenance(
        "dec-1",
        signal_id="sig-1",
        prediction_id="pred-1",
        model_name="eurusd-h1",
        model_version="3",
        feature_row="EURUSD@1700000000000",
        orders={"ord-1": ["fill-1", "fill-2"]},
    )
    relations = {(str(e.source), e.relation, str(e.target)) for e in provenance.edges}
    assert relations == {
        ("risk_decision/dec-1", "evaluates", "signal/sig-1"),
        ("signal/sig-1", "from_prediction", "prediction/pred-1"),
        ("prediction/pred-1", "predicted_by", "model_version/eurusd-h1@3"),
        ("prediction/pred-1", "from_features", "feature_row/EURUSD@1700000000000"),
        ("risk_decision/dec-1", "ordered", "order/ord-1"),
        ("order/ord-1", "filled_by", "fill/fill-1"),
        ("order/ord-1", "filled_by", "fill/fill-2"),
    }
    model = provenance.node(NodeRef(NodeKind.MODEL_VERSION, "eurusd-h1@3"))
    assert model.attributes == {"name": "eurusd-h1", "version": "3"}
    # JSON and back, as the journal and ArangoDB store it, in any order.
    data = json.loads(json.dumps(provenance.to_dict()))
    data["edges"].reverse()
    assert DecisionProvenance.from_dict(data) == provenance


def test_a_provenance_must_hang_together() -> None:
    evaluates = ProvenanceEdge(DECISION, SIGNAL, Relation.EVALUATES)
    with pytest.raises(InvalidArgument, match="lacks its node risk_decision/dec-1"):
        DecisionProvenance("dec-1", (ProvenanceNode(SIGNAL),))
    with pytest.raises(InvalidArgument, match="unknown node signal/sig-1"):
        DecisionProvenance("dec-1", (ProvenanceNode(DECISION),), (evaluates,))
    with pytest.raises(InvalidArgument, match="nodes on no edge: signal/sig-1"):
        DecisionProvenance("dec-1", (ProvenanceNode(DECISION), ProvenanceNode(SIGNAL)))
    with pytest.raises(InvalidArgument, match="appears twice"):
        DecisionProvenance("dec-1", (ProvenanceNode(DECISION), ProvenanceNode(DECISION)))
    with pytest.raises(InvalidArgument, match="must be str, int, float or bool"):
        ProvenanceNode(SIGNAL, {"features": [1.0, 2.0]})  # type: ignore[dict-item]
    alone = DecisionProvenance("dec-1", (ProvenanceNode(DECISION, {"approved": False}),))
    assert alone.edges == ()

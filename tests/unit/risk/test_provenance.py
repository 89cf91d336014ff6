"""A decision's provenance from its signal and execution's answers, and the currency edges
risk merges into the graph: pure functions, no store."""

from __future__ import annotations

import pytest

from quantmesh.common.v1 import common_pb2
from quantmesh.decision.v1 import decision_pb2
from quantmesh.execution.v1 import execution_pb2
from quantmesh.risk.v1 import risk_pb2
from quantmesh.runtime.errors import InvalidArgument
from quantmesh.services.risk.config import KNOWN_SYMBOLS
from quantmesh.services.risk.exposure import merge_symbol_edges, symbol_edges
from quantmesh.services.risk.provenance import (
    OrderAnswer,
    dry_run_decision_id,
    feature_row_key,
    prediction_key,
    signal_provenance,
    with_recorded_orders,
)
from quantmesh.storage.graph import NodeKind, NodeRef, ProvenanceEdge, Relation, SymbolEdge

T = 1_483_352_850_309
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
MODEL = NodeRef(NodeKind.MODEL_VERSION, "eurusd-h1-direction@3")
PREDICTION = NodeRef(NodeKind.PREDICTION, f"eurusd-h1-direction@3:EURUSD@{T}")
FEATURES = NodeRef(NodeKind.FEATURE_ROW, f"EURUSD@{T}")


def a_signal(**changes: object) -> decision_pb2.Signal:
    fields: dict[str, object] = {
        "signal_id": "sig-1",
        "symbol": "EURUSD",
        "action": decision_pb2.ACTION_BUY,
        "confidence": 0.4,
        "model_name": "eurusd-h1-direction",
        "model_version": "3",
        "model_alias": "champion",
        "output_names": ["probability_up"],
        "output_values": [0.7],
        "policy": "threshold@1",
        "time_msc": T,
        "prediction_seq": 41,
        "feature_seq": 40,
        "seq": 7,
        "trace": common_pb2.TraceContext(traceparent=TRACEPARENT),
    }
    fields.update(changes)
    return decision_pb2.Signal(**fields)  # type: ignore[arg-type]


def a_decision(approved: bool = True) -> risk_pb2.RiskDecision:
    verdicts = [
        risk_pb2.RuleVerdict(rule="kill_switch", passed=True),
        risk_pb2.RuleVerdict(rule="confidence", passed=approved),
        risk_pb2.RuleVerdict(rule="min_reward_risk", passed=approved),
    ]
    return risk_pb2.RiskDecision(
        signal_id="sig-1",
        account_id="paper",
        approved=approved,
        volume=common_pb2.Lots(units=0, nanos=130_000_000 if approved else 0),
        risk_amount=common_pb2.Money(currency="USD", units=200 if approved else 0),
        verdicts=verdicts,
        reason="approved" if approved else "rejected: confidence, min_reward_risk",
        time_msc=T,
        trace=common_pb2.TraceContext(traceparent=TRACEPARENT),
    )


def answered(order_id: str, key: str = "sig-1", outcome: str = "submitted") -> OrderAnswer:
    return OrderAnswer(
        execution_pb2.Order(
            order_id=order_id,
            idempotency_key=key,
            symbol="EURUSD",
            side=common_pb2.SIDE_BUY,
            volume=common_pb2.Lots(nanos=130_000_000),
            state=execution_pb2.ORDER_STATE_ACCEPTED,
        ),
        outcome,
    )


def test_keys_name_the_model_version_and_the_feature_row() -> None:
    assert feature_row_key("EURUSD", T) == f"EURUSD@{T}"
    assert prediction_key("eurusd-h1-direction", "3", "EURUSD", T) == PREDICTION.key
    assert dry_run_decision_id("paper", "sig-1") == "dry-run:paper:sig-1"


def test_an_approved_decision_links_signal_prediction_model_features_and_orders() -> None:
    provenance = signal_provenance("sig-1", a_signal(), a_decision(), [answered("O1")])
    root, signal = provenance.root, NodeRef(NodeKind.SIGNAL, "sig-1")
    order = NodeRef(NodeKind.ORDER, "O1")
    assert set(provenance.edges) == {
        ProvenanceEdge(root, signal, Relation.EVALUATES),
        ProvenanceEdge(signal, PREDICTION, Relation.FROM_PREDICTION),
        ProvenanceEdge(PREDICTION, MODEL, Relation.PREDICTED_BY),
        ProvenanceEdge(PREDICTION, FEATURES, Relation.FROM_FEATURES),
        ProvenanceEdge(root, order, Relation.ORDERED),
    }
    decision = provenance.node(root).attributes
    assert decision["verdict"] == "approved"
    assert decision["approved"] is True
    assert decision["failed_rules"] == ""
    assert (decision["volume"], decision["risk_amount"]) == ("0.13", "200 USD")
    assert decision["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert decision["dry_run"] is False
    assert "unrecorded_orders" not in decision
    assert provenance.node(signal).attributes == {
        "action": "BUY",
        "confidence": 0.4,
        "model_alias": "champion",
        "policy": "threshold@1",
        "seq": 7,
        "symbol": "EURUSD",
        "time_msc": T,
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    }
    assert provenance.node(PREDICTION).attributes["output.probability_up"] == 0.7
    assert provenance.node(PREDICTION).attributes["seq"] == 41
    assert provenance.node(FEATURES).attributes["seq"] == 40
    assert provenance.node(MODEL).attributes == {"name": "eurusd-h1-direction", "version": "3"}
    assert provenance.node(order).attributes == {
        "idempotency_key": "sig-1",
        "outcome": "submitted",
        "side": "BUY",
        "state": "ACCEPTED",
        "symbol": "EURUSD",
        "volume": "0.13",
    }


def test_fills_an_answer_names_hang_off_their_order() -> None:
    answer = OrderAnswer(answered("O1").order, "submitted", fill_ids=("D1", "D2"))
    provenance = signal_provenance("sig-1", a_signal(), a_decision(), [answer])
    order = NodeRef(NodeKind.ORDER, "O1")
    fills = {e.target for e in provenance.edges if e.relation == Relation.FILLED_BY}
    assert fills == {NodeRef(NodeKind.FILL, "D1"), NodeRef(NodeKind.FILL, "D2")}
    assert {e.source for e in provenance.edges if e.relation == Relation.FILLED_BY} == {order}


def test_a_rejected_decision_has_no_order_and_names_its_failing_rules() -> None:
    provenance = signal_provenance("sig-1", a_signal(), a_decision(approved=False))
    assert not [n for n in provenance.nodes if n.ref.kind in (NodeKind.ORDER, NodeKind.FILL)]
    decision = provenance.node(provenance.root).attributes
    assert (decision["verdict"], decision["approved"]) == ("rejected", False)
    assert decision["failed_rules"] == "confidence,min_reward_risk"
    assert decision["reason"] == "rejected: confidence, min_reward_risk"


def test_an_order_execution_gave_no_id_is_named_on_the_decision_not_a_node() -> None:
    refused = OrderAnswer(
        execution_pb2.Order(idempotency_key="sig-1:P1"), "FAILED_PRECONDITION: no position"
    )
    provenance = signal_provenance("sig-1", a_signal(), a_decision(), [answered("O1"), refused])
    assert [n.ref.key for n in provenance.nodes if n.ref.kind == NodeKind.ORDER] == ["O1"]
    decision = provenance.node(provenance.root).attributes
    assert decision["unrecorded_orders"] == "sig-1:P1: FAILED_PRECONDITION: no position"


def test_a_dry_run_is_its_own_decision_on_the_same_signal() -> None:
    decision_id = dry_run_decision_id("paper", "sig-1")
    provenance = signal_provenance(decision_id, a_signal(), a_decision(), dry_run=True)
    assert provenance.root == NodeRef(NodeKind.RISK_DECISION, "dry-run:paper:sig-1")
    assert provenance.node(provenance.root).attributes["dry_run"] is True
    assert NodeRef(NodeKind.SIGNAL, "sig-1") in {n.ref for n in provenance.nodes}


@pytest.mark.parametrize("missing", ["model_name", "model_version"])
def test_a_signal_naming_no_model_has_no_provenance(missing: str) -> None:
    with pytest.raises(InvalidArgument, match="name and a version"):
        signal_provenance("sig-1", a_signal(**{missing: ""}), a_decision())


def test_a_decision_recorded_again_keeps_the_orders_recorded_before() -> None:
    first = signal_provenance(
        "sig-1", a_signal(), a_decision(), [OrderAnswer(answered("O1").order, "s", ("D1",))]
    )
    # Handled again after a restart: execution answered ALREADY_EXISTS, no order id.
    known = OrderAnswer(execution_pb2.Order(idempotency_key="sig-1"), "ALREADY_EXISTS: differs")
    again = signal_provenance("sig-1", a_signal(), a_decision(), [known])
    assert not [n for n in again.nodes if n.ref.kind == NodeKind.ORDER]
    merged = with_recorded_orders(again, first)
    assert set(merged.edges) == set(first.edges)
    assert merged.node(NodeRef(NodeKind.ORDER, "O1")) == first.node(NodeRef(NodeKind.ORDER, "O1"))
    # The decision's own attributes are the new evaluation's.
    assert "unrecorded_orders" in merged.node(merged.root).attributes
    assert with_recorded_orders(again, None) == again
    rejected = signal_provenance("sig-1", a_signal(), a_decision(approved=False))
    assert with_recorded_orders(again, rejected) == again


def test_merging_edges_keeps_stored_correlations_and_adds_only_what_is_missing() -> None:
    ours = symbol_edges(KNOWN_SYMBOLS)
    stored = [
        SymbolEdge("EURUSD", "EUR", "USD", {"GBPUSD": 0.8}, 5_000),
        SymbolEdge("GBPUSD", "GBP", "USD", {"EURUSD": 0.8}, 5_000),
        SymbolEdge("AUDUSD", "AUD", "USD", {}, 1_000),  # a symbol risk does not size
    ]
    merged, writes = merge_symbol_edges(ours, stored)
    assert [e.symbol for e in merged] == ["AUDUSD", "EURGBP", "EURUSD", "GBPUSD", "USDJPY"]
    assert [e.symbol for e in writes] == ["EURGBP", "USDJPY"]
    by_symbol = {e.symbol: e for e in merged}
    assert by_symbol["EURUSD"] == stored[0]
    assert by_symbol["EURUSD"].correlation == {"GBPUSD": 0.8}
    assert by_symbol["USDJPY"] == SymbolEdge("USDJPY", "USD", "JPY")


def test_a_stored_edge_with_other_currencies_is_rewritten_with_its_correlations() -> None:
    stored = [SymbolEdge("EURUSD", "EUR", "CHF", {"GBPUSD": -0.2}, 7)]
    merged, writes = merge_symbol_edges([SymbolEdge("EURUSD", "EUR", "USD")], stored)
    assert writes == (SymbolEdge("EURUSD", "EUR", "USD", {"GBPUSD": -0.2}, 7),)
    assert merged == writes

"""The graph port's contract, run on networkx (in memory and journalled) and on ArangoDB.

ArangoDB cannot run on this machine: its run needs ``QUANTMESH_TEST_ARANGO_URL``, e.g.
``arangodb://root:quantmesh@127.0.0.1:8529/quantmesh`` against compose's ``arangodb``
service with a published port. Each test then gets a database of its own (the URL's
database name plus a random suffix), dropped afterwards, so root is needed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from quantmesh.storage.graph import (
    DecisionProvenance,
    GraphPort,
    Neighbour,
    NodeKind,
    NodeRef,
    ProvenanceEdge,
    ProvenanceNode,
    Relation,
    SymbolEdge,
    decision_provenance,
    open_graph,
)
from quantmesh.storage.urls import StoreConfigError, parse_store_url

SETTING = "QUANTMESH_GRAPH_URL"
ARANGO_URL = os.environ.get("QUANTMESH_TEST_ARANGO_URL", "")


@dataclass
class Harness:
    graph: GraphPort
    # Closes the graph and opens the same store again; None where nothing is kept.
    reopen: Callable[[], GraphPort] | None


def _arango_database(url: str) -> Iterator[str]:
    """``url`` with a fresh database name; the database is dropped afterwards."""
    from arango.client import ArangoClient

    from quantmesh.storage.graph.arango import connection_settings

    parsed = parse_store_url(SETTING, url, {"arangodb": "", "arangodbs": ""})
    base = connection_settings(parsed)
    name = f"{base.database}_test_{uuid.uuid4().hex[:12]}"
    scheme, rest = url.split("://", 1)
    authority = rest.split("/", 1)[0]
    yield f"{scheme}://{authority}/{name}"
    client = ArangoClient(hosts=base.host)
    system = client.db("_system", base.username, base.password)
    if system.has_database(name):
        system.delete_database(name)
    client.close()


@pytest.fixture(params=["networkx", "networkx-file", "arango"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    if request.param == "networkx":
        graph = open_graph("memory://")
        yield Harness(graph, None)
        graph.close()
        return
    if request.param == "networkx-file":
        url = f"file:///{tmp_path / 'graph.jsonl'}"
    else:
        if not ARANGO_URL:
            pytest.skip("ArangoDB cannot run here: set QUANTMESH_TEST_ARANGO_URL to run on one")
        databases = _arango_database(ARANGO_URL)
        url = next(databases)
    opened = [open_graph(url, SETTING)]

    def reopen() -> GraphPort:
        opened[-1].close()
        opened.append(open_graph(url, SETTING))
        return opened[-1]

    yield Harness(opened[0], reopen)
    opened[-1].close()
    if request.param == "arango":
        next(databases, None)  # drops the database


MAJORS = (
    SymbolEdge("EURUSD", "EUR", "USD", {"GBPUSD": 0.8, "USDJPY": -0.4}, 1_000),
    SymbolEdge("GBPUSD", "GBP", "USD", {"EURUSD": 0.8}, 1_000),
    SymbolEdge("USDJPY", "USD", "JPY", {"EURUSD": -0.4}, 1_000),
    SymbolEdge("EURGBP", "EUR", "GBP"),
)


def _load(graph: GraphPort) -> None:
    for edge in MAJORS:
        graph.upsert_symbol(edge)


def test_symbols_come_back_sorted_and_whole(harness: Harness) -> None:
    graph = harness.graph
    assert graph.symbols() == ()
    _load(graph)
    assert graph.symbols() == tuple(sorted(MAJORS, key=lambda e: e.symbol))


def test_upsert_replaces_a_symbol_whole(harness: Harness) -> None:
    graph = harness.graph
    _load(graph)
    newer = SymbolEdge("EURUSD", "EUR", "USD", {"GBPUSD": 0.9}, 2_000)
    graph.upsert_symbol(newer)
    assert [e for e in graph.symbols() if e.symbol == "EURUSD"] == [newer]
    assert len(graph.symbols()) == len(MAJORS)


def test_correlation_is_symmetric_and_the_newer_edge_answers(harness: Harness) -> None:
    graph = harness.graph
    _load(graph)
    assert graph.correlation("EURUSD", "GBPUSD") == pytest.approx(0.8)
    assert graph.correlation("GBPUSD", "EURUSD") == pytest.approx(0.8)
    assert graph.correlation("USDJPY", "EURUSD") == pytest.approx(-0.4)
    assert graph.correlation("EURGBP", "USDJPY") is None  # neither edge knows the pair
    assert graph.correlation("EURUSD", "XAUUSD") is None  # unknown symbol
    assert graph.correlation("EURUSD", "EURUSD") == 1.0
    # GBPUSD's view is updated later than EURUSD's: it answers for the pair.
    graph.upsert_symbol(SymbolEdge("GBPUSD", "GBP", "USD", {"EURUSD": 0.7}, 5_000))
    assert graph.correlation("EURUSD", "GBPUSD") == pytest.approx(0.7)


def test_neighbours_follow_symbols_both_ways(harness: Harness) -> None:
    graph = harness.graph
    _load(graph)
    assert graph.neighbours("EUR") == (Neighbour("GBP", "EURGBP"), Neighbour("USD", "EURUSD"))
    assert graph.neighbours("USD") == (
        Neighbour("EUR", "EURUSD"),
        Neighbour("GBP", "GBPUSD"),
        Neighbour("JPY", "USDJPY"),
    )
    assert graph.neighbours("CHF") == ()


def test_a_symbol_that_changes_currencies_moves_its_edge(harness: Harness) -> None:
    graph = harness.graph
    _load(graph)
    graph.upsert_symbol(SymbolEdge("EURGBP", "EUR", "CHF"))  # a deliberately odd rename
    assert Neighbour("EUR", "EURGBP") not in graph.neighbours("GBP")
    assert graph.neighbours("CHF") == (Neighbour("EUR", "EURGBP"),)


def _approved(decision_id: str, version: str = "3", fills: int = 2) -> DecisionProvenance:
    signal = NodeRef(NodeKind.SIGNAL, f"sig-{decision_id}")
    return decision_provenance(
        decision_id,
        signal_id=signal.key,
        prediction_id=f"pred-{decision_id}",
        model_name="eurusd-h1",
        model_version=version,
        feature_row="EURUSD@1700000000000",
        orders={f"ord-{decision_id}": [f"fill-{decision_id}-{i}" for i in range(fills)]},
        attributes={
            signal: {"symbol": "EURUSD", "action": "BUY", "confidence": 0.71},
            NodeRef(NodeKind.RISK_DECISION, decision_id): {"approved": True, "volume": "0.12"},
        },
    )


def test_provenance_round_trips(harness: Harness) -> None:
    graph = harness.graph
    recorded = _approved("dec-1")
    graph.record_provenance(recorded)
    assert graph.provenance("dec-1") == recorded
    assert graph.provenance("dec-2") is None
    shape = recorded.to_dict()
    assert shape["decision_id"] == "dec-1"
    assert {"kind": "model_version", "key": "eurusd-h1@3"} in [e["target"] for e in shape["edges"]]
    assert DecisionProvenance.from_dict(shape) == recorded


def test_recording_again_replaces_the_decisions_edges(harness: Harness) -> None:
    graph = harness.graph
    graph.record_provenance(_approved("dec-1", fills=3))
    fewer = _approved("dec-1", fills=1)
    graph.record_provenance(fewer)
    assert graph.provenance("dec-1") == fewer
    # Re-evaluated by another model version: the old version no longer claims it.
    graph.record_provenance(_approved("dec-1", version="4"))
    assert graph.decisions_of_model("eurusd-h1", "3") == ()
    assert graph.decisions_of_model("eurusd-h1", "4") == ("dec-1",)


def test_decisions_share_nodes_but_read_back_only_their_own(harness: Harness) -> None:
    graph = harness.graph
    first, second, other_model = _approved("dec-1"), _approved("dec-2"), _approved("dec-3", "4")
    for provenance in (first, second, other_model):
        graph.record_provenance(provenance)
    # dec-1 and dec-2 share the model version and the feature row, yet each reads back alone.
    assert graph.provenance("dec-1") == first
    assert graph.provenance("dec-2") == second
    assert graph.decisions_of_model("eurusd-h1", "3") == ("dec-1", "dec-2")
    assert graph.decisions_of_model("eurusd-h1", "4") == ("dec-3",)
    assert graph.decisions_of_model("eurusd-h1", "5") == ()


def test_a_rejected_decision_has_no_orders(harness: Harness) -> None:
    graph = harness.graph
    rejected = decision_provenance(
        "dec-9",
        signal_id="sig-9",
        prediction_id="pred-9",
        model_name="eurusd-h1",
        model_version="3",
        feature_row="EURUSD@1700000000000",
    )
    graph.record_provenance(rejected)
    back = graph.provenance("dec-9")
    assert back == rejected
    assert not any(node.ref.kind is NodeKind.ORDER for node in back.nodes)


def test_keys_with_any_characters_round_trip(harness: Harness) -> None:
    # ArangoDB refuses '/', '~', spaces and more in keys: the adapter encodes them.
    graph = harness.graph
    decision = NodeRef(NodeKind.RISK_DECISION, "dec/1 ~ é%")
    signal = NodeRef(NodeKind.SIGNAL, "EURUSD/1700000000000#1")
    odd = DecisionProvenance(
        decision.key,
        (ProvenanceNode(decision), ProvenanceNode(signal, {"note": "a/b"})),
        (ProvenanceEdge(decision, signal, "evaluates"),),
    )
    graph.record_provenance(odd)
    assert graph.provenance(decision.key) == odd
    edge = SymbolEdge("EURUSD.m#", "EUR", "USD", {"GBP/USD": 0.5})
    graph.upsert_symbol(edge)
    assert graph.symbols() == (edge,)


def test_data_survives_reopening(harness: Harness) -> None:
    if harness.reopen is None:
        pytest.skip("memory:// keeps nothing by design")
    _load(harness.graph)
    harness.graph.record_provenance(_approved("dec-1"))
    harness.graph.record_provenance(_approved("dec-1", fills=1))
    graph = harness.reopen()
    assert graph.symbols() == tuple(sorted(MAJORS, key=lambda e: e.symbol))
    assert graph.provenance("dec-1") == _approved("dec-1", fills=1)
    assert graph.decisions_of_model("eurusd-h1", "3") == ("dec-1",)


def test_a_wrong_url_names_the_setting() -> None:
    with pytest.raises(StoreConfigError, match="QUANTMESH_GRAPH_URL"):
        open_graph("neo4j://localhost:7687")
    with pytest.raises(StoreConfigError, match="QUANTMESH_GRAPH_URL"):
        open_graph("file://host/graph.jsonl")


# --------------------------------------------------------------------- fills attached later


def _fill(deal: int, order_id: str = "ord-dec-1") -> tuple[str, dict[str, str | int]]:
    """A fill as analytics attaches it: the deal id and what execution reported."""
    return f"D{deal}", {"price": "1.0851", "volume": "0.12", "time_ms": 1_700_000_000_000 + deal}


def _with_fills(
    provenance: DecisionProvenance, order_id: str, fills: list[tuple[str, dict[str, str | int]]]
) -> DecisionProvenance:
    """``provenance`` with ``fills`` under its order ``order_id`` (added when missing)."""
    decision, order = provenance.root, NodeRef(NodeKind.ORDER, order_id)
    nodes = {node.ref: node for node in provenance.nodes}
    nodes.setdefault(order, ProvenanceNode(order))
    edges = [*provenance.edges, ProvenanceEdge(decision, order, Relation.ORDERED)]
    for fill_id, attributes in fills:
        fill = NodeRef(NodeKind.FILL, fill_id)
        nodes[fill] = ProvenanceNode(fill, attributes)
        edges.append(ProvenanceEdge(order, fill, Relation.FILLED_BY))
    return DecisionProvenance(provenance.decision_id, tuple(nodes.values()), tuple(edges))


def _submitted(decision_id: str = "dec-1", version: str = "3") -> DecisionProvenance:
    """What risk records: the decision's order, no fill yet, with attributes of its own."""
    order = NodeRef(NodeKind.ORDER, f"ord-{decision_id}")
    return decision_provenance(
        decision_id,
        signal_id=f"sig-{decision_id}",
        prediction_id=f"pred-{decision_id}",
        model_name="eurusd-h1",
        model_version=version,
        feature_row="EURUSD@1700000000000",
        orders={order.key: []},
        attributes={order: {"idempotency_key": f"sig-{decision_id}", "side": "BUY"}},
    )


def test_fills_attach_to_a_recorded_decisions_order_and_read_back(harness: Harness) -> None:
    graph = harness.graph
    graph.record_provenance(_submitted())
    graph.record_fills("dec-1", "ord-dec-1", [_fill(1), _fill(2)])
    back = graph.provenance("dec-1")
    assert back == _with_fills(_submitted(), "ord-dec-1", [_fill(1), _fill(2)])
    # The order keeps what risk recorded on it; each fill has what execution reported.
    order = back.node(NodeRef(NodeKind.ORDER, "ord-dec-1"))
    assert order.attributes == {"idempotency_key": "sig-dec-1", "side": "BUY"}
    assert back.node(NodeRef(NodeKind.FILL, "D2")).attributes == _fill(2)[1]
    assert graph.decisions_of_model("eurusd-h1", "3") == ("dec-1",)
    graph.record_fills("dec-1", "ord-dec-1", [])  # nothing to attach
    assert graph.provenance("dec-1") == back


def test_attaching_the_same_fills_again_changes_nothing(harness: Harness) -> None:
    graph = harness.graph
    graph.record_provenance(_submitted())
    graph.record_fills("dec-1", "ord-dec-1", [_fill(1), _fill(2)])
    once = graph.provenance("dec-1")
    graph.record_fills("dec-1", "ord-dec-1", [_fill(1), _fill(2)])
    graph.record_fills("dec-1", "ord-dec-1", [_fill(2)])  # a report read again, alone
    assert graph.provenance("dec-1") == once
    assert once == _with_fills(_submitted(), "ord-dec-1", [_fill(1), _fill(2)])


def test_fills_survive_risk_recording_the_decision_again(harness: Harness) -> None:
    graph = harness.graph
    graph.record_provenance(_submitted())
    graph.record_fills("dec-1", "ord-dec-1", [_fill(1)])
    # The broker's stop order inherits the decision: its own order node, in no risk record.
    graph.record_fills("dec-1", "stop-1", [_fill(2, "stop-1")])
    # Risk handles the decision again (after a crash) and records it as it sees it now.
    graph.record_provenance(_submitted(version="4"))
    expected = _with_fills(
        _with_fills(_submitted(version="4"), "ord-dec-1", [_fill(1)]), "stop-1", [_fill(2)]
    )
    assert graph.provenance("dec-1") == expected
    assert graph.decisions_of_model("eurusd-h1", "3") == ()
    # Risk's own stale edges still go: a record without the order drops risk's edge to it,
    # while the fill attached keeps the decision → order edge that leads to it.
    rejected = decision_provenance(
        "dec-1",
        signal_id="sig-dec-1",
        prediction_id="pred-dec-1",
        model_name="eurusd-h1",
        model_version="4",
        feature_row="EURUSD@1700000000000",
    )
    graph.record_provenance(rejected)
    back = graph.provenance("dec-1")
    assert back is not None
    kept = _with_fills(_with_fills(rejected, "ord-dec-1", [_fill(1)]), "stop-1", [_fill(2)])
    assert back.edges == kept.edges


def test_fills_before_the_decision_is_recorded_wait_for_it(harness: Harness) -> None:
    graph = harness.graph
    graph.record_fills("dec-1", "ord-dec-1", [_fill(1)])
    assert graph.provenance("dec-1") is None  # nothing to read until risk records it
    assert graph.decisions_of_model("eurusd-h1", "3") == ()
    graph.record_provenance(_submitted())
    back = graph.provenance("dec-1")
    assert back == _with_fills(_submitted(), "ord-dec-1", [_fill(1)])
    # Risk's record wrote the order's attributes over the bare node the fill made.
    assert back.node(NodeRef(NodeKind.ORDER, "ord-dec-1")).attributes["side"] == "BUY"


def test_fills_survive_reopening(harness: Harness) -> None:
    if harness.reopen is None:
        pytest.skip("memory:// keeps nothing by design")
    graph = harness.graph
    graph.record_provenance(_submitted())
    graph.record_fills("dec-1", "ord-dec-1", [_fill(1)])
    graph.record_fills("dec-1", "stop-1", [_fill(2, "stop-1")])
    graph.record_fills("dec-2", "ord-dec-2", [_fill(3, "ord-dec-2")])  # not recorded yet
    graph = harness.reopen()
    expected = _with_fills(_with_fills(_submitted(), "ord-dec-1", [_fill(1)]), "stop-1", [_fill(2)])
    assert graph.provenance("dec-1") == expected
    assert graph.provenance("dec-2") is None
    # Reopened again (the journal compacted once more), risk re-records: nothing is lost.
    graph = harness.reopen()
    graph.record_provenance(_submitted())
    graph.record_provenance(_submitted("dec-2"))
    assert graph.provenance("dec-1") == expected
    assert graph.provenance("dec-2") == _with_fills(_submitted("dec-2"), "ord-dec-2", [_fill(3)])

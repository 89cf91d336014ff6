"""Risk's side of the graph store: edges at start without clobbering, provenance written in
the background, kept while the store is down, flushed at shutdown."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from quantmesh.common.v1 import common_pb2
from quantmesh.decision.v1 import decision_pb2
from quantmesh.execution.v1 import execution_pb2
from quantmesh.risk.v1 import risk_pb2
from quantmesh.services.risk.config import GRAPH_URL_SETTING, KNOWN_SYMBOLS, RiskSettings
from quantmesh.services.risk.graph import RiskGraph
from quantmesh.services.risk.provenance import OrderAnswer, signal_provenance
from quantmesh.services.risk.service import build
from quantmesh.storage.graph import (
    DecisionProvenance,
    NodeKind,
    NodeRef,
    SymbolEdge,
    open_graph,
)
from quantmesh.storage.graph.memory import NetworkxGraph
from quantmesh.storage.urls import StoreConfigError, StoreUnavailableError

CORRELATED = SymbolEdge("EURUSD", "EUR", "USD", {"GBPUSD": 0.8}, 5_000)


def a_signal(signal_id: str, **changes: object) -> decision_pb2.Signal:
    fields: dict[str, object] = {
        "signal_id": signal_id,
        "symbol": "EURUSD",
        "action": decision_pb2.ACTION_BUY,
        "confidence": 0.4,
        "model_name": "m",
        "model_version": "1",
        "time_msc": 1_500_000_000_000,
    }
    fields.update(changes)
    return decision_pb2.Signal(**fields)  # type: ignore[arg-type]


def a_decision(signal_id: str) -> risk_pb2.RiskDecision:
    return risk_pb2.RiskDecision(signal_id=signal_id, account_id="paper", approved=True)


def an_answer(order_id: str) -> OrderAnswer:
    return OrderAnswer(execution_pb2.Order(order_id=order_id, idempotency_key="k"), "submitted")


class FlakyGraph(NetworkxGraph):
    """An in-memory graph whose provenance writes fail while ``down``, and reads of the
    currency graph while ``unreadable``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = self.unreadable = False
        self.attempts = 0

    def symbols(self) -> tuple[SymbolEdge, ...]:
        if self.unreadable:
            raise StoreUnavailableError("ArangoDB (QUANTMESH_RISK_GRAPH_URL) is unreachable")
        return super().symbols()

    def record_provenance(self, provenance: DecisionProvenance) -> None:
        self.attempts += 1
        if self.down:
            raise StoreUnavailableError("ArangoDB (QUANTMESH_RISK_GRAPH_URL) is unreachable")
        super().record_provenance(provenance)


def a_graph(graph: NetworkxGraph, retry_s: float = 1.0, max_pending: int = 100) -> RiskGraph:
    return RiskGraph(graph, (), graph.symbols(), retry_s=retry_s, max_pending=max_pending)


def test_opening_adds_risk_symbols_and_keeps_a_stored_correlation(tmp_path: Path) -> None:
    url = f"file:///{tmp_path / 'graph.jsonl'}"
    recorder = open_graph(url)
    recorder.upsert_symbol(CORRELATED)
    recorder.close()

    risk = RiskGraph.open(url, GRAPH_URL_SETTING, KNOWN_SYMBOLS)
    assert {e.symbol: e for e in risk.edges}["EURUSD"] == CORRELATED
    assert [e.symbol for e in risk.edges] == sorted(KNOWN_SYMBOLS)
    risk.graph.close()

    stored = open_graph(url)
    assert {e.symbol: e for e in stored.symbols()}["EURUSD"] == CORRELATED
    assert {e.symbol for e in stored.symbols()} == set(KNOWN_SYMBOLS)
    stored.close()


@pytest.mark.parametrize("url", ["neo4j://localhost:7687", "file://host/graph.jsonl", ""])
def test_a_malformed_url_fails_at_build_naming_the_setting(tmp_path: Path, url: str) -> None:
    settings = RiskSettings(folder=tmp_path / "risk", graph_url=url, drive=False)
    with pytest.raises(StoreConfigError, match="QUANTMESH_RISK_GRAPH_URL"):
        build(settings)


def test_the_setting_defaults_to_the_shared_graph_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QUANTMESH_RISK_GRAPH_URL", raising=False)
    monkeypatch.delenv("QUANTMESH_GRAPH_URL", raising=False)
    assert RiskSettings().graph_url == "memory://"
    monkeypatch.setenv("QUANTMESH_GRAPH_URL", "file:///shared.jsonl")
    assert RiskSettings().graph_url == "file:///shared.jsonl"
    monkeypatch.setenv("QUANTMESH_RISK_GRAPH_URL", "file:///risk.jsonl")
    assert RiskSettings().graph_url == "file:///risk.jsonl"


async def test_refreshing_reads_what_another_writer_stored_and_keeps_edges_on_failure() -> None:
    store = FlakyGraph()
    risk = RiskGraph(store, [SymbolEdge("EURUSD", "EUR", "USD")], [])
    assert await risk.refresh_edges()
    assert risk.edges == (SymbolEdge("EURUSD", "EUR", "USD"),)  # risk's own, even unstored
    store.upsert_symbol(CORRELATED)
    assert await risk.refresh_edges()
    assert risk.edges == (CORRELATED,)
    store.unreadable = True
    assert not await risk.refresh_edges()
    assert risk.edges == (CORRELATED,)


async def test_offered_decisions_are_recorded_by_a_flush() -> None:
    store = NetworkxGraph()
    risk = a_graph(store)
    risk.offer("a", a_signal("a"), a_decision("a"), [an_answer("O1")])
    risk.offer("b", a_signal("b"), a_decision("b"))
    assert store.provenance("a") is None  # offering does no I/O
    assert risk.pending == 2
    assert await risk.flush()
    assert risk.pending == 0
    expected = signal_provenance("a", a_signal("a"), a_decision("a"), [an_answer("O1")])
    assert store.provenance("a") == expected
    assert store.decisions_of_model("m", "1") == ("a", "b")


async def test_a_store_down_keeps_decisions_in_order_until_it_is_back() -> None:
    store = FlakyGraph()
    risk = a_graph(store)
    store.down = True
    risk.offer("a", a_signal("a"), a_decision("a"))
    assert not await risk.flush()
    risk.offer("b", a_signal("b"), a_decision("b"))
    assert not await risk.flush()
    assert risk.pending == 2
    store.down = False
    assert await risk.flush()
    assert store.decisions_of_model("m", "1") == ("a", "b")
    assert risk.pending == 0


async def test_a_decision_that_cannot_be_recorded_is_skipped_not_retried() -> None:
    store = NetworkxGraph()
    risk = a_graph(store)
    risk.offer("a", a_signal("a", model_name=""), a_decision("a"))  # names no model
    risk.offer("b", a_signal("b"), a_decision("b"))
    assert await risk.flush()
    assert store.provenance("a") is None
    assert store.provenance("b") is not None
    assert risk.pending == 0


async def test_past_the_bound_the_oldest_pending_decisions_are_dropped() -> None:
    store = FlakyGraph()
    store.down = True
    risk = a_graph(store, max_pending=2)
    for name in "abc":
        risk.offer(name, a_signal(name), a_decision(name))
    assert (risk.pending, risk.dropped) == (2, 1)
    store.down = False
    assert await risk.flush()
    assert store.decisions_of_model("m", "1") == ("b", "c")


async def test_an_order_without_id_keeps_the_orders_recorded_before() -> None:
    store = NetworkxGraph()
    risk = a_graph(store)
    risk.offer("a", a_signal("a"), a_decision("a"), [an_answer("O1")])
    assert await risk.flush()
    known = OrderAnswer(execution_pb2.Order(idempotency_key="a"), "ALREADY_EXISTS: differs")
    risk.offer("a", a_signal("a"), a_decision("a"), [known])
    assert await risk.flush()
    recorded = store.provenance("a")
    assert recorded is not None
    assert NodeRef(NodeKind.ORDER, "O1") in {node.ref for node in recorded.nodes}


async def test_the_job_records_in_the_background_and_flushes_and_closes_when_cancelled() -> None:
    store = FlakyGraph()
    risk = a_graph(store, retry_s=0.01)
    job = asyncio.create_task(risk.run(asyncio.Event()))
    risk.offer("a", a_signal("a"), a_decision("a"))
    async with asyncio.timeout(5):
        while store.provenance("a") is None:  # noqa: ASYNC110 - written by the job
            await asyncio.sleep(0.01)
    store.down = True
    risk.offer("b", a_signal("b"), a_decision("b"))
    async with asyncio.timeout(5):
        while store.attempts < 3:  # noqa: ASYNC110 - retried by the job
            await asyncio.sleep(0.01)
    store.down = False  # back just as the service stops: the last flush records "b"
    job.cancel()
    await asyncio.gather(job, return_exceptions=True)
    assert store.decisions_of_model("m", "1") == ("a", "b")
    with pytest.raises(StoreUnavailableError, match="closed"):
        store.upsert_symbol(CORRELATED)


async def test_decisions_a_dead_store_never_took_are_reported_at_shutdown() -> None:
    store = FlakyGraph()
    store.down = True
    risk = a_graph(store, retry_s=0.01)
    job = asyncio.create_task(risk.run(asyncio.Event()))
    risk.offer("a", a_signal("a"), a_decision("a"))
    await asyncio.sleep(0.05)
    job.cancel()
    await asyncio.gather(job, return_exceptions=True)
    assert risk.pending == 1
    assert store.provenance("a") is None


def test_money_and_lots_attributes_round_trip_through_the_journal(tmp_path: Path) -> None:
    url = f"file:///{tmp_path / 'graph.jsonl'}"
    store = open_graph(url)
    decision = a_decision("a")
    decision.volume.CopyFrom(common_pb2.Lots(nanos=130_000_000))
    provenance = signal_provenance("a", a_signal("a"), decision, [an_answer("O1")])
    store.record_provenance(provenance)
    store.close()
    reopened = open_graph(url)
    assert reopened.provenance("a") == provenance
    reopened.close()

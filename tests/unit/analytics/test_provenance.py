"""Fills into their decisions' provenance: the mapping from execution reports (pure), the
background writer that keeps them while the graph store is down, and the setting."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from quantmesh.common.v1 import common_pb2
from quantmesh.execution.v1 import execution_pb2 as ex
from quantmesh.services.analytics.config import GRAPH_URL_SETTING, AnalyticsSettings
from quantmesh.services.analytics.graph import FillProvenance
from quantmesh.services.analytics.provenance import FillLink, by_order, fill_link, fill_links
from quantmesh.services.analytics.service import build_runtime
from quantmesh.storage.graph import FillRecord, NodeKind, NodeRef, decision_provenance
from quantmesh.storage.graph.memory import NetworkxGraph
from quantmesh.storage.urls import StoreConfigError, StoreUnavailableError


def a_fill_report(**changes: object) -> ex.ExecutionReport:
    """A fill of 1.25 lots of order O3 (decision ``sig-3``) at 1.05120, deal D9."""
    fields: dict[str, object] = {
        "seq": 7,
        "report_id": "R7",
        "order_id": "O3",
        "account_id": "paper",
        "symbol": "EURUSD",
        "side": common_pb2.SIDE_SELL,
        "state": ex.ORDER_STATE_FILLED,
        "fill_volume": common_pb2.Lots(units=1, nanos=250_000_000),
        "fill_price": common_pb2.Price(points=105_120, digits=5),
        "commission": common_pb2.Money(currency="USD", units=-4, nanos=-375_000_000),
        "broker_deal_id": "D9",
        "position_id": "P3",
        "signal_id": "sig-3",
        "time_ms": 1_483_394_400_123,
    }
    fields.update(changes)
    return ex.ExecutionReport(**fields)  # type: ignore[arg-type]


def test_a_fill_report_becomes_a_fill_under_its_order_and_decision() -> None:
    link = fill_link(a_fill_report())
    assert link == FillLink(
        "sig-3",
        "O3",
        "D9",
        {
            "price": "1.0512",
            "volume": "1.25",
            "commission": "4.375 USD",  # a cost, whichever sign the broker gives it
            "time_ms": 1_483_394_400_123,
            "symbol": "EURUSD",
            "side": "SELL",
            "position_id": "P3",
        },
    )
    # A broker that names no deal: the report's id names the fill.
    assert (link := fill_link(a_fill_report(broker_deal_id=""))) is not None
    assert link.fill_id == "R7"


def test_reports_that_are_no_fill_or_no_decisions_link_nothing() -> None:
    accepted = a_fill_report(fill_volume=common_pb2.Lots(), state=ex.ORDER_STATE_ACCEPTED)
    accepted.ClearField("fill_price")
    assert fill_link(accepted) is None
    assert fill_link(a_fill_report(signal_id="")) is None  # no decision made the order
    assert fill_link(a_fill_report(broker_deal_id="", report_id="")) is None
    with pytest.raises(ValueError, match="without a price"):
        fill_link(a_fill_report(fill_price=common_pb2.Price()))


def test_a_stop_the_broker_triggered_joins_the_opening_decision_as_its_own_order() -> None:
    reports = [
        a_fill_report(),
        a_fill_report(seq=8, report_id="R8", broker_deal_id="D10", order_id="O4"),  # the stop
        a_fill_report(seq=9, report_id="R9", broker_deal_id="D11"),
        a_fill_report(seq=10, report_id="R10", broker_deal_id="D12", signal_id="sig-5"),
    ]
    groups = by_order(fill_links(reports))
    assert [(g[0].decision_id, g[0].order_id, [f.fill_id for f in g]) for g in groups] == [
        ("sig-3", "O3", ["D9", "D11"]),
        ("sig-3", "O4", ["D10"]),
        ("sig-5", "O3", ["D12"]),
    ]


class FlakyGraph(NetworkxGraph):
    """An in-memory graph whose fill writes fail while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.writes = 0

    def record_fills(self, decision_id: str, order_id: str, fills: Sequence[FillRecord]) -> None:
        self.writes += 1
        if self.down:
            raise StoreUnavailableError("ArangoDB (QUANTMESH_ANALYTICS_GRAPH_URL) is unreachable")
        super().record_fills(decision_id, order_id, fills)


def recorded_fills(graph: NetworkxGraph, decision_id: str) -> set[tuple[str, str]]:
    """(order, fill) of every fill the decision's provenance reads back with."""
    provenance = graph.provenance(decision_id)
    assert provenance is not None
    return {
        (edge.source.key, edge.target.key)
        for edge in provenance.edges
        if edge.target.kind is NodeKind.FILL
    }


def submitted(graph: NetworkxGraph, decision_id: str, order_id: str) -> None:
    """Risk's record of a decision with one order and no fill."""
    graph.record_provenance(
        decision_provenance(
            decision_id,
            signal_id=decision_id,
            prediction_id=f"p-{decision_id}",
            model_name="m",
            model_version="1",
            feature_row="EURUSD@1",
            orders={order_id: []},
        )
    )


async def test_a_store_down_keeps_fills_in_order_until_it_is_back() -> None:
    graph = FlakyGraph()
    submitted(graph, "sig-3", "O3")
    writer = FillProvenance(graph, retry_s=0.01)
    graph.down = True
    writer.offer(fill_links([a_fill_report(), a_fill_report(broker_deal_id="D10", order_id="O4")]))
    assert not await writer.flush()
    assert writer.pending == 2
    graph.down = False
    assert await writer.flush()
    assert writer.pending == 0
    assert recorded_fills(graph, "sig-3") == {("O3", "D9"), ("O4", "D10")}
    back = graph.provenance("sig-3")
    assert back is not None
    assert back.node(NodeRef(NodeKind.FILL, "D9")).attributes["price"] == "1.0512"


async def test_past_the_bound_the_oldest_fills_are_dropped() -> None:
    graph = FlakyGraph()
    writer = FillProvenance(graph, max_pending=2)
    writer.offer(fill_links([a_fill_report(broker_deal_id=f"D{n}") for n in range(5)]))
    assert (writer.pending, writer.dropped) == (2, 3)
    assert await writer.flush()
    submitted(graph, "sig-3", "O3")
    assert recorded_fills(graph, "sig-3") == {("O3", "D3"), ("O3", "D4")}


async def test_the_job_attaches_in_the_background_and_flushes_and_closes_when_cancelled(
    tmp_path: Path,
) -> None:
    path = tmp_path / "graph.jsonl"
    writer = FillProvenance.open(f"file:///{path}", GRAPH_URL_SETTING, retry_s=0.01)
    job = asyncio.create_task(writer.run(asyncio.Event()))
    writer.offer(fill_links([a_fill_report()]))
    async with asyncio.timeout(5):
        while writer.pending:  # noqa: ASYNC110 - the job runs on this loop
            await asyncio.sleep(0.01)
    writer.offer(fill_links([a_fill_report(broker_deal_id="D10")]))  # pending at shutdown
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    reopened = NetworkxGraph(path)
    submitted(reopened, "sig-3", "O3")
    assert recorded_fills(reopened, "sig-3") == {("O3", "D9"), ("O3", "D10")}
    reopened.close()


def test_the_setting_defaults_to_the_shared_graph_url_else_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(GRAPH_URL_SETTING, raising=False)
    monkeypatch.delenv("QUANTMESH_GRAPH_URL", raising=False)
    assert AnalyticsSettings().graph_url == ""
    monkeypatch.setenv("QUANTMESH_GRAPH_URL", "file:///shared.jsonl")
    assert AnalyticsSettings().graph_url == "file:///shared.jsonl"
    monkeypatch.setenv(GRAPH_URL_SETTING, "file:///analytics.jsonl")
    assert AnalyticsSettings().graph_url == "file:///analytics.jsonl"


@pytest.mark.parametrize("url", ["neo4j://localhost:7687", "file://host/graph.jsonl"])
def test_a_malformed_url_fails_at_build_naming_the_setting(tmp_path: Path, url: str) -> None:
    settings = AnalyticsSettings(folder=tmp_path / "analytics", graph_url=url)
    with pytest.raises(StoreConfigError, match=GRAPH_URL_SETTING):
        build_runtime(settings)
    assert not (tmp_path / "analytics").exists()  # nothing else was opened

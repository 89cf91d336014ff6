"""The driver's order of operations and its failure handling, against a scripted execution.

The real execution is exercised in tests/integration/test_risk_service.py; here a fake
one fails on purpose (UNAVAILABLE, ALREADY_EXISTS, no pacing) to show that nothing is
sent twice, nothing is skipped, and the cursor moves only past acknowledged orders.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from quantmesh.common.v1 import common_pb2
from quantmesh.decision.v1 import decision_pb2
from quantmesh.execution.v1 import execution_pb2
from quantmesh.services.risk.config import KNOWN_SYMBOLS
from quantmesh.services.risk.convert import QuoteBook
from quantmesh.services.risk.driver import END_OF_TIME_MS, RiskDriver
from quantmesh.services.risk.graph import RiskGraph
from quantmesh.services.risk.rules import RULES
from quantmesh.services.risk.store import DurableRiskEngine, RiskStore
from quantmesh.storage.graph import DecisionProvenance, NodeKind, NodeRef
from quantmesh.storage.graph.memory import NetworkxGraph
from quantmesh.storage.urls import StoreUnavailableError

T0 = 1_500_000_000_000
HOUR = 3_600_000


def rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def money(units: int) -> common_pb2.Money:
    return common_pb2.Money(currency="USD", units=units)


@dataclass
class FakeExecution:
    """An execution that records every call and fails as scripted.

    Methods take the stub's call options (``timeout``) and ignore them.
    """

    positions: list[execution_pb2.Position] = field(default_factory=list)
    failures: dict[str, list[grpc.StatusCode]] = field(default_factory=dict)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    orders: dict[str, execution_pb2.Order] = field(default_factory=dict)

    def _fail(self, method: str) -> None:
        script = self.failures.get(method)
        if script:
            raise rpc_error(script.pop(0), f"scripted {method} failure")

    async def AdvanceMarketTime(
        self, request: execution_pb2.AdvanceMarketTimeRequest, **call_options: object
    ) -> execution_pb2.AdvanceMarketTimeResponse:
        self.calls.append(("advance", (request.time_ms, request.wait)))
        self._fail("advance")
        return execution_pb2.AdvanceMarketTimeResponse(
            granted_time_ms=request.time_ms, market_time_ms=request.time_ms
        )

    async def GetAccount(
        self, request: execution_pb2.GetAccountRequest, **call_options: object
    ) -> execution_pb2.GetAccountResponse:
        self.calls.append(("account", request.account_id))
        self._fail("account")
        account = execution_pb2.Account(
            account_id=request.account_id,
            currency="USD",
            balance=money(10_000),
            equity=money(10_000),
            start_of_day_equity=money(10_000),
            open_positions=len(self.positions),
        )
        return execution_pb2.GetAccountResponse(account=account)

    async def ListPositions(
        self, request: execution_pb2.ListPositionsRequest, **call_options: object
    ) -> execution_pb2.ListPositionsResponse:
        self.calls.append(("positions", request.account_id))
        return execution_pb2.ListPositionsResponse(positions=self.positions)

    async def SubmitOrder(
        self, request: execution_pb2.SubmitOrderRequest, **call_options: object
    ) -> execution_pb2.SubmitOrderResponse:
        key = request.order.idempotency_key
        self.calls.append(("submit", key))
        self._fail("submit")
        known = self.orders.get(key)
        if known is not None:
            if known.volume != request.order.volume:
                raise rpc_error(grpc.StatusCode.ALREADY_EXISTS, f"key {key} differs")
            return execution_pb2.SubmitOrderResponse(order=known, duplicate=True)
        order = execution_pb2.Order()
        order.CopyFrom(request.order)
        order.order_id = f"O{len(self.orders) + 1}"
        order.state = execution_pb2.ORDER_STATE_ACCEPTED
        self.orders[key] = order
        return execution_pb2.SubmitOrderResponse(order=order)


def buy(signal_id: str, time_ms: int, **changes: object) -> decision_pb2.Signal:
    fields: dict[str, object] = {
        "signal_id": signal_id,
        "symbol": "EURUSD",
        "action": decision_pb2.ACTION_BUY,
        "confidence": 0.4,
        "reference_price": common_pb2.Price(points=108_000, digits=5),
        "stop_loss": common_pb2.Price(points=107_800, digits=5),
        "take_profit": common_pb2.Price(points=108_400, digits=5),
        "model_name": "m",
        "model_version": "1",
        "time_msc": time_ms,
    }
    fields.update(changes)
    return decision_pb2.Signal(**fields)  # type: ignore[arg-type]


def hold(signal_id: str, time_ms: int) -> decision_pb2.Signal:
    return buy(signal_id, time_ms, action=decision_pb2.ACTION_HOLD)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RiskStore]:
    opened = RiskStore(tmp_path / "risk.sqlite3")
    yield opened
    opened.close()


def a_driver(store: RiskStore, **options: Any) -> RiskDriver:
    return RiskDriver(
        DurableRiskEngine(store),
        store,
        QuoteBook(KNOWN_SYMBOLS),
        KNOWN_SYMBOLS,
        account_id="paper",
        subscribe=["EURUSD"],
        deviation_points=25,
        retry_base_seconds=0.001,
        retry_max_seconds=0.002,
        **options,
    )


async def test_market_time_is_granted_before_the_account_is_read_and_after_the_batch(
    store: RiskStore,
) -> None:
    execution = FakeExecution()
    driver = a_driver(store)
    batch = decision_pb2.SignalBatch(seq=0, signals=[hold("h", T0), buy("b", T0 + HOUR)])
    assert await driver.handle_batch(batch, execution)  # type: ignore[arg-type]
    assert execution.calls == [
        ("advance", (T0 + HOUR, True)),
        ("account", "paper"),
        ("positions", "paper"),
        ("submit", "b"),
        ("advance", (T0 + HOUR, False)),
    ]
    order = execution.orders["b"]
    assert order.side == common_pb2.SIDE_BUY
    assert order.type == execution_pb2.ORDER_TYPE_MARKET
    assert (order.volume.units, order.volume.nanos) == (1, 0)
    assert (order.stop_loss.points, order.take_profit.points) == (107_800, 108_400)
    assert order.deviation_points == 25
    assert (order.signal_id, order.model_name, order.model_version) == ("b", "m", "1")
    assert order.risk_decision.approved
    assert [v.rule for v in order.risk_decision.verdicts] == list(RULES)
    assert store.cursor(driver.cursor_name) == 1
    assert (driver.stats.holds, driver.stats.approved, driver.stats.orders_submitted) == (1, 1, 1)
    assert driver.stats.evaluate_latency.count == 1


async def test_unavailable_execution_is_retried_with_the_same_key(store: RiskStore) -> None:
    execution = FakeExecution(
        failures={"submit": [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE]}
    )
    driver = a_driver(store)
    batch = decision_pb2.SignalBatch(seq=0, signals=[buy("b", T0)])
    assert await driver.handle_batch(batch, execution)  # type: ignore[arg-type]
    assert [c for c in execution.calls if c[0] == "submit"] == [("submit", "b")] * 3
    assert list(execution.orders) == ["b"]
    assert driver.stats.retries == 2


async def test_execution_down_for_good_raises_and_leaves_the_cursor_before_the_batch(
    store: RiskStore,
) -> None:
    execution = FakeExecution(failures={"submit": [grpc.StatusCode.UNAVAILABLE] * 10})
    driver = a_driver(store, max_attempts=3)
    batch = decision_pb2.SignalBatch(seq=0, signals=[buy("b", T0)])
    with pytest.raises(grpc.aio.AioRpcError):
        await driver.handle_batch(batch, execution)  # type: ignore[arg-type]
    assert store.cursor(driver.cursor_name) is None
    assert driver.next_seq == 0


async def test_a_batch_handled_again_sends_nothing_twice(store: RiskStore) -> None:
    execution = FakeExecution()
    driver = a_driver(store)
    batch = decision_pb2.SignalBatch(seq=0, signals=[buy("b1", T0), buy("b2", T0 + HOUR)])
    await driver.handle_batch(batch, execution)  # type: ignore[arg-type]
    # A restart before the cursor was saved: the same batch comes again.
    again = a_driver(store)
    await again.handle_batch(batch, execution)  # type: ignore[arg-type]
    assert sorted(execution.orders) == ["b1", "b2"]
    assert again.stats.orders_submitted == 0
    assert again.stats.orders_duplicate == 2


async def test_already_exists_after_a_different_sizing_counts_as_the_existing_order(
    store: RiskStore,
) -> None:
    execution = FakeExecution()
    first = execution_pb2.Order(idempotency_key="b", volume=common_pb2.Lots(units=0, nanos=5))
    execution.orders["b"] = first
    driver = a_driver(store)
    await driver.handle_batch(  # type: ignore[arg-type]
        decision_pb2.SignalBatch(seq=7, signals=[buy("b", T0)]), execution
    )
    assert execution.orders["b"] is first
    assert driver.stats.orders_duplicate == 1
    assert store.cursor(driver.cursor_name) == 7


async def test_rejected_and_malformed_signals_never_become_orders(store: RiskStore) -> None:
    execution = FakeExecution()
    driver = a_driver(store)
    signals = [
        buy("no-stop", T0),
        buy("unsure", T0 + 1, confidence=0.05),
        buy("bad-side", T0 + 2, stop_loss=common_pb2.Price(points=108_100, digits=5)),
        buy("bad-symbol", T0 + 3, symbol="XAUUSD"),
    ]
    signals[0].ClearField("stop_loss")
    await driver.handle_batch(  # type: ignore[arg-type]
        decision_pb2.SignalBatch(seq=0, signals=signals), execution
    )
    assert execution.orders == {}
    assert driver.stats.rejected == 2
    assert driver.stats.rejected_by_rule["signal_shape"] == 1
    assert driver.stats.rejected_by_rule["confidence"] == 1
    assert driver.stats.invalid == 2
    assert store.cursor(driver.cursor_name) == 3


async def test_close_closes_each_position_opened_before_it(store: RiskStore) -> None:
    def position(position_id: str, side: int, nanos: int, opened: int) -> execution_pb2.Position:
        return execution_pb2.Position(
            position_id=position_id,
            symbol="EURUSD",
            side=side,  # type: ignore[arg-type]
            volume=common_pb2.Lots(nanos=nanos),
            current_price=common_pb2.Price(points=108_000, digits=5),
            open_time_ms=opened,
        )

    execution = FakeExecution(
        positions=[
            position("P1", common_pb2.SIDE_BUY, 100_000_000, T0 - HOUR),
            position("P2", common_pb2.SIDE_SELL, 50_000_000, T0 - 1),
            position("P3", common_pb2.SIDE_BUY, 70_000_000, T0 + HOUR),  # a later signal's
        ]
    )
    driver = a_driver(store)
    close = buy("c", T0, action=decision_pb2.ACTION_CLOSE)
    for level in ("stop_loss", "take_profit"):
        close.ClearField(level)  # type: ignore[arg-type]
    await driver.handle_batch(  # type: ignore[arg-type]
        decision_pb2.SignalBatch(seq=0, signals=[close]), execution
    )
    closing = {key: (o.position_id, o.side, o.volume.nanos) for key, o in execution.orders.items()}
    assert closing == {
        "c:P1": ("P1", common_pb2.SIDE_SELL, 100_000_000),
        "c:P2": ("P2", common_pb2.SIDE_BUY, 50_000_000),
    }
    decision = execution.orders["c:P1"].risk_decision
    assert decision.approved
    assert not execution.orders["c:P1"].HasField("stop_loss")


async def test_an_execution_without_pacing_still_trades(store: RiskStore) -> None:
    execution = FakeExecution(failures={"advance": [grpc.StatusCode.UNIMPLEMENTED]})
    driver = a_driver(store)
    await driver.handle_batch(  # type: ignore[arg-type]
        decision_pb2.SignalBatch(seq=0, signals=[buy("b", T0), buy("b2", T0 + 1)]), execution
    )
    assert sorted(execution.orders) == ["b", "b2"]
    assert [c for c in execution.calls if c[0] == "advance"] == [("advance", (T0, True))]


async def test_the_end_of_the_stream_opens_execution_market_for_good(store: RiskStore) -> None:
    execution = FakeExecution()
    await a_driver(store).finish(execution)  # type: ignore[arg-type]
    assert execution.calls == [("advance", (END_OF_TIME_MS, False))]


class FailingGraph(NetworkxGraph):
    """A graph store that is down for provenance writes."""

    def record_provenance(self, provenance: DecisionProvenance) -> None:
        raise StoreUnavailableError("graph store unreachable")


async def test_every_evaluated_decision_is_offered_to_the_graph_after_its_orders(
    store: RiskStore,
) -> None:
    graph = RiskGraph(NetworkxGraph(), (), ())
    pending_at_submit: list[int] = []

    class Watching(FakeExecution):
        async def SubmitOrder(
            self, request: execution_pb2.SubmitOrderRequest, **call_options: object
        ) -> execution_pb2.SubmitOrderResponse:
            pending_at_submit.append(graph.pending)
            return await super().SubmitOrder(request, **call_options)

    execution = Watching()
    driver = a_driver(store, graph=graph)
    batch = decision_pb2.SignalBatch(
        seq=0, signals=[buy("b", T0), buy("unsure", T0 + 1, confidence=0.05), hold("h", T0 + 2)]
    )
    assert await driver.handle_batch(batch, execution)  # type: ignore[arg-type]
    assert pending_at_submit == [0]  # the order went first; the decision is offered after
    assert graph.pending == 2  # the HOLD is no decision
    assert await graph.flush()

    approved = graph.graph.provenance("b")
    assert approved is not None
    orders = [n for n in approved.nodes if n.ref.kind == NodeKind.ORDER]
    assert [(n.ref.key, n.attributes["idempotency_key"]) for n in orders] == [("O1", "b")]
    assert approved.node(approved.root).attributes["verdict"] == "approved"
    assert NodeRef(NodeKind.MODEL_VERSION, "m@1") in {n.ref for n in approved.nodes}
    rejected = graph.graph.provenance("unsure")
    assert rejected is not None
    assert not [n for n in rejected.nodes if n.ref.kind == NodeKind.ORDER]
    assert rejected.node(rejected.root).attributes["failed_rules"] == "confidence"
    assert graph.graph.decisions_of_model("m", "1") == ("b", "unsure")


async def test_a_graph_store_that_is_down_never_stops_trading(store: RiskStore) -> None:
    graph = RiskGraph(FailingGraph(), (), ())
    execution = FakeExecution()
    driver = a_driver(store, graph=graph)
    batch = decision_pb2.SignalBatch(seq=0, signals=[buy("b1", T0), buy("b2", T0 + HOUR)])
    assert await driver.handle_batch(batch, execution)  # type: ignore[arg-type]
    assert not await graph.flush()
    assert sorted(execution.orders) == ["b1", "b2"]
    assert store.cursor(driver.cursor_name) == 1
    assert graph.pending == 2  # kept for the next try

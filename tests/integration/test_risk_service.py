"""The risk service over real gRPC, against a real execution service fed by market data.

Risk and execution run in-process on free ports. The driver is exercised batch by batch
with signals placed at real moments of the shipped replay, so its orders meet real ticks.
Risk's graph store is a ``file://`` journal, read back after trading for the decisions'
provenance.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from quantmesh.common.v1 import common_pb2
from quantmesh.decision.v1 import decision_pb2, decision_pb2_grpc
from quantmesh.execution.v1 import execution_pb2 as ex
from quantmesh.execution.v1 import execution_pb2_grpc
from quantmesh.risk.v1 import risk_pb2, risk_pb2_grpc
from quantmesh.runtime.server import ServiceRuntime
from quantmesh.services.execution.clock import ClockMode
from quantmesh.services.execution.config import ExecutionSettings
from quantmesh.services.execution.service import build_runtime as execution_runtime
from quantmesh.services.marketdata.sources import ReplaySource, TickColumns
from quantmesh.services.risk.config import RiskSettings
from quantmesh.services.risk.driver import END_OF_TIME_MS
from quantmesh.services.risk.rules import RULES
from quantmesh.services.risk.service import RiskService, build
from quantmesh.storage.graph import NodeKind, NodeRef, SymbolEdge, open_graph

ACCOUNT = "paper"
MODEL = ("eurusd-h1-direction", "1")


@pytest.fixture
async def execution_service(
    marketdata: ServiceRuntime, tmp_path: Path
) -> AsyncIterator[ServiceRuntime]:
    settings = ExecutionSettings(
        port=0,
        folder=tmp_path / "execution",
        marketdata_address=f"127.0.0.1:{marketdata.port}",
        clock=ClockMode.PIPELINE,  # ticks act only as far as risk grants
    )
    runtime = execution_runtime(settings)
    await runtime.start()
    yield runtime
    await runtime.stop(grace=0.2)


@pytest.fixture
async def execution(
    execution_service: ServiceRuntime,
) -> AsyncIterator[execution_pb2_grpc.ExecutionServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{execution_service.port}") as channel:
        yield execution_pb2_grpc.ExecutionServiceStub(channel)


def graph_url(tmp_path: Path) -> str:
    return f"file:///{tmp_path / 'graph.jsonl'}"


def risk_settings(tmp_path: Path, execution_service: ServiceRuntime) -> RiskSettings:
    return RiskSettings(
        port=0,
        folder=tmp_path / "risk",
        graph_url=graph_url(tmp_path),
        execution_address=f"127.0.0.1:{execution_service.port}",
        decision_address="127.0.0.1:1",  # unused: the driver is driven batch by batch
        account_id=ACCOUNT,
        deviation_points=500,  # orders fill on the next tick, which may have moved
        drive=False,
    )


@pytest.fixture
async def risk_service(
    tmp_path: Path, execution_service: ServiceRuntime
) -> AsyncIterator[RiskService]:
    service = build(risk_settings(tmp_path, execution_service))
    await service.runtime.start()
    yield service
    await service.runtime.stop(grace=0.2)


@pytest.fixture
async def risk(risk_service: RiskService) -> AsyncIterator[risk_pb2_grpc.RiskServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{risk_service.runtime.port}") as channel:
        yield risk_pb2_grpc.RiskServiceStub(channel)


@pytest.fixture(scope="module")
def ticks() -> TickColumns:
    """The first EURUSD ticks of the replay (2 January 2017)."""
    return next(ReplaySource.eurusd().read(["EURUSD"], 0, 2_000))


def price(points: int) -> common_pb2.Price:
    return common_pb2.Price(points=points, digits=5)


def signal(signal_id: str = "sig-buy", **changes: object) -> decision_pb2.Signal:
    """A confident EURUSD buy at 1.08000: stop 20 pips below, target 40 pips above."""
    fields: dict[str, object] = {
        "signal_id": signal_id,
        "symbol": "EURUSD",
        "action": decision_pb2.ACTION_BUY,
        "confidence": 0.4,
        "reference_price": price(108_000),
        "stop_loss": price(107_800),
        "take_profit": price(108_400),
        "model_name": "eurusd-h1-direction",
        "model_version": "1",
        "feature_names": ["volatility_20", "atr_14_rel"],
        "feature_values": [0.0008, 0.0012],
        "output_names": ["probability_up"],
        "output_values": [0.7],
        "time_msc": 1_483_352_850_309,
    }
    fields.update(changes)
    return decision_pb2.Signal(**fields)  # type: ignore[arg-type]


def evaluate(
    sig: decision_pb2.Signal | None = None, account_id: str = ACCOUNT
) -> risk_pb2.EvaluateSignalRequest:
    return risk_pb2.EvaluateSignalRequest(account_id=account_id, signal=sig or signal())


def lots(units: int, nanos: int = 0) -> common_pb2.Lots:
    return common_pb2.Lots(units=units, nanos=nanos)


# --- EvaluateSignal ----------------------------------------------------------------------


async def test_evaluate_answers_every_verdict_and_places_no_order(
    risk_service: RiskService,
    risk: risk_pb2_grpc.RiskServiceAsyncStub,
    execution: execution_pb2_grpc.ExecutionServiceAsyncStub,
) -> None:
    reply = await risk.EvaluateSignal(evaluate())
    decision = reply.decision
    assert decision.approved, decision.reason
    assert [v.rule for v in decision.verdicts] == list(RULES)
    # 2 % of the paper account's 10,000 USD over a 200-point stop at 1 USD/point/lot.
    assert (decision.volume.units, decision.volume.nanos) == (1, 0)
    assert (decision.risk_amount.currency, decision.risk_amount.units) == ("USD", 200)
    assert (decision.signal_id, decision.account_id) == ("sig-buy", ACCOUNT)
    assert (await execution.ListOrders(ex.ListOrdersRequest(account_id=ACCOUNT))).orders == []
    # The dry run's provenance: its own decision id, the signal's model, no order.
    assert await risk_service.graph.flush()
    graph = risk_service.graph.graph
    assert graph.provenance("sig-buy") is None  # the driver's id stays free
    dry_run = graph.provenance("dry-run:paper:sig-buy")
    assert dry_run is not None
    assert dry_run.node(dry_run.root).attributes["dry_run"] is True
    assert {n.ref.kind for n in dry_run.nodes} == {
        NodeKind.RISK_DECISION,
        NodeKind.SIGNAL,
        NodeKind.PREDICTION,
        NodeKind.MODEL_VERSION,
        NodeKind.FEATURE_ROW,
    }
    assert graph.decisions_of_model(*MODEL) == ("dry-run:paper:sig-buy",)


async def test_a_signal_without_a_stop_is_a_rejection_not_an_error(
    risk: risk_pb2_grpc.RiskServiceAsyncStub,
) -> None:
    sig = signal()
    sig.ClearField("stop_loss")
    decision = (await risk.EvaluateSignal(evaluate(sig))).decision
    assert not decision.approved
    assert decision.volume.units == decision.volume.nanos == 0
    assert "signal_shape" in decision.reason


@pytest.mark.parametrize(
    ("request_", "code", "message_part"),
    [
        (
            evaluate(signal(action=decision_pb2.ACTION_UNSPECIFIED)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "action 0",
        ),
        (
            evaluate(signal(stop_loss=price(108_100))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "stop loss 108100 must be below",
        ),
        (
            evaluate(signal(confidence=1.5)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "confidence must be in [0, 1]",
        ),
        (
            evaluate(signal(signal_id="")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "signal_id is required",
        ),
        (
            risk_pb2.EvaluateSignalRequest(account_id=ACCOUNT),
            grpc.StatusCode.INVALID_ARGUMENT,
            "signal is required",
        ),
        (evaluate(account_id=""), grpc.StatusCode.INVALID_ARGUMENT, "account_id is required"),
        (evaluate(account_id="nobody"), grpc.StatusCode.NOT_FOUND, "unknown account 'nobody'"),
        (evaluate(signal(symbol="XAUUSD")), grpc.StatusCode.NOT_FOUND, "unknown symbol"),
    ],
    ids=[
        "no-action",
        "stop-wrong-side",
        "confidence-1.5",
        "no-signal-id",
        "no-signal",
        "no-account",
        "unknown-account",
        "unknown-symbol",
    ],
)
async def test_bad_evaluate_requests_get_a_status_and_a_sentence(
    risk: risk_pb2_grpc.RiskServiceAsyncStub,
    request_: risk_pb2.EvaluateSignalRequest,
    code: grpc.StatusCode,
    message_part: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await risk.EvaluateSignal(request_)
    assert raised.value.code() == code
    assert message_part in (raised.value.details() or "")
    # The server stays up and answers the next request.
    assert (await risk.EvaluateSignal(evaluate())).decision.approved


# --- limits -----------------------------------------------------------------------------------


async def test_set_limits_replaces_them_and_evaluations_follow(
    risk: risk_pb2_grpc.RiskServiceAsyncStub,
) -> None:
    before = await risk.GetLimits(risk_pb2.GetLimitsRequest(account_id=ACCOUNT))
    assert before.defaults
    assert before.limits.risk_per_trade_bps == 200
    limits = risk_pb2.RiskLimits(
        risk_per_trade_bps=50,
        max_daily_loss_bps=300,
        max_open_positions=2,
        min_volume=lots(0, 10_000_000),
        max_volume=lots(2),
        min_reward_risk=1.5,
    )
    reply = await risk.SetLimits(risk_pb2.SetLimitsRequest(account_id=ACCOUNT, limits=limits))
    assert reply.limits == limits
    after = await risk.GetLimits(risk_pb2.GetLimitsRequest(account_id=ACCOUNT))
    assert (after.limits, after.defaults) == (limits, False)
    # 0.5 % of 10,000 USD = 50 USD over 200 USD a lot.
    decision = (await risk.EvaluateSignal(evaluate())).decision
    assert (decision.volume.units, decision.volume.nanos) == (0, 250_000_000)


@pytest.mark.parametrize(
    ("limits", "message_part"),
    [
        (risk_pb2.RiskLimits(), "risk_per_trade_bps must be 1..10000, got 0"),
        (
            risk_pb2.RiskLimits(
                risk_per_trade_bps=100,
                max_daily_loss_bps=20_000,
                max_open_positions=1,
                min_volume=lots(0, 10_000_000),
                max_volume=lots(1),
            ),
            "max_daily_loss_bps must be 1..10000, got 20000",
        ),
        (
            risk_pb2.RiskLimits(
                risk_per_trade_bps=100,
                max_daily_loss_bps=500,
                max_open_positions=1,
                min_volume=lots(2),
                max_volume=lots(1),
            ),
            "max_volume 1 must be at least min_volume 2",
        ),
        (None, "limits is required"),
    ],
    ids=["all-zero", "daily-loss-range", "volumes-crossed", "no-limits"],
)
async def test_invalid_limits_are_invalid_argument_and_change_nothing(
    risk: risk_pb2_grpc.RiskServiceAsyncStub,
    limits: risk_pb2.RiskLimits | None,
    message_part: str,
) -> None:
    request = risk_pb2.SetLimitsRequest(account_id=ACCOUNT, limits=limits)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await risk.SetLimits(request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message_part in (raised.value.details() or "")
    assert (await risk.GetLimits(risk_pb2.GetLimitsRequest(account_id=ACCOUNT))).defaults


async def test_limits_of_an_unknown_account_are_not_found(
    risk: risk_pb2_grpc.RiskServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await risk.GetLimits(risk_pb2.GetLimitsRequest(account_id="nobody"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    valid = (await risk.GetLimits(risk_pb2.GetLimitsRequest(account_id=ACCOUNT))).limits
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await risk.SetLimits(risk_pb2.SetLimitsRequest(account_id="nobody", limits=valid))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


# --- kill switch ---------------------------------------------------------------------------


async def test_engaging_without_a_reason_is_invalid_argument(
    risk: risk_pb2_grpc.RiskServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await risk.SetKillSwitch(risk_pb2.SetKillSwitchRequest(account_id=ACCOUNT, engaged=True))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "reason is required" in (raised.value.details() or "")
    switch = (
        await risk.GetKillSwitch(risk_pb2.GetKillSwitchRequest(account_id=ACCOUNT))
    ).kill_switch
    assert not switch.engaged


async def test_an_engaged_switch_rejects_openings_and_survives_a_restart(
    tmp_path: Path, execution_service: ServiceRuntime, risk_service: RiskService
) -> None:
    address = f"127.0.0.1:{risk_service.runtime.port}"
    async with grpc.aio.insecure_channel(address) as channel:
        risk = risk_pb2_grpc.RiskServiceStub(channel)
        engage = risk_pb2.SetKillSwitchRequest(
            account_id=ACCOUNT, engaged=True, reason="broker maintenance"
        )
        mesh_caller = (("x-forwarded-client-cert", "Hash=ab;URI=spiffe://quantmesh/ops/alice"),)
        switch = (await risk.SetKillSwitch(engage, metadata=mesh_caller)).kill_switch
        assert (switch.engaged, switch.reason) == (True, "broker maintenance")
        assert switch.changed_by == "spiffe://quantmesh/ops/alice"
        assert switch.changed_time_ms > 0
        decision = (await risk.EvaluateSignal(evaluate())).decision
        assert not decision.approved
        assert "kill_switch" in decision.reason
    await risk_service.runtime.stop(grace=0.2)

    restarted = build(risk_settings(tmp_path, execution_service))
    await restarted.runtime.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{restarted.runtime.port}") as channel:
            risk = risk_pb2_grpc.RiskServiceStub(channel)
            request = risk_pb2.GetKillSwitchRequest(account_id=ACCOUNT)
            kept = (await risk.GetKillSwitch(request)).kill_switch
            assert (kept.engaged, kept.reason) == (True, "broker maintenance")
            assert not (await risk.EvaluateSignal(evaluate())).decision.approved
            release = risk_pb2.SetKillSwitchRequest(
                account_id=ACCOUNT, engaged=False, reason="done"
            )
            released = (await risk.SetKillSwitch(release)).kill_switch
            assert (released.engaged, released.changed_by) == (False, "operator")
            assert (await risk.EvaluateSignal(evaluate())).decision.approved
    finally:
        await restarted.runtime.stop(grace=0.2)


async def test_the_global_switch_stops_every_account_and_closing_stays_allowed(
    risk: risk_pb2_grpc.RiskServiceAsyncStub,
) -> None:
    await risk.SetKillSwitch(
        risk_pb2.SetKillSwitchRequest(account_id="", engaged=True, reason="market halt")
    )
    switch = (
        await risk.GetKillSwitch(risk_pb2.GetKillSwitchRequest(account_id=ACCOUNT))
    ).kill_switch
    assert switch.engaged
    assert switch.reason == "global kill switch: market halt"
    assert not (await risk.EvaluateSignal(evaluate())).decision.approved
    close = signal("sig-close", action=decision_pb2.ACTION_CLOSE)
    for level in ("stop_loss", "take_profit"):
        close.ClearField(level)  # type: ignore[arg-type]
    assert (await risk.EvaluateSignal(evaluate(close))).decision.approved


# --- the driver --------------------------------------------------------------------------------


def at(ticks: TickColumns, i: int, **changes: object) -> decision_pb2.Signal:
    """A signal at the replay's ``i``-th tick, priced at it."""
    ask, bid = int(ticks.ask[i]), int(ticks.bid[i])
    buying = changes.get("action", decision_pb2.ACTION_BUY) == decision_pb2.ACTION_BUY
    ref = ask if buying else bid
    fields: dict[str, object] = {
        "time_msc": int(ticks.time_msc[i]),
        "reference_price": price(ref),
        # 150 pips of stop, 300 of target: nothing in these hours reaches either.
        "stop_loss": price(ref - 1_500 if buying else ref + 1_500),
        "take_profit": price(ref + 3_000 if buying else ref - 3_000),
    }
    fields.update(changes)
    return signal(f"sig-{i}", **fields)


def a_morning(ticks: TickColumns) -> list[decision_pb2.Signal]:
    """Four signals of 2 January 2017: a buy, a sell with a thin target, a hold, a close."""
    approved = at(ticks, 300)
    thin_target = at(
        ticks, 400, action=decision_pb2.ACTION_SELL, take_profit=price(int(ticks.bid[400]) - 300)
    )
    quiet = at(ticks, 500, action=decision_pb2.ACTION_HOLD)
    close = at(ticks, 700, action=decision_pb2.ACTION_CLOSE)
    for level in ("stop_loss", "take_profit"):
        close.ClearField(level)  # type: ignore[arg-type]
    return [approved, thin_target, quiet, close]


class RecordingExecution:
    """The real execution stub, keeping every SubmitOrder request the driver sends."""

    def __init__(self, stub: execution_pb2_grpc.ExecutionServiceAsyncStub) -> None:
        self._stub = stub
        self.submitted: list[ex.SubmitOrderRequest] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stub, name)

    async def SubmitOrder(
        self, request: ex.SubmitOrderRequest, **call_options: Any
    ) -> ex.SubmitOrderResponse:
        self.submitted.append(request)
        return await self._stub.SubmitOrder(request, **call_options)


async def test_the_driver_turns_approved_signals_into_orders_exactly_once(
    risk_service: RiskService,
    execution: execution_pb2_grpc.ExecutionServiceAsyncStub,
    ticks: TickColumns,
) -> None:
    batch = decision_pb2.SignalBatch(seq=0, signals=a_morning(ticks))

    driver = risk_service.driver
    recording = RecordingExecution(execution)
    assert await driver.handle_batch(batch, recording)  # type: ignore[arg-type]

    orders = (await execution.ListOrders(ex.ListOrdersRequest(account_id=ACCOUNT))).orders
    by_key = {order.idempotency_key: order for order in orders}
    opened = by_key.pop("sig-300")
    assert opened.side == common_pb2.SIDE_BUY
    # 200 USD of risk over a 1,500-point stop at 1 USD/point/lot: 0.13 lots.
    assert (opened.volume.units, opened.volume.nanos) == (0, 130_000_000)
    assert opened.state == ex.ORDER_STATE_FILLED  # the close's grant let it fill first
    assert (opened.model_name, opened.model_version) == ("eurusd-h1-direction", "1")
    [(close_key, closing)] = by_key.items()
    assert close_key.startswith("sig-700:")
    assert closing.position_id == close_key.removeprefix("sig-700:")
    assert closing.side == common_pb2.SIDE_SELL
    assert closing.volume == opened.volume
    assert "sig-400" not in {o.signal_id for o in orders}  # rejected: 1:5 reward:risk

    sent = {request.order.idempotency_key: request.order for request in recording.submitted}
    for order in sent.values():
        decision = order.risk_decision
        assert decision.approved
        assert decision.signal_id == order.signal_id
        assert [v.rule for v in decision.verdicts] == list(RULES)
        assert all(v.passed and v.reason for v in decision.verdicts)
    assert sent["sig-300"].deviation_points == 500
    assert driver.stats.rejected_by_rule["min_reward_risk"] == 1
    assert (driver.stats.holds, driver.stats.approved, driver.stats.orders_submitted) == (1, 2, 2)
    assert driver.next_seq == 4
    assert driver.stats.market_time_ms >= int(ticks.time_msc[700])

    # Each evaluated decision's provenance, written in the background.
    assert await risk_service.graph.flush()
    graph = risk_service.graph.graph
    assert graph.decisions_of_model(*MODEL) == ("sig-300", "sig-400", "sig-700")
    bought = graph.provenance("sig-300")
    assert bought is not None
    model = NodeRef(NodeKind.MODEL_VERSION, "eurusd-h1-direction@1")
    assert bought.node(model).attributes == {"name": MODEL[0], "version": MODEL[1]}
    [order_node] = [n for n in bought.nodes if n.ref.kind == NodeKind.ORDER]
    assert order_node.ref.key == opened.order_id
    assert (order_node.attributes["idempotency_key"], order_node.attributes["outcome"]) == (
        "sig-300",
        "submitted",
    )
    # Execution's SubmitOrder answer names no deal: the fill comes later, by its reports.
    assert not [n for n in bought.nodes if n.ref.kind == NodeKind.FILL]
    verdict = bought.node(bought.root).attributes
    assert (verdict["verdict"], verdict["account_id"]) == ("approved", ACCOUNT)
    closed = graph.provenance("sig-700")
    assert closed is not None
    assert [n.ref.key for n in closed.nodes if n.ref.kind == NodeKind.ORDER] == [closing.order_id]
    thin = graph.provenance("sig-400")
    assert thin is not None
    assert not [n for n in thin.nodes if n.ref.kind in (NodeKind.ORDER, NodeKind.FILL)]
    assert thin.node(thin.root).attributes["verdict"] == "rejected"
    assert thin.node(thin.root).attributes["failed_rules"] == "min_reward_risk"

    # A crash before the cursor was saved: the same batch comes again. Nothing new.
    assert await driver.handle_batch(batch, recording)  # type: ignore[arg-type]
    again = (await execution.ListOrders(ex.ListOrdersRequest(account_id=ACCOUNT))).orders
    assert sorted(o.order_id for o in again) == sorted(o.order_id for o in orders)
    assert driver.stats.orders_submitted == 2
    # Recorded again under the same ids, with the same orders (execution's duplicates),
    # whose nodes now say what execution answered the second time.
    assert await risk_service.graph.flush()
    assert graph.decisions_of_model(*MODEL) == ("sig-300", "sig-400", "sig-700")
    rebought = graph.provenance("sig-300")
    assert rebought is not None
    assert rebought.edges == bought.edges
    again_order = rebought.node(order_node.ref).attributes
    assert (again_order["outcome"], again_order["state"]) == (
        "duplicate: already submitted",
        "FILLED",
    )

    # The close fills on the first tick after its signal, once execution may play it.
    later = ex.AdvanceMarketTimeRequest(time_ms=int(ticks.time_msc[800]), wait=True)
    await execution.AdvanceMarketTime(later)
    request = ex.ListPositionsRequest(account_id=ACCOUNT)
    assert list((await execution.ListPositions(request)).positions) == []


class ScriptedDecision(decision_pb2_grpc.DecisionServiceServicer):
    """A decision service streaming a fixed list of signals, two per batch, then the end."""

    def __init__(self, signals: list[decision_pb2.Signal]) -> None:
        self.signals = signals
        self.subscriptions: list[decision_pb2.Subscription] = []

    async def Subscribe(
        self, request_iterator: AsyncIterator[decision_pb2.SubscribeRequest], context: Any
    ) -> AsyncIterator[decision_pb2.SubscribeResponse]:
        first = await anext(aiter(request_iterator))
        self.subscriptions.append(first.subscribe)
        start = first.subscribe.from_seq
        for seq in range(start, len(self.signals), 2):
            batch = decision_pb2.SignalBatch(seq=seq, signals=self.signals[seq : seq + 2])
            yield decision_pb2.SubscribeResponse(batch=batch)
        end = decision_pb2.SignalBatch(seq=max(start, len(self.signals)))
        yield decision_pb2.SubscribeResponse(batch=end)


async def wait_until(condition: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(20):
        while not await condition():  # noqa: ASYNC110 - the state is read over gRPC
            await asyncio.sleep(0.05)


async def test_the_running_driver_trades_the_stream_and_resumes_after_its_cursor(
    tmp_path: Path,
    execution_service: ServiceRuntime,
    execution: execution_pb2_grpc.ExecutionServiceAsyncStub,
    ticks: TickColumns,
) -> None:
    decision = ScriptedDecision(a_morning(ticks))
    server = grpc.aio.server()
    decision_pb2_grpc.add_DecisionServiceServicer_to_server(decision, server)
    decision_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    settings = risk_settings(tmp_path, execution_service).model_copy(
        update={"drive": True, "decision_address": f"127.0.0.1:{decision_port}"}
    )

    async def replay_finished() -> bool:
        # The driver grants the end of time once the signal stream has ended.
        probe = await execution.AdvanceMarketTime(ex.AdvanceMarketTimeRequest(time_ms=0))
        return probe.granted_time_ms == END_OF_TIME_MS

    async def resubscribed() -> bool:
        return len(decision.subscriptions) == 2

    # The recorder stored a correlation on EURUSD before risk started.
    correlated = SymbolEdge("EURUSD", "EUR", "USD", {"GBPUSD": 0.8}, 1_000)
    recorder = open_graph(graph_url(tmp_path))
    recorder.upsert_symbol(correlated)
    recorder.close()
    try:
        first = build(settings)
        assert {e.symbol: e for e in first.graph.edges}["EURUSD"] == correlated
        await first.runtime.start()
        await wait_until(replay_finished)
        await first.runtime.stop(grace=0.2)
        assert first.driver.next_seq == 4
        assert first.driver.stats.orders_submitted == 2
        orders = (await execution.ListOrders(ex.ListOrdersRequest(account_id=ACCOUNT))).orders
        assert sorted(o.signal_id for o in orders) == ["sig-300", "sig-700"]

        second = build(settings)
        assert second.driver.next_seq == 4  # the cursor came back from the store
        await second.runtime.start()
        await wait_until(resubscribed)
        await second.runtime.stop(grace=0.2)
        assert [sub.from_seq for sub in decision.subscriptions] == [0, 4]
        assert all(sub.include_hold for sub in decision.subscriptions)
        assert second.driver.stats.signals_seen == 0
        again = (await execution.ListOrders(ex.ListOrdersRequest(account_id=ACCOUNT))).orders
        assert len(again) == len(orders)
    finally:
        await server.stop(0)

    # Stopping flushed the provenance to the journal and closed it; the edges kept the
    # recorder's correlation.
    graph = open_graph(graph_url(tmp_path))
    try:
        assert graph.decisions_of_model(*MODEL) == ("sig-300", "sig-400", "sig-700")
        recorded = graph.provenance("sig-300")
        assert recorded is not None
        order_ids = {o.signal_id: o.order_id for o in orders}
        assert {n.ref.key for n in recorded.nodes if n.ref.kind == NodeKind.ORDER} == {
            order_ids["sig-300"]
        }
        assert {e.symbol: e for e in graph.symbols()}["EURUSD"] == correlated
    finally:
        graph.close()

"""The execution service over real gRPC, fed by a real market data service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from quantmesh.common.v1 import common_pb2
from quantmesh.execution.v1 import execution_pb2 as ex
from quantmesh.execution.v1 import execution_pb2_grpc
from quantmesh.risk.v1 import risk_pb2
from quantmesh.runtime.server import ServiceRuntime
from quantmesh.services.execution.config import ExecutionSettings
from quantmesh.services.execution.service import build_runtime as execution_runtime
from quantmesh.services.marketdata.sources import ReplaySource


@pytest.fixture
async def execution(
    marketdata: ServiceRuntime, tmp_path: Path
) -> AsyncIterator[execution_pb2_grpc.ExecutionServiceStub]:
    settings = ExecutionSettings(
        port=0,
        folder=tmp_path / "execution",
        marketdata_address=f"127.0.0.1:{marketdata.port}",
        tick_speed=3_600.0,  # one market hour per second: orders meet a moving market
    )
    runtime = execution_runtime(settings)
    await runtime.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        yield execution_pb2_grpc.ExecutionServiceStub(channel)
    await runtime.stop(grace=0.2)


def order(key: str = "k1", **changes: object) -> ex.Order:
    fields: dict[str, object] = {
        "idempotency_key": key,
        "symbol": "EURUSD",
        "side": common_pb2.SIDE_BUY,
        "type": ex.ORDER_TYPE_MARKET,
        "volume": common_pb2.Lots(units=0, nanos=100_000_000),  # 0.10 lots
        # Far from any 2017 EUR/USD price, so the levels are valid whenever the order lands.
        "stop_loss": common_pb2.Price(points=50_000, digits=5),
        "take_profit": common_pb2.Price(points=200_000, digits=5),
        # Ticks are an hour apart in wall seconds here; accept the move to the next one.
        "deviation_points": 500,
        "signal_id": "signal-1",
        "risk_decision": risk_pb2.RiskDecision(signal_id="signal-1", approved=True),
    }
    fields.update(changes)
    return ex.Order(**fields)  # type: ignore[arg-type]


async def test_submit_fills_on_ticks_and_reports_stream_in_order(
    execution: execution_pb2_grpc.ExecutionServiceStub,
) -> None:
    await asyncio.sleep(0.3)  # let the tick feed deliver a first quote
    reply = await execution.SubmitOrder(ex.SubmitOrderRequest(order=order()))
    assert not reply.duplicate
    assert reply.order.state in (ex.ORDER_STATE_ACCEPTED, ex.ORDER_STATE_FILLED)
    call = execution.StreamExecutionReports()
    await call.write(
        ex.StreamExecutionReportsRequest(subscribe=ex.Subscription(from_seq=0, initial_credit=50))
    )
    states: list[int] = []
    while ex.ORDER_STATE_FILLED not in states:
        response = await asyncio.wait_for(call.read(), timeout=10)
        assert [r.seq for r in response.batch.reports] == list(
            range(response.batch.seq, response.batch.seq + len(response.batch.reports))
        )
        states.extend(r.state for r in response.batch.reports if r.idempotency_key == "k1")
    call.cancel()
    assert states[0] == ex.ORDER_STATE_NEW
    assert ex.ORDER_STATE_ACCEPTED in states
    account = (await execution.GetAccount(ex.GetAccountRequest(account_id="paper"))).account
    assert account.open_positions == 1
    positions = (await execution.ListPositions(ex.ListPositionsRequest())).positions
    assert [(p.symbol, p.volume.nanos) for p in positions] == [("EURUSD", 100_000_000)]


async def test_resubmitting_a_key_returns_the_order_and_reaches_no_broker_twice(
    execution: execution_pb2_grpc.ExecutionServiceStub,
) -> None:
    first = await execution.SubmitOrder(ex.SubmitOrderRequest(order=order("same")))
    again = await execution.SubmitOrder(ex.SubmitOrderRequest(order=order("same")))
    assert again.duplicate
    assert again.order.order_id == first.order.order_id
    orders = (await execution.ListOrders(ex.ListOrdersRequest(account_id="paper"))).orders
    assert [o.idempotency_key for o in orders] == ["same"]


@pytest.mark.parametrize(
    ("bad", "code", "message_part"),
    [
        (order("x1", symbol="XAUUSD"), grpc.StatusCode.NOT_FOUND, "unknown symbol"),
        (
            order("x2", volume=common_pb2.Lots(units=-1)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "volume",
        ),
        (
            order("x3", stop_loss=common_pb2.Price(points=300_000, digits=5)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "stop",
        ),
        (
            order("x4", risk_decision=risk_pb2.RiskDecision(signal_id="signal-1")),
            grpc.StatusCode.FAILED_PRECONDITION,
            "risk rejected",
        ),
        (order("", symbol="EURUSD"), grpc.StatusCode.INVALID_ARGUMENT, "idempotency"),
        (
            order("x5", stop_loss=common_pb2.Price(points=5_000, digits=4)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "digits",
        ),
    ],
    ids=[
        "unknown-symbol",
        "negative-volume",
        "stop-wrong-side",
        "not-approved",
        "no-key",
        "digits",
    ],
)
async def test_submit_when_order_is_bad_answers_status_and_state_stays_intact(
    execution: execution_pb2_grpc.ExecutionServiceStub,
    bad: ex.Order,
    code: grpc.StatusCode,
    message_part: str,
) -> None:
    await asyncio.sleep(0.3)  # a quote is known, so the stop side can be checked
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await execution.SubmitOrder(ex.SubmitOrderRequest(order=bad))
    assert raised.value.code() == code
    assert message_part in (raised.value.details() or "").lower()
    orders = (await execution.ListOrders(ex.ListOrdersRequest())).orders
    assert orders == []


async def test_same_key_with_other_fields_is_already_exists(
    execution: execution_pb2_grpc.ExecutionServiceStub,
) -> None:
    await execution.SubmitOrder(ex.SubmitOrderRequest(order=order("dup")))
    changed = order("dup", volume=common_pb2.Lots(units=0, nanos=200_000_000))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await execution.SubmitOrder(ex.SubmitOrderRequest(order=changed))
    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_replay_source_fixture_is_the_shipped_year(replay_source: ReplaySource) -> None:
    assert replay_source.tick_count(["EURUSD"]) == 621_187


async def test_the_order_record_keeps_the_risk_verdicts_that_approved_it(
    execution: execution_pb2_grpc.ExecutionServiceStub,
) -> None:
    decision = risk_pb2.RiskDecision(
        signal_id="signal-1",
        approved=True,
        reason="approved: 0.10 lots",
        verdicts=[
            risk_pb2.RuleVerdict(rule="kill_switch", passed=True, reason="not engaged"),
            risk_pb2.RuleVerdict(
                rule="min_reward_risk", passed=True, measured="2.0", limit="2.0", unit="ratio"
            ),
        ],
    )
    await execution.SubmitOrder(
        ex.SubmitOrderRequest(order=order("evidence", risk_decision=decision))
    )
    stored = (await execution.GetOrder(ex.GetOrderRequest(idempotency_key="evidence"))).order
    assert stored.risk_decision == decision
    listed = (await execution.ListOrders(ex.ListOrdersRequest())).orders
    assert [o.risk_decision for o in listed] == [decision]

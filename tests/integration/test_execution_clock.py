"""The pipeline clock: a replay's orders meet the market at their signal's moment."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import grpc
import pytest

from quantmesh.execution.v1 import execution_pb2 as ex
from quantmesh.execution.v1 import execution_pb2_grpc
from quantmesh.runtime.server import ServiceRuntime
from quantmesh.services.execution.clock import END_OF_TIME_MS, ClockMode
from quantmesh.services.execution.config import ExecutionSettings
from quantmesh.services.execution.service import build_runtime as execution_runtime
from tests.integration.test_execution_service import order

HOUR_MS = 3_600_000
Starter = Callable[..., AbstractAsyncContextManager[execution_pb2_grpc.ExecutionServiceStub]]


@pytest.fixture
def start_execution(marketdata: ServiceRuntime, tmp_path: Path) -> Starter:
    @asynccontextmanager
    async def start(
        folder: str, tick_speed: float = 0.0, clock: ClockMode = ClockMode.PIPELINE
    ) -> AsyncIterator[execution_pb2_grpc.ExecutionServiceStub]:
        settings = ExecutionSettings(
            port=0,
            folder=tmp_path / folder,
            marketdata_address=f"127.0.0.1:{marketdata.port}",
            tick_speed=tick_speed,
            clock=clock,
        )
        runtime = execution_runtime(settings)
        await runtime.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
                yield execution_pb2_grpc.ExecutionServiceStub(channel)
        finally:
            await runtime.stop(grace=0.2)

    return start


async def advance(
    stub: execution_pb2_grpc.ExecutionServiceStub, time_ms: int, wait: bool = True
) -> ex.AdvanceMarketTimeResponse:
    request = ex.AdvanceMarketTimeRequest(time_ms=time_ms, wait=wait)
    reply: ex.AdvanceMarketTimeResponse = await stub.AdvanceMarketTime(request, timeout=30)
    return reply


async def first_fill(stub: execution_pb2_grpc.ExecutionServiceStub, key: str) -> ex.Order:
    """Grant time an hour at a time until the order with ``key`` has filled."""
    for _ in range(48):
        got = await stub.GetOrder(ex.GetOrderRequest(idempotency_key=key))
        if got.order.state == ex.ORDER_STATE_FILLED:
            return got.order
        account = (await stub.GetAccount(ex.GetAccountRequest())).account
        await advance(stub, account.market_time_ms + HOUR_MS)
    raise AssertionError(f"order {key} never filled")


async def trade_at_hour(stub: execution_pb2_grpc.ExecutionServiceStub, hours: int) -> ex.Order:
    """Hold the market at the first tick + ``hours``, buy there, return the filled order."""
    start = (await advance(stub, 0)).market_time_ms
    assert start == 0, "a held feed processes no tick before the first grant"
    # Market data's first tick is early on 2 January 2017; grant from the year's start.
    signal_time = 1_483_315_200_000 + hours * HOUR_MS
    reply = await advance(stub, signal_time)
    assert 0 < reply.market_time_ms <= signal_time
    account = (await stub.GetAccount(ex.GetAccountRequest())).account
    assert account.market_time_ms == reply.market_time_ms
    submitted = await stub.SubmitOrder(
        ex.SubmitOrderRequest(order=order("at-hour", model_name="mlp", model_version="3"))
    )
    assert submitted.order.created_time_ms == reply.market_time_ms
    filled = await first_fill(stub, "at-hour")
    assert filled.updated_time_ms > signal_time, "no fill may come from a tick before the order"
    return filled


async def test_a_replay_fills_the_same_at_any_speed(start_execution: Starter) -> None:
    async with start_execution("fast", tick_speed=0.0) as fast:
        at_full_speed = await trade_at_hour(fast, hours=30)
    async with start_execution("paced", tick_speed=36_000.0) as paced:
        paced_replay = await trade_at_hour(paced, hours=30)
    assert at_full_speed.average_fill_price == paced_replay.average_fill_price
    assert at_full_speed.updated_time_ms == paced_replay.updated_time_ms
    assert (at_full_speed.model_name, at_full_speed.model_version) == ("mlp", "3")


async def test_reports_and_account_carry_model_and_day_start(start_execution: Starter) -> None:
    async with start_execution("provenance") as stub:
        await trade_at_hour(stub, hours=30)
        call = stub.StreamExecutionReports()
        await call.write(
            ex.StreamExecutionReportsRequest(
                subscribe=ex.Subscription(from_seq=0, initial_credit=10)
            )
        )
        response = await call.read()
        call.cancel()
        assert {(r.model_name, r.model_version) for r in response.batch.reports} == {("mlp", "3")}
        account = (await stub.GetAccount(ex.GetAccountRequest())).account
        # The order opened on the day it was placed: the day began with the deposit.
        assert (account.start_of_day_equity.units, account.start_of_day_equity.nanos) == (10_000, 0)
        assert account.equity.units != 10_000 or account.equity.nanos != 0  # it moved since


async def test_the_free_clock_never_holds_and_the_end_of_time_opens_a_held_feed(
    start_execution: Starter,
) -> None:
    async with start_execution("free", clock=ClockMode.FREE) as free:
        reply = await advance(free, 1_483_315_200_000 + 2 * HOUR_MS)
        assert reply.granted_time_ms == END_OF_TIME_MS
        assert reply.ticks_processed > 0
    async with start_execution("held") as held:
        done = await advance(held, END_OF_TIME_MS)
        assert done.feed_ended
        assert done.market_time_ms >= 1_514_000_000_000  # the replay's last days, December 2017


async def test_a_negative_time_is_invalid(start_execution: Starter) -> None:
    async with start_execution("bad") as stub:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.AdvanceMarketTime(ex.AdvanceMarketTimeRequest(time_ms=-1))
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "negative" in (raised.value.details() or "")

"""CreditFlow: the credit/ack state machine behind every Subscribe stream, and the lag
``produce`` reports for it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

import pytest
from prometheus_client import REGISTRY

from quantmesh.runtime.errors import InvalidArgument, Unavailable
from quantmesh.runtime.streams import CreditFlow, produce


def test_starting_at_when_initial_credit_negative_raises() -> None:
    with pytest.raises(InvalidArgument, match="initial_credit"):
        CreditFlow.starting_at(0, -1)


@pytest.mark.parametrize("grant", [0, -3])
def test_grant_when_below_one_raises(grant: int) -> None:
    flow = CreditFlow.starting_at(0, 0)
    with pytest.raises(InvalidArgument, match="at least 1"):
        flow.grant(grant)


def test_ack_when_ahead_of_sent_raises_and_stale_ack_is_ignored() -> None:
    flow = CreditFlow.starting_at(10, 1)
    flow.on_sent(19)
    with pytest.raises(InvalidArgument, match="ahead of the stream"):
        flow.ack(20)
    flow.ack(19)
    flow.ack(12)
    assert flow.acked_through == 19


async def test_wait_for_credit_when_none_blocks_until_granted() -> None:
    flow = CreditFlow.starting_at(0, 0)
    shutdown = asyncio.Event()
    waiter = asyncio.create_task(flow.wait_for_credit(shutdown))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    flow.grant(2)
    assert await asyncio.wait_for(waiter, 1) is True


async def test_wait_for_credit_when_consumer_done_without_credit_ends_stream() -> None:
    flow = CreditFlow.starting_at(0, 0)
    flow.finish_input()
    assert await flow.wait_for_credit(asyncio.Event()) is False


async def test_wait_for_credit_when_shutting_down_names_resume_seq() -> None:
    flow = CreditFlow.starting_at(100, 5)
    flow.on_sent(149)
    shutdown = asyncio.Event()
    shutdown.set()
    with pytest.raises(Unavailable, match="from_seq=150"):
        await flow.wait_for_credit(shutdown)


async def test_wait_for_credit_when_control_failed_raises_that_error() -> None:
    flow = CreditFlow.starting_at(0, 0)
    waiter = asyncio.create_task(flow.wait_for_credit(asyncio.Event()))
    await asyncio.sleep(0.01)
    flow.fail(InvalidArgument("bad credit"))
    with pytest.raises(InvalidArgument, match="bad credit"):
        await asyncio.wait_for(waiter, 1)


# ---------------------------------------------------------------- lag


@dataclass(frozen=True)
class Batch:
    seq: int
    size: int

    def __len__(self) -> int:
        return self.size


async def batches(*sizes: int) -> AsyncIterator[Batch]:
    seq = 0
    for size in sizes:
        yield Batch(seq, size)
        seq += size


def identity(batch: Batch) -> Batch:
    return batch


def end_marker(next_seq: int) -> Batch:
    return Batch(next_seq, 0)


def stream_lag(stream: str) -> float | None:
    return REGISTRY.get_sample_value("quantmesh_stream_lag", {"stream": stream})


def test_lag_moves_with_sends_and_acks_while_observed() -> None:
    flow = CreditFlow.starting_at(10, 3)
    seen: list[int] = []
    flow.observe_lag(seen.append)
    flow.on_sent(14)
    flow.ack(12)
    flow.ack(11)  # stale: the lag does not move
    flow.ack(14)
    flow.observe_lag(None)
    flow.on_sent(19)
    assert seen == [0, 5, 2, 0]
    assert flow.lag == 5


async def test_produce_reports_the_lag_of_its_subscribers_summed_per_stream() -> None:
    shutdown = asyncio.Event()
    first, second = CreditFlow.starting_at(0, 2), CreditFlow.starting_at(0, 1)
    one = produce(batches(5, 5), first, shutdown, identity, end_marker, stream="test-sum")
    two = produce(batches(3), second, shutdown, identity, stream="test-sum")
    await anext(one)
    assert stream_lag("test-sum") == 5
    await anext(two)
    assert stream_lag("test-sum") == 8
    first.ack(2)
    assert stream_lag("test-sum") == 5
    await anext(one)
    assert stream_lag("test-sum") == 10  # sent 9 - acked 2 of the first, 3 of the second

    with pytest.raises(StopAsyncIteration):
        await anext(two)  # the second runs out of batches: its lag stops counting
    assert stream_lag("test-sum") == 7

    assert await anext(one) == Batch(10, 0)  # the end marker is not lag
    assert stream_lag("test-sum") == 7
    first.ack(9)  # acks still count while the producer waits for the half-close
    assert stream_lag("test-sum") == 0
    first.finish_input()
    with pytest.raises(StopAsyncIteration):
        await anext(one)
    assert stream_lag("test-sum") == 0


async def test_produce_withdraws_its_lag_when_shutdown_ends_the_stream() -> None:
    shutdown = asyncio.Event()
    flow = CreditFlow.starting_at(0, 2)
    stream = produce(batches(4, 4), flow, shutdown, identity, stream="test-shutdown")
    await anext(stream)
    assert stream_lag("test-shutdown") == 4
    shutdown.set()
    with pytest.raises(Unavailable, match="from_seq=4"):
        await anext(stream)
    assert stream_lag("test-shutdown") == 0


async def test_produce_withdraws_its_lag_when_the_call_is_closed_mid_stream() -> None:
    flow = CreditFlow.starting_at(0, 2)
    stream = produce(batches(4, 4), flow, asyncio.Event(), identity, stream="test-closed")
    await anext(stream)
    assert stream_lag("test-closed") == 4
    assert isinstance(stream, AsyncGenerator)  # what a servicer's call closes
    await stream.aclose()
    assert stream_lag("test-closed") == 0
    flow.ack(3)  # an ack read after the end no longer reports
    assert stream_lag("test-closed") == 0

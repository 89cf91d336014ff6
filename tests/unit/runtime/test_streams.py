"""CreditFlow: the credit/ack state machine behind every Subscribe stream."""

from __future__ import annotations

import asyncio

import pytest

from quantmesh.runtime.errors import InvalidArgument, Unavailable
from quantmesh.runtime.streams import CreditFlow


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

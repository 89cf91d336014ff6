"""Consumer side of quantmesh's bidi Subscribe streams: credit windows, acks, resume.

Every pipeline stage reads the stage before it the same way, so one class does it:
:class:`StreamSubscriber` keeps ``window`` batches of credit outstanding, acks what the
caller has consumed, and after a dropped stream or a draining producer it resubscribes
from the next seq, so the caller sees every item exactly once. A service describes its
own stream with a :class:`StreamSpec` (which RPC, how to build a subscription).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc

from quantmesh.common.v1 import common_pb2
from quantmesh.runtime.logging import get_logger

BatchT = TypeVar("BatchT")

# Statuses after which resubscribing can succeed: a drained or restarted producer.
RESUMABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED}
)

_log = get_logger("subscriber")


@dataclass(frozen=True)
class StreamSpec(Generic[BatchT]):
    """How to speak one service's Subscribe stream.

    Attributes
    ----------
    open_call:
        Starts the bidi call, e.g. ``stub.Subscribe``.
    request_type:
        The stream's ``SubscribeRequest`` class (a ``subscribe|ack|credit`` oneof).
    subscription:
        Builds the ``subscribe`` message for ``(from_seq, initial_credit)``.
    batch_of:
        Takes the batch out of a ``SubscribeResponse``.
    size:
        Number of items (rows, signals) in a batch. Seqs are consecutive, so a batch
        of ``size`` items starting at ``seq`` is followed by ``seq + size``; an empty
        batch marks the end of a finite stream.
    """

    open_call: Callable[..., Any]
    request_type: Callable[..., Any]
    subscription: Callable[[int, int], Any]
    # Every quantmesh stream answers ``SubscribeResponse{batch}``, and its columnar
    # batches count rows by their ``time_msc`` column; signals override ``size``.
    batch_of: Callable[[Any], BatchT] = lambda response: response.batch
    size: Callable[[BatchT], int] = lambda batch: len(batch.time_msc)  # type: ignore[attr-defined]


@dataclass
class SubscriberStats:
    """What a subscriber has done so far."""

    batches: int = 0
    resumes: int = 0


class StreamDroppedError(Exception):
    """A control message could not be written: the stream ended under us."""


class StreamSubscriber(Generic[BatchT]):
    """Read a producer's stream exactly once across reconnects.

    Parameters
    ----------
    spec:
        The stream to read.
    from_seq:
        First seq to read.
    window:
        Batches of credit kept outstanding; more hides latency, fewer bounds memory.
    max_resumes:
        Consecutive reconnect attempts after a resumable error before giving up.
    """

    def __init__(
        self, spec: StreamSpec[BatchT], from_seq: int = 0, window: int = 32, max_resumes: int = 10
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self._spec = spec
        self.next_seq = from_seq
        self._window = window
        self._max_resumes = max_resumes
        self.stats = SubscriberStats()

    async def batches(self) -> AsyncIterator[BatchT]:
        """Yield batches in seq order until the stream ends."""
        failures = 0
        while True:
            try:
                async for batch in self._one_stream():
                    failures = 0
                    yield batch
                return
            except (grpc.aio.AioRpcError, StreamDroppedError) as error:
                resumable = isinstance(error, StreamDroppedError) or error.code() in RESUMABLE
                if not resumable or failures >= self._max_resumes:
                    raise
                failures += 1
                self.stats.resumes += 1
                _log.warning("stream dropped, resuming", seq=self.next_seq, reason=str(error))
                await asyncio.sleep(min(2.0, 0.05 * 2**failures))

    async def _one_stream(self) -> AsyncIterator[BatchT]:
        spec = self._spec
        call = spec.open_call()
        try:
            subscription = spec.subscription(self.next_seq, self._window)
            await _send(call, spec.request_type(subscribe=subscription))
            # Credit is topped up in halves of the window: one control message per
            # window/2 batches instead of one per batch.
            refill = max(1, self._window // 2)
            unacknowledged = 0
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:  # type: ignore[attr-defined]  # stubs lag grpcio
                    return
                batch = spec.batch_of(response)
                first, size = batch.seq, spec.size(batch)  # type: ignore[attr-defined]
                if first != self.next_seq:
                    raise RuntimeError(
                        f"stream out of order: expected seq {self.next_seq}, got {first}"
                    )
                if size == 0:
                    # The producer's end-of-stream marker: stop writing, then the
                    # producer ends the call with its status.
                    await call.done_writing()
                    await call.read()
                    return
                yield batch
                # The caller has processed the batch when it asks for the next one.
                self.next_seq = first + size
                self.stats.batches += 1
                unacknowledged += 1
                if unacknowledged >= refill:
                    ack = common_pb2.Ack(seq=self.next_seq - 1)
                    await _send(call, spec.request_type(ack=ack))
                    credit = common_pb2.Credit(batches=unacknowledged)
                    await _send(call, spec.request_type(credit=credit))
                    unacknowledged = 0
        finally:
            call.cancel()


async def _send(call: Any, request: Any) -> None:
    # Once the producer has ended the call, the next read() tells how (EOF or a status),
    # so a control message is simply not sent.
    if call.done():
        return
    try:
        await call.write(request)
    except asyncio.InvalidStateError:
        return
    except grpc.aio.AioRpcError as error:
        # The write raced the end of the call and the failed write now hides its status.
        # Resubscribing from the next seq is right either way: past the end, the
        # producer ends the new stream at once.
        raise StreamDroppedError(str(error)) from error

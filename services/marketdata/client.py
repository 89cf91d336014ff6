"""Consumer side of the tick stream: credit windows, acks and automatic resume.

:class:`TickSubscriber` is what downstream services (features, the recorder) and the
CLI use to read ticks. It keeps ``window`` batches of credit outstanding, acks what the
caller has consumed, and after a dropped stream or a draining server it resubscribes
from the next seq, so the caller sees every tick exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc

from quantmesh.common.v1 import common_pb2
from quantmesh.marketdata.v1 import marketdata_pb2, marketdata_pb2_grpc
from quantmesh.runtime.logging import get_logger

# Statuses after which resubscribing can succeed: a drained or restarted server.
_RESUMABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED}

_log = get_logger("marketdata.client")


@dataclass
class SubscriberStats:
    """What a subscriber has done so far."""

    batches: int = 0
    ticks: int = 0
    resumes: int = 0


class TickSubscriber:
    """Read a tick stream exactly once across reconnects.

    Parameters
    ----------
    channel:
        Channel to the market data service.
    symbols:
        Symbols to stream; empty for all.
    from_seq:
        First seq to read.
    batch_size:
        Ticks per batch asked of the server.
    window:
        Batches of credit kept outstanding; more hides latency, fewer bounds memory.
    speed:
        Replay speed factor; 0 is as fast as possible.
    max_resumes:
        Reconnect attempts after a resumable error before giving up.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        symbols: Sequence[str] = (),
        from_seq: int = 0,
        batch_size: int = 1_000,
        window: int = 32,
        speed: float = 0.0,
        max_resumes: int = 10,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self._stub = marketdata_pb2_grpc.MarketDataServiceStub(channel)
        self._symbols = list(symbols)
        self.next_seq = from_seq
        self._batch_size = batch_size
        self._window = window
        self._speed = speed
        self._max_resumes = max_resumes
        self.stats = SubscriberStats()

    async def batches(self) -> AsyncIterator[marketdata_pb2.TickBatch]:
        """Yield tick batches in seq order until the stream ends."""
        failures = 0
        while True:
            try:
                async for batch in self._one_stream():
                    failures = 0
                    yield batch
                return
            except (grpc.aio.AioRpcError, _StreamDropped) as error:
                resumable = isinstance(error, _StreamDropped) or error.code() in _RESUMABLE
                if not resumable or failures >= self._max_resumes:
                    raise
                failures += 1
                self.stats.resumes += 1
                _log.warning("stream dropped, resuming", seq=self.next_seq, reason=str(error))
                await asyncio.sleep(min(2.0, 0.05 * 2**failures))

    async def _one_stream(self) -> AsyncIterator[marketdata_pb2.TickBatch]:
        # grpc-stubs lag grpcio: a bidi call may start with no request iterator.
        call = self._stub.Subscribe()  # type: ignore[call-arg]
        try:
            await call.write(
                marketdata_pb2.SubscribeRequest(
                    subscribe=marketdata_pb2.Subscription(
                        symbols=self._symbols,
                        from_seq=self.next_seq,
                        batch_size=self._batch_size,
                        speed=self._speed,
                        initial_credit=self._window,
                    )
                )
            )
            # Credit is topped up in halves of the window: one control message per
            # window/2 batches instead of one per batch.
            refill = max(1, self._window // 2)
            unacknowledged = 0
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:  # type: ignore[attr-defined]
                    return
                batch = response.batch  # type: ignore[attr-defined]
                if batch.seq != self.next_seq:
                    raise RuntimeError(f"stream gap: expected seq {self.next_seq}, got {batch.seq}")
                yield batch
                # The caller has processed the batch when it asks for the next one.
                self.next_seq = batch.seq + len(batch.time_msc)
                self.stats.batches += 1
                self.stats.ticks += len(batch.time_msc)
                unacknowledged += 1
                if unacknowledged >= refill:
                    await _send(
                        call,
                        marketdata_pb2.SubscribeRequest(ack=common_pb2.Ack(seq=self.next_seq - 1)),
                    )
                    await _send(
                        call,
                        marketdata_pb2.SubscribeRequest(
                            credit=common_pb2.Credit(batches=unacknowledged)
                        ),
                    )
                    unacknowledged = 0
        finally:
            call.cancel()


class _StreamDropped(Exception):
    """A control message could not be written: the stream ended under us."""


async def _send(
    call: grpc.aio.StreamStreamCall[
        marketdata_pb2.SubscribeRequest, marketdata_pb2.SubscribeResponse
    ],
    request: marketdata_pb2.SubscribeRequest,
) -> None:
    # A write races with the server ending the stream (a drain, or the last batch).
    # Either way resubscribing from the next seq is right: past the end it ends at once.
    try:
        await call.write(request)
    except (asyncio.InvalidStateError, grpc.aio.AioRpcError) as error:
        raise _StreamDropped(str(error)) from error

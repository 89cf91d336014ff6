"""Producer side of quantmesh's bidi Subscribe streams: credit, acks, resume, draining.

Every pipeline stage streams the same way (DESIGN.md, "Stream semantics"):

- the consumer's first message opens the subscription, with ``from_seq`` to resume from;
- the producer numbers items with consecutive seqs and never sends more batches than
  the consumer's credit allows, so a consumer that grants nothing receives nothing;
- acks tell the producer what the consumer has fully processed;
- when the service drains, the stream ends with UNAVAILABLE naming the seq to resume from.

:class:`CreditFlow` is the pure state machine; :func:`produce` is the loop the servicers
run. Neither knows what a batch contains.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from quantmesh.runtime.errors import InvalidArgument, Unavailable
from quantmesh.runtime.metrics import STREAM_LAG

# How long a finished stream waits for its consumer to half-close after the end marker.
END_OF_STREAM_GRACE_S = 10.0


class Sequenced(Protocol):
    """A batch with a first seq and a number of items."""

    @property
    def seq(self) -> int: ...

    def __len__(self) -> int: ...


BatchT = TypeVar("BatchT", bound=Sequenced)
MessageT = TypeVar("MessageT")


@dataclass
class CreditFlow:
    """Credit and ack bookkeeping of one stream.

    ``credit`` counts batches the producer may still send; ``sent_through`` is the seq of
    the last item sent (``from_seq - 1`` before the first batch); ``acked_through`` the
    highest seq acknowledged; their difference is the :attr:`lag`.
    """

    credit: int
    sent_through: int
    acked_through: int
    consumer_done: bool = False
    error: Exception | None = None

    def __post_init__(self) -> None:
        self._changed = asyncio.Event()
        self._lag_listener: Callable[[int], None] | None = None

    @classmethod
    def starting_at(cls, from_seq: int, initial_credit: int) -> CreditFlow:
        if initial_credit < 0:
            raise InvalidArgument(f"initial_credit must be 0 or more, got {initial_credit}")
        return cls(credit=initial_credit, sent_through=from_seq - 1, acked_through=from_seq - 1)

    def grant(self, batches: int) -> None:
        """Add credit; a grant below 1 is a client bug and ends the stream."""
        if batches < 1:
            raise InvalidArgument(f"credit must grant at least 1 batch, got {batches}")
        self.credit += batches
        self._changed.set()

    def ack(self, seq: int) -> None:
        """Record an ack. Acks of unsent items are rejected; stale acks are harmless."""
        if seq > self.sent_through:
            raise InvalidArgument(
                f"ack of seq {seq} is ahead of the stream: the last seq sent is {self.sent_through}"
            )
        if seq > self.acked_through:
            self.acked_through = seq
            self._lag_changed()

    def fail(self, error: Exception) -> None:
        self.error = error
        self._changed.set()

    def finish_input(self) -> None:
        """The consumer half-closed: no more credit can arrive."""
        self.consumer_done = True
        self._changed.set()

    async def wait_for_consumer_close(self) -> None:
        """Wait until the consumer half-closes (or its controls fail)."""
        while not self.consumer_done and self.error is None:
            self._changed.clear()
            await self._changed.wait()

    def on_sent(self, last_seq: int) -> None:
        self.credit -= 1
        self.sent_through = last_seq
        self._lag_changed()

    @property
    def lag(self) -> int:
        """Items sent and not yet acknowledged: ``sent_through - acked_through``."""
        return self.sent_through - self.acked_through

    def observe_lag(self, listener: Callable[[int], None] | None) -> None:
        """Call ``listener(lag)`` now and after every send or ack that moves it; None stops."""
        self._lag_listener = listener
        self._lag_changed()

    def _lag_changed(self) -> None:
        if self._lag_listener is not None:
            self._lag_listener(self.lag)

    async def wait_for_credit(self, shutdown: asyncio.Event) -> bool:
        """Wait until a batch may be sent. False means the stream should end normally."""
        while True:
            if self.error is not None:
                raise self.error
            if shutdown.is_set():
                resume_from = self.sent_through + 1
                raise Unavailable(
                    f"the service is shutting down; resubscribe with from_seq={resume_from}"
                )
            if self.credit > 0:
                return True
            if self.consumer_done:
                return False
            self._changed.clear()
            waiters = {
                asyncio.ensure_future(self._changed.wait()),
                asyncio.ensure_future(shutdown.wait()),
            }
            _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in pending:
                waiter.cancel()


async def first_subscription(requests: AsyncIterator[Any]) -> Any | None:
    """Read the opening message of a Subscribe stream and return its ``subscribe`` part.

    None when the consumer closed without a word. Every quantmesh stream request has
    the same ``control`` oneof: ``subscribe``, ``ack`` and ``credit``.
    """
    first = await anext(requests, None)
    if first is None:
        return None
    kind = first.WhichOneof("control")
    if kind != "subscribe":
        got = kind or "an empty message"
        raise InvalidArgument(f"the first message of Subscribe must be `subscribe`, got `{got}`")
    return first.subscribe


def apply_control(request: Any, flow: CreditFlow) -> None:
    """Apply one later control message (``ack`` or ``credit``) of a Subscribe stream."""
    kind = request.WhichOneof("control")
    if kind == "credit":
        flow.grant(request.credit.batches)
    elif kind == "ack":
        flow.ack(request.ack.seq)
    elif kind == "subscribe":
        raise InvalidArgument("`subscribe` may be sent only once, as the first message")
    else:
        raise InvalidArgument("empty control message: set one of subscribe, ack or credit")


async def read_controls(requests: AsyncIterator[Any], flow: CreditFlow) -> None:
    """Apply the consumer's control messages to ``flow`` until it half-closes."""
    try:
        async for request in requests:
            apply_control(request, flow)
    except InvalidArgument as error:
        flow.fail(error)
        return
    flow.finish_input()


class _LagShare:
    """One subscriber's part of ``quantmesh_stream_lag{stream=…}``, which sums them all."""

    def __init__(self, stream: str) -> None:
        self._gauge = STREAM_LAG.labels(stream)
        self._reported = 0

    def update(self, lag: int) -> None:
        self._gauge.inc(lag - self._reported)
        self._reported = lag

    def withdraw(self) -> None:
        self.update(0)


async def produce(
    batches: AsyncIterable[BatchT],
    flow: CreditFlow,
    shutdown: asyncio.Event,
    to_message: Callable[[BatchT], MessageT],
    end_of_stream: Callable[[int], MessageT] | None = None,
    *,
    stream: str = "",
) -> AsyncIterator[MessageT]:
    """Yield messages for ``batches`` as credit allows, recording what was sent.

    When the batches run out, ``end_of_stream(next_seq)`` (an empty batch) is sent
    without credit, and the call stays open until the consumer half-closes (at most
    ``END_OF_STREAM_GRACE_S``): a consumer may still be writing acks and credit for
    batches it has not read yet, and a write to a call that has ended fails in a way
    that hides how it ended.

    While it runs, the flow's lag (items sent, not yet acked) counts in
    ``quantmesh_stream_lag{stream=stream}``; however the stream ends, it stops counting.
    """
    lag = _LagShare(stream)
    flow.observe_lag(lag.update)
    try:
        async for batch in batches:
            if not await flow.wait_for_credit(shutdown):
                return
            message = to_message(batch)
            flow.on_sent(batch.seq + len(batch) - 1)
            yield message
        if end_of_stream is not None:
            yield end_of_stream(flow.sent_through + 1)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(END_OF_STREAM_GRACE_S):
                    await flow.wait_for_consumer_close()
    finally:
        flow.observe_lag(None)
        lag.withdraw()

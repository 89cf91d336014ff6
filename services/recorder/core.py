"""The recorder's core: batch ticks by size and time, write each tick once, never skip one.

Market data numbers the ticks of a stream by seq; the timeseries store keeps them with
their seqs, and its largest stored seq *is* the recorder's cursor (there is no other).
So the recorder needs no state of its own to resume: it subscribes from
``last_seq + 1``, and whatever it had buffered but not written when it stopped is simply
read again.

- :class:`TickBuffer` gathers consecutive batches until enough ticks are waiting
  (``max_ticks``) or the oldest has waited long enough (``max_seconds``): a few large
  inserts are what a column store wants, and the time bound keeps a slow live stream
  from sitting in memory.
- :class:`TickRecorder` writes the buffer. When the store fails, it keeps the buffer,
  waits with exponential backoff and tries again, for as long as it takes; meanwhile it
  reads nothing more, so the credit window holds market data back. It gives up only
  when the service shuts down, and then nothing is lost either: the rows were never
  acknowledged by the store, and the next run reads them again.

Nothing here imports grpc; :mod:`.job` connects this to market data's stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from quantmesh.runtime.logging import get_logger
from quantmesh.storage.timeseries import SeqGapError, TickRows, TimeseriesPort

__all__ = ["TickBuffer", "TickRecorder", "WriteRetry", "concat_ticks"]

T = TypeVar("T")
_log = get_logger("recorder")


def concat_ticks(parts: Sequence[TickRows]) -> TickRows:
    """One block of the parts' rows, in order, over the union of their symbols."""
    if len(parts) == 1:
        return parts[0]
    symbols: list[str] = []
    position: dict[str, int] = {}
    for part in parts:
        for name in part.symbols:
            if name not in position:
                position[name] = len(symbols)
                symbols.append(name)
    index = [
        np.array([position[name] for name in part.symbols], dtype=np.uint32)[part.symbol_index]
        for part in parts
    ]
    return TickRows(
        tuple(symbols),
        np.concatenate(index) if index else np.zeros(0, dtype=np.uint32),
        np.concatenate([part.time_msc for part in parts]),
        np.concatenate([part.bid for part in parts]),
        np.concatenate([part.ask for part in parts]),
        np.concatenate([part.volume for part in parts]),
    )


class TickBuffer:
    """Consecutive ticks of one stream waiting to be written.

    Parameters
    ----------
    next_seq:
        Seq the first batch must start at (the store's ``last_seq + 1``).
    max_ticks:
        The buffer is due once it holds this many ticks...
    max_seconds:
        ...or once its oldest tick has waited this long.
    clock:
        Monotonic seconds.
    """

    def __init__(
        self,
        next_seq: int,
        max_ticks: int,
        max_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_ticks < 1 or max_seconds <= 0:
            raise ValueError(
                f"max_ticks must be >= 1 and max_seconds > 0, got {max_ticks}, {max_seconds}"
            )
        self.next_seq = next_seq
        self.max_ticks = max_ticks
        self.max_seconds = max_seconds
        self._clock = clock
        self._parts: list[TickRows] = []
        self._count = 0
        self._since = 0.0

    def __len__(self) -> int:
        return self._count

    @property
    def first_seq(self) -> int:
        """Seq of the first buffered tick (``next_seq`` when empty)."""
        return self.next_seq - self._count

    def add(self, first_seq: int, rows: TickRows) -> None:
        """Append a batch; it must start where the buffered ticks end."""
        if first_seq != self.next_seq:
            raise ValueError(
                f"ticks out of order: expected seq {self.next_seq}, got a batch from {first_seq}"
            )
        if len(rows) == 0:
            return
        if not self._parts:
            self._since = self._clock()
        self._parts.append(rows)
        self._count += len(rows)
        self.next_seq += len(rows)

    def seconds_until_due(self) -> float | None:
        """How long until the buffer is due: 0 when it is, None when it is empty."""
        if self._count == 0:
            return None
        if self._count >= self.max_ticks:
            return 0.0
        return max(0.0, self._since + self.max_seconds - self._clock())

    def due(self) -> bool:
        return self.seconds_until_due() == 0.0

    def block(self) -> TickRows:
        """The buffered ticks as one block (kept, until :meth:`clear`)."""
        if len(self._parts) > 1:
            self._parts = [concat_ticks(self._parts)]
        return self._parts[0] if self._parts else concat_ticks([])

    def clear(self) -> None:
        """Forget the buffered ticks: they are stored."""
        self._parts = []
        self._count = 0


@dataclass(frozen=True)
class WriteRetry:
    """Waits between attempts to write: doubling from ``first_delay`` to ``max_delay``."""

    first_delay: float = 0.2
    max_delay: float = 10.0

    def delay(self, failures: int) -> float:
        """The wait after ``failures`` failed attempts in a row, with ±25 % jitter."""
        base = min(self.max_delay, self.first_delay * 2.0 ** max(0, failures - 1))
        return base * random.uniform(0.75, 1.25)


class TickRecorder:
    """Writes one stream's buffered ticks to the store, until they are stored.

    Parameters
    ----------
    store:
        The timeseries store.
    stream:
        The stream's name in the store (its symbols, comma-separated).
    next_seq:
        The store's ``last_seq + 1`` for the stream (0 when it holds none).
    max_ticks, max_seconds:
        When the buffer is due (see :class:`TickBuffer`).
    retry:
        Waits between attempts while the store fails.
    on_stored:
        Called with each block of ticks once it is stored (metrics).
    """

    def __init__(
        self,
        store: TimeseriesPort,
        stream: str,
        next_seq: int,
        *,
        max_ticks: int,
        max_seconds: float,
        retry: WriteRetry = WriteRetry(),
        on_stored: Callable[[TickRows], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.stream = stream
        self.buffer = TickBuffer(next_seq, max_ticks, max_seconds, clock)
        self.retry = retry
        self.failures = 0  # failed attempts to write, over the recorder's life
        self._on_stored = on_stored

    def add(self, first_seq: int, rows: TickRows) -> None:
        self.buffer.add(first_seq, rows)

    async def flush(self, shutdown: asyncio.Event) -> bool:
        """Store the buffered ticks; True once stored (or none were buffered).

        While the store fails, the ticks stay buffered and the write is tried again
        after a backoff, until it succeeds or ``shutdown`` is set: then False, and the
        ticks are left for the next run to read again. A :class:`SeqGapError` (the store
        lost ticks, or another writer moved the stream) is raised at once: the caller
        resubscribes from the store's cursor.
        """
        buffered = len(self.buffer)
        if buffered == 0:
            return True
        first, block = self.buffer.first_seq, self.buffer.block()
        failures = 0
        while True:
            try:
                await finish_even_if_cancelled(
                    asyncio.to_thread(self.store.insert_ticks, self.stream, first, block)
                )
            except SeqGapError:
                raise
            except Exception as error:
                failures += 1
                self.failures += 1
                if shutdown.is_set():
                    _log.warning(
                        "ticks not written before shutdown; the next run reads them again",
                        stream=self.stream,
                        from_seq=first,
                        ticks=buffered,
                        error=str(error),
                    )
                    return False
                wait = self.retry.delay(failures)
                _log.warning(
                    "cannot write ticks; keeping them and retrying",
                    stream=self.stream,
                    from_seq=first,
                    ticks=buffered,
                    attempt=failures,
                    retry_in_s=round(wait, 2),
                    error=f"{type(error).__name__}: {error}",
                )
                if await _wait_or_shutdown(shutdown, wait):
                    return False
                continue
            self.buffer.clear()
            if failures:
                _log.info("ticks written after retries", stream=self.stream, attempts=failures + 1)
            if self._on_stored is not None:
                self._on_stored(block)
            return True


async def finish_even_if_cancelled(work: Awaitable[T]) -> T:
    """Await ``work`` (a coroutine or future); if cancelled, let it finish first.

    A write runs in a worker thread that cancelling cannot stop. Waiting for it before the
    cancellation goes on means a stopped recorder never leaves a write in flight, which a
    restart in the same process would otherwise race.
    """
    future = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await asyncio.wait({future})
        raise


async def _wait_or_shutdown(shutdown: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds``; True if shutdown was set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(shutdown.wait(), timeout=seconds)
    return shutdown.is_set()

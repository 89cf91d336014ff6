"""The recorder's core: batch a stream's rows by size and time, write each once, skip none.

Market data numbers the ticks of a stream by seq, and inference its predictions; the
timeseries store keeps each row with its seq, and a stream's largest stored seq *is*
the recorder's cursor on it (there is no other). So the recorder needs no state of its
own to resume: it subscribes from ``last_seq + 1``, and whatever it had buffered but
not written when it stopped is simply read again. Ticks and predictions are recorded
the same way, each stream by its own :class:`SeqRecorder`:

- :class:`SeqBuffer` gathers consecutive batches until enough rows are waiting
  (``max_rows``) or the oldest has waited long enough (``max_seconds``): a few large
  inserts are what a column store wants, and the time bound keeps a slow live stream
  from sitting in memory.
- :class:`SeqRecorder` writes the buffer. When the store fails, it keeps the buffer,
  waits with exponential backoff and tries again, for as long as it takes; meanwhile it
  reads nothing more, so the credit window holds the producer back. It gives up only
  when the service shuts down, and then nothing is lost either: the rows were never
  acknowledged by the store, and the next run reads them again.

:class:`TickRecorder` and :class:`PredictionRecorder` bind it to the store's two kinds
of rows. Nothing here imports grpc; :mod:`.job` connects this to the streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence, Sized
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from quantmesh.runtime.logging import get_logger
from quantmesh.storage.timeseries import PredictionRows, SeqGapError, TickRows, TimeseriesPort

__all__ = [
    "PredictionRecorder",
    "SeqBuffer",
    "SeqRecorder",
    "TickBuffer",
    "TickRecorder",
    "WriteRetry",
    "concat_predictions",
    "concat_ticks",
]

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
RowsT = TypeVar("RowsT", bound=Sized)
_log = get_logger("recorder")


def _merge_dictionaries(
    dictionaries: Sequence[Sequence[K]], indexes: Sequence[np.ndarray]
) -> tuple[list[K], np.ndarray]:
    """Dictionary-encoded parts as one: the union of the values, each row's index into it."""
    merged: list[K] = []
    position: dict[K, int] = {}
    for values in dictionaries:
        for value in values:
            if value not in position:
                position[value] = len(merged)
                merged.append(value)
    recoded = [
        np.array([position[value] for value in values], dtype=np.uint32)[index]
        for values, index in zip(dictionaries, indexes, strict=True)
    ]
    return merged, np.concatenate(recoded) if recoded else np.zeros(0, dtype=np.uint32)


def concat_ticks(parts: Sequence[TickRows]) -> TickRows:
    """One block of the parts' rows, in order, over the union of their symbols."""
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return TickRows.of([], [], [], [], [])
    symbols, index = _merge_dictionaries(
        [part.symbols for part in parts], [part.symbol_index for part in parts]
    )
    return TickRows(
        tuple(symbols),
        index,
        np.concatenate([part.time_msc for part in parts]),
        np.concatenate([part.bid for part in parts]),
        np.concatenate([part.ask for part in parts]),
        np.concatenate([part.volume for part in parts]),
    )


def concat_predictions(parts: Sequence[PredictionRows]) -> PredictionRows:
    """One block of the parts' rows, in order, over the union of their models and symbols."""
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return PredictionRows.of([], [], [], [], [], [], [])
    models, model_index = _merge_dictionaries(
        [list(zip(part.models, part.versions, strict=True)) for part in parts],
        [part.model_index for part in parts],
    )
    symbols, symbol_index = _merge_dictionaries(
        [part.symbols for part in parts], [part.symbol_index for part in parts]
    )
    return PredictionRows(
        models=tuple(name for name, _ in models),
        versions=tuple(version for _, version in models),
        model_index=model_index,
        symbols=tuple(symbols),
        symbol_index=symbol_index,
        time_msc=np.concatenate([part.time_msc for part in parts]),
        probability_up=np.concatenate([part.probability_up for part in parts]),
        predicted_class=np.concatenate([part.predicted_class for part in parts]),
        feature_digest=np.concatenate([part.feature_digest for part in parts]),
    )


class SeqBuffer(Generic[RowsT]):
    """Consecutive rows of one stream waiting to be written.

    Parameters
    ----------
    next_seq:
        Seq the first batch must start at (the store's ``last_seq + 1``).
    max_rows:
        The buffer is due once it holds this many rows...
    max_seconds:
        ...or once its oldest row has waited this long.
    concat:
        Joins batches into one block, in order.
    clock:
        Monotonic seconds.
    what:
        What the rows are, for messages (``ticks``, ``predictions``).
    """

    def __init__(
        self,
        next_seq: int,
        max_rows: int,
        max_seconds: float,
        concat: Callable[[Sequence[RowsT]], RowsT],
        clock: Callable[[], float] = time.monotonic,
        what: str = "rows",
    ) -> None:
        if max_rows < 1 or max_seconds <= 0:
            raise ValueError(
                f"max_{what} must be >= 1 and max_seconds > 0, got {max_rows}, {max_seconds}"
            )
        self.next_seq = next_seq
        self.max_rows = max_rows
        self.max_seconds = max_seconds
        self.what = what
        self._concat = concat
        self._clock = clock
        self._parts: list[RowsT] = []
        self._count = 0
        self._since = 0.0

    def __len__(self) -> int:
        return self._count

    @property
    def first_seq(self) -> int:
        """Seq of the first buffered row (``next_seq`` when empty)."""
        return self.next_seq - self._count

    def add(self, first_seq: int, rows: RowsT) -> None:
        """Append a batch; it must start where the buffered rows end."""
        if first_seq != self.next_seq:
            raise ValueError(
                f"{self.what} out of order: expected seq {self.next_seq}, "
                f"got a batch from {first_seq}"
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
        if self._count >= self.max_rows:
            return 0.0
        return max(0.0, self._since + self.max_seconds - self._clock())

    def due(self) -> bool:
        return self.seconds_until_due() == 0.0

    def block(self) -> RowsT:
        """The buffered rows as one block (kept, until :meth:`clear`)."""
        if not self._parts:
            return self._concat([])
        if len(self._parts) > 1:
            self._parts = [self._concat(self._parts)]
        return self._parts[0]

    def clear(self) -> None:
        """Forget the buffered rows: they are stored."""
        self._parts = []
        self._count = 0


class TickBuffer(SeqBuffer[TickRows]):
    """Consecutive ticks of one stream waiting to be written (see :class:`SeqBuffer`)."""

    def __init__(
        self,
        next_seq: int,
        max_ticks: int,
        max_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(next_seq, max_ticks, max_seconds, concat_ticks, clock, "ticks")


@dataclass(frozen=True)
class WriteRetry:
    """Waits between attempts to write: doubling from ``first_delay`` to ``max_delay``."""

    first_delay: float = 0.2
    max_delay: float = 10.0

    def delay(self, failures: int) -> float:
        """The wait after ``failures`` failed attempts in a row, with ±25 % jitter."""
        base = min(self.max_delay, self.first_delay * 2.0 ** max(0, failures - 1))
        return base * random.uniform(0.75, 1.25)


class SeqRecorder(Generic[RowsT]):
    """Writes one stream's buffered rows to the store, until they are stored.

    Parameters
    ----------
    stream:
        The stream's name in the store.
    next_seq:
        The store's ``last_seq + 1`` for the stream (0 when it holds none).
    write:
        Stores ``(stream, first_seq, rows)``, skipping the seqs stored already, and
        raises :class:`SeqGapError` for rows past the stream's end.
    concat:
        Joins batches into one block.
    what:
        What the rows are, for messages.
    max_rows, max_seconds:
        When the buffer is due (see :class:`SeqBuffer`).
    retry:
        Waits between attempts while the store fails.
    on_stored:
        Called with each block once it is stored (metrics, the correlation job).
    """

    def __init__(
        self,
        stream: str,
        next_seq: int,
        write: Callable[[str, int, RowsT], int],
        concat: Callable[[Sequence[RowsT]], RowsT],
        *,
        what: str,
        max_rows: int,
        max_seconds: float,
        retry: WriteRetry = WriteRetry(),
        on_stored: Callable[[RowsT], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.buffer = SeqBuffer(next_seq, max_rows, max_seconds, concat, clock, what)
        self.what = what
        self.retry = retry
        self.failures = 0  # failed attempts to write, over the recorder's life
        self._write = write
        self._on_stored = on_stored

    def add(self, first_seq: int, rows: RowsT) -> None:
        self.buffer.add(first_seq, rows)

    async def flush(self, shutdown: asyncio.Event) -> bool:
        """Store the buffered rows; True once stored (or none were buffered).

        While the store fails, the rows stay buffered and the write is tried again
        after a backoff, until it succeeds or ``shutdown`` is set: then False, and the
        rows are left for the next run to read again. A :class:`SeqGapError` (the store
        lost rows, or another writer moved the stream) is raised at once: the caller
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
                    asyncio.to_thread(self._write, self.stream, first, block)
                )
            except SeqGapError:
                raise
            except Exception as error:
                failures += 1
                self.failures += 1
                if shutdown.is_set():
                    _log.warning(
                        f"{self.what} not written before shutdown; the next run reads them again",
                        stream=self.stream,
                        from_seq=first,
                        rows=buffered,
                        error=str(error),
                    )
                    return False
                wait = self.retry.delay(failures)
                _log.warning(
                    f"cannot write {self.what}; keeping them and retrying",
                    stream=self.stream,
                    from_seq=first,
                    rows=buffered,
                    attempt=failures,
                    retry_in_s=round(wait, 2),
                    error=f"{type(error).__name__}: {error}",
                )
                if await _wait_or_shutdown(shutdown, wait):
                    return False
                continue
            self.buffer.clear()
            if failures:
                _log.info(
                    f"{self.what} written after retries", stream=self.stream, attempts=failures + 1
                )
            if self._on_stored is not None:
                self._on_stored(block)
            return True


class TickRecorder(SeqRecorder[TickRows]):
    """Records a tick stream (see :class:`SeqRecorder`); ``max_ticks`` bounds a write."""

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
        # Looked up at each write, so a store that changes its method (tests) is obeyed.
        def write(stream: str, first_seq: int, rows: TickRows) -> int:
            return store.insert_ticks(stream, first_seq, rows)

        super().__init__(
            stream,
            next_seq,
            write,
            concat_ticks,
            what="ticks",
            max_rows=max_ticks,
            max_seconds=max_seconds,
            retry=retry,
            on_stored=on_stored,
            clock=clock,
        )
        self.store = store


class PredictionRecorder(SeqRecorder[PredictionRows]):
    """Records a prediction stream (see :class:`SeqRecorder`)."""

    def __init__(
        self,
        store: TimeseriesPort,
        stream: str,
        next_seq: int,
        *,
        max_predictions: int,
        max_seconds: float,
        retry: WriteRetry = WriteRetry(),
        on_stored: Callable[[PredictionRows], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        def write(stream: str, first_seq: int, rows: PredictionRows) -> int:
            return store.insert_predictions(rows, stream, first_seq)

        super().__init__(
            stream,
            next_seq,
            write,
            concat_predictions,
            what="predictions",
            max_rows=max_predictions,
            max_seconds=max_seconds,
            retry=retry,
            on_stored=on_stored,
            clock=clock,
        )
        self.store = store


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

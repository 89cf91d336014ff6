"""Incremental, vectorized bar building from one symbol's ticks.

A bar of period ``P`` covers ``[open, open + P)`` with ``open`` a multiple of ``P`` in
UTC epoch ms (so M1, M5 and H1 bars align to the UTC clock). Its OHLC are those of the
**ask**, because the shipped data are ask bars and the replay's ask follows them
exactly; ``spread_sum`` adds ``ask - bid`` over its ticks. Bars exist only where ticks
are: a quiet minute makes no M1 bar, as in MetaTrader.

A bar closes when the first tick at or after its end arrives (``close_seq`` is that
tick's seq), or when the stream ends (:meth:`BarBuilder.flush`, ``close_seq = -1``). Only
the open bar is kept between batches, so the state is a handful of integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

M1_MS = 60_000
M5_MS = 300_000
H1_MS = 3_600_000

# Rows of the per-bar int64 matrix a builder carries around; one column per bar.
_OPEN_MS, _O, _H, _L, _C, _SPREAD, _COUNT, _SEQ_FIRST, _SEQ_LAST, _CLOSE_SEQ = range(10)
_FIELDS = 10


# eq=False: the fields are numpy arrays, for which a generated __eq__ would fail.
@dataclass(frozen=True, slots=True, eq=False)
class ClosedBars:
    """Closed bars of one symbol and period, oldest first, as int64 columns.

    Attributes
    ----------
    open_ms:
        UTC epoch ms of each bar's open.
    open, high, low, close:
        Ask price points.
    spread_sum:
        Sum of ``ask - bid`` over the bar's ticks, in points.
    tick_count:
        Ticks in the bar (>= 1).
    seq_first, seq_last:
        Seqs of the bar's first and last tick.
    close_seq:
        Seq of the tick that closed the bar (the first one at or after its end), or -1
        when the end of the stream closed it.
    """

    open_ms: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    spread_sum: np.ndarray
    tick_count: np.ndarray
    seq_first: np.ndarray
    seq_last: np.ndarray
    close_seq: np.ndarray

    def __len__(self) -> int:
        return len(self.open_ms)

    @property
    def mean_spread(self) -> np.ndarray:
        """float64 mean ``ask - bid`` of each bar, in points."""
        result: np.ndarray = self.spread_sum / self.tick_count
        return result

    @staticmethod
    def from_matrix(matrix: np.ndarray) -> ClosedBars:
        """Bars from a ``(10, n)`` int64 matrix whose rows are the fields in order."""
        return ClosedBars(*(matrix[i] for i in range(_FIELDS)))

    @staticmethod
    def empty() -> ClosedBars:
        """No bars."""
        return ClosedBars.from_matrix(np.zeros((_FIELDS, 0), np.int64))


def _frozen_empty() -> ClosedBars:
    matrix = np.zeros((_FIELDS, 0), np.int64)
    matrix.flags.writeable = False  # one instance is shared by every empty result
    return ClosedBars.from_matrix(matrix)


_NONE = _frozen_empty()
_FIRST = np.zeros(1, np.intp)
_FIRST.flags.writeable = False


class BarBuilder:
    """Bars of one period for one symbol, fed tick batches in time order.

    Parameters
    ----------
    period_ms:
        Bar length in ms (e.g. :data:`H1_MS`); bars open on multiples of it.

    Notes
    -----
    Work per batch is a fixed number of numpy calls over the batch (segment starts,
    ``reduceat`` for high, low and spread, gathers for the rest), never a Python loop
    over ticks or bars.
    """

    def __init__(self, period_ms: int) -> None:
        if period_ms < 1:
            raise ValueError(f"period_ms must be >= 1, got {period_ms}")
        self.period_ms = period_ms
        self._open: list[int] | None = None  # the open bar's fields, as Python ints

    @property
    def open_bar_ms(self) -> int | None:
        """Open time of the bar still open, or None."""
        return None if self._open is None else self._open[_OPEN_MS]

    def update(
        self, time_msc: np.ndarray, ask: np.ndarray, spread: np.ndarray, seq: np.ndarray
    ) -> ClosedBars:
        """Add ticks; return the bars they close.

        Parameters
        ----------
        time_msc:
            int64 UTC epoch ms, non-decreasing, and not before the previous batch's.
        ask, spread:
            int64 ask and ``ask - bid`` in points.
        seq:
            int64 seq of each tick.

        Returns
        -------
        ClosedBars
            Every bar that a tick of this batch closed, oldest first. The bar of the
            last tick stays open.
        """
        n = len(time_msc)
        if n == 0:
            return _NONE
        period = self.period_ms
        pending = self._open
        first_time, last_time = int(time_msc[0]), int(time_msc[-1])
        if pending is not None:
            if first_time < pending[_OPEN_MS]:
                raise ValueError("ticks went back in time across batches")
            if last_time - last_time % period == pending[_OPEN_MS]:
                # The whole batch falls in the open bar, the common case for small
                # batches and long periods: fold it in without segmenting.
                pending[_H] = max(pending[_H], int(ask.max()))
                pending[_L] = min(pending[_L], int(ask.min()))
                pending[_C] = int(ask[-1])
                pending[_SPREAD] += int(spread.sum())
                pending[_COUNT] += n
                pending[_SEQ_LAST] = int(seq[-1])
                return _NONE
        bar_open = time_msc - time_msc % period
        if first_time - first_time % period == last_time - last_time % period:
            starts, last = _FIRST, np.array([n - 1])  # one bar
        else:
            change = np.flatnonzero(bar_open[1:] != bar_open[:-1])
            starts = np.concatenate((_FIRST, change + 1))
            last = np.concatenate((change, (n - 1,)))
        segments = np.empty((_FIELDS, len(starts)), np.int64)
        segments[_OPEN_MS] = bar_open[starts]
        segments[_O] = ask[starts]
        segments[_H] = np.maximum.reduceat(ask, starts)
        segments[_L] = np.minimum.reduceat(ask, starts)
        segments[_C] = ask[last]
        segments[_SPREAD] = np.add.reduceat(spread, starts)
        segments[_COUNT] = last - starts + 1
        segments[_SEQ_FIRST] = seq[starts]
        segments[_SEQ_LAST] = seq[last]
        # Segment i is closed by the first tick of segment i + 1.
        segments[_CLOSE_SEQ, :-1] = segments[_SEQ_FIRST, 1:]

        if pending is not None:
            if pending[_OPEN_MS] == first_time - first_time % period:
                first = segments[:, 0]  # a view: the batch continues the open bar
                first[_O] = pending[_O]
                first[_H] = max(pending[_H], int(first[_H]))
                first[_L] = min(pending[_L], int(first[_L]))
                first[_SPREAD] += pending[_SPREAD]
                first[_COUNT] += pending[_COUNT]
                first[_SEQ_FIRST] = pending[_SEQ_FIRST]
            else:
                pending[_CLOSE_SEQ] = int(seq[0])
                segments = np.concatenate((np.array(pending)[:, None], segments), axis=1)
        self._open = segments[:, -1].tolist()
        self._open[_CLOSE_SEQ] = -1
        return ClosedBars.from_matrix(segments[:, :-1])

    def flush(self) -> ClosedBars:
        """Close the open bar (end of stream) and return it; no bar when none is open."""
        if self._open is None:
            return _NONE
        bar, self._open = self._open, None
        return ClosedBars.from_matrix(np.array(bar, np.int64)[:, None])


def bars_from_ticks(
    period_ms: int,
    time_msc: np.ndarray,
    ask: np.ndarray,
    bid: np.ndarray,
    first_seq: int = 0,
) -> ClosedBars:
    """All bars of one symbol's ticks at once, the last one included (a convenience).

    Parameters
    ----------
    period_ms:
        Bar length in ms.
    time_msc, ask, bid:
        The ticks: int64 UTC epoch ms (non-decreasing) and ask/bid points.
    first_seq:
        Seq of the first tick.
    """
    builder = BarBuilder(period_ms)
    time_msc = np.asarray(time_msc, np.int64)
    ask = np.asarray(ask, np.int64)
    seq = first_seq + np.arange(len(time_msc), dtype=np.int64)
    closed = builder.update(time_msc, ask, ask - np.asarray(bid, np.int64), seq)
    last = builder.flush()
    merged = np.concatenate((_matrix(closed), _matrix(last)), axis=1)
    return ClosedBars.from_matrix(merged)


def _matrix(bars: ClosedBars) -> np.ndarray:
    return np.stack(
        [
            bars.open_ms,
            bars.open,
            bars.high,
            bars.low,
            bars.close,
            bars.spread_sum,
            bars.tick_count,
            bars.seq_first,
            bars.seq_last,
            bars.close_seq,
        ]
    )

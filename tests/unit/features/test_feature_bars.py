"""Bars from ticks: UTC alignment, closing rule, splits, and the shipped H1 bars rebuilt."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from quantmesh.datasets import load_h1_bars
from quantmesh.services.features.bars import (
    H1_MS,
    M1_MS,
    M5_MS,
    BarBuilder,
    ClosedBars,
    bars_from_ticks,
)
from quantmesh.services.marketdata.sources import ReplaySource

T0 = 1_483_315_200_000  # 2017-01-02 00:00 UTC
FIELDS = (
    "open_ms",
    "open",
    "high",
    "low",
    "close",
    "spread_sum",
    "tick_count",
    "seq_first",
    "seq_last",
    "close_seq",
)


def ref_bars(
    period: int, time_msc: np.ndarray, ask: np.ndarray, bid: np.ndarray, first_seq: int = 0
) -> dict[str, list[int]]:
    """Bars by a plain loop over ticks; the last bar is closed by the end of the stream."""
    out: dict[str, list[int]] = {f: [] for f in FIELDS}
    current: list[int] | None = None
    for i, (t, a, b) in enumerate(zip(time_msc.tolist(), ask.tolist(), bid.tolist(), strict=True)):
        seq = first_seq + i
        bar_open = t - t % period
        if current is not None and bar_open != current[0]:
            for f, v in zip(FIELDS, [*current, seq], strict=True):
                out[f].append(v)
            current = None
        if current is None:
            current = [bar_open, a, a, a, a, 0, 0, seq, seq]
        current[2] = max(current[2], a)
        current[3] = min(current[3], a)
        current[4] = a
        current[5] += a - b
        current[6] += 1
        current[8] = seq
    if current is not None:
        for f, v in zip(FIELDS, [*current, -1], strict=True):
            out[f].append(v)
    return out


def as_lists(bars: ClosedBars) -> dict[str, list[int]]:
    return {f: getattr(bars, f).tolist() for f in FIELDS}


def concat(parts: list[ClosedBars]) -> ClosedBars:
    return ClosedBars(*(np.concatenate([getattr(p, f) for p in parts]) for f in FIELDS))


def random_ticks(seed: int, n: int = 3_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Bursts and long gaps (up to ~2 h), with equal times, so bars are sparse and uneven.
    gaps = rng.choice(
        [0, 1, 50, 900, 20_000, 400_000, 7_000_000], n, p=[0.1, 0.2, 0.3, 0.2, 0.1, 0.08, 0.02]
    )
    time_msc = T0 + np.cumsum(gaps)
    ask = 100_000 + np.cumsum(rng.integers(-5, 6, n))
    bid = ask - rng.integers(1, 30, n)
    return time_msc.astype(np.int64), ask.astype(np.int64), bid.astype(np.int64)


def feed(
    builder: BarBuilder,
    time_msc: np.ndarray,
    ask: np.ndarray,
    bid: np.ndarray,
    cuts: list[int],
    first_seq: int = 0,
) -> ClosedBars:
    seq = first_seq + np.arange(len(time_msc), dtype=np.int64)
    parts = []
    for lo, hi in itertools.pairwise(cuts):
        sl = slice(lo, hi)
        parts.append(builder.update(time_msc[sl], ask[sl], ask[sl] - bid[sl], seq[sl]))
    parts.append(builder.flush())
    return concat(parts)


def test_update_when_tick_reaches_bar_end_closes_bar_with_ask_ohlc_spread_and_count() -> None:
    builder = BarBuilder(M1_MS)
    t = np.array([T0 + 5, T0 + 10, T0 + 20, T0 + 59_999], np.int64)
    ask = np.array([105, 109, 101, 104], np.int64)
    spread = np.array([2, 3, 4, 5], np.int64)
    closed = builder.update(t, ask, spread, np.arange(10, 14, dtype=np.int64))
    assert len(closed) == 0
    assert builder.open_bar_ms == T0
    closed = builder.update(
        np.array([T0 + 60_000], np.int64),
        np.array([99], np.int64),
        np.array([1], np.int64),
        np.array([14], np.int64),
    )
    assert as_lists(closed) == {
        "open_ms": [T0], "open": [105], "high": [109], "low": [101], "close": [104],
        "spread_sum": [14], "tick_count": [4], "seq_first": [10], "seq_last": [13],
        "close_seq": [14],
    }  # fmt: skip
    assert closed.mean_spread.tolist() == [3.5]
    assert builder.open_bar_ms == T0 + 60_000


def test_update_when_ticks_skip_hours_makes_no_empty_bars() -> None:
    t = np.array([T0, T0 + 10 * H1_MS + 1, T0 + 10 * H1_MS + 2], np.int64)
    bars = bars_from_ticks(H1_MS, t, np.array([5, 6, 7]), np.array([4, 5, 6]))
    assert bars.open_ms.tolist() == [T0, T0 + 10 * H1_MS]
    assert bars.tick_count.tolist() == [1, 2]


@pytest.mark.parametrize("period", [M1_MS, M5_MS, H1_MS])
@pytest.mark.parametrize("seed", [0, 1])
def test_update_when_compared_to_loop_reference_matches(period: int, seed: int) -> None:
    t, ask, bid = random_ticks(seed)
    expected = ref_bars(period, t, ask, bid, first_seq=500)
    assert as_lists(bars_from_ticks(period, t, ask, bid, first_seq=500)) == expected


@pytest.mark.parametrize("period", [M1_MS, M5_MS, H1_MS])
def test_update_when_batches_are_split_anywhere_gives_identical_bars(period: int) -> None:
    t, ask, bid = random_ticks(7)
    n = len(t)
    whole = feed(BarBuilder(period), t, ask, bid, [0, n])
    ones = feed(BarBuilder(period), t, ask, bid, list(range(n + 1)))
    rng = np.random.default_rng(3)
    cuts = sorted({0, n, *rng.integers(0, n, 300).tolist()})
    random = feed(BarBuilder(period), t, ask, bid, cuts)
    assert as_lists(ones) == as_lists(whole)
    assert as_lists(random) == as_lists(whole)


def test_update_when_bars_are_utc_aligned_opens_on_multiples_of_period() -> None:
    t, ask, bid = random_ticks(4)
    for period in (M1_MS, M5_MS, H1_MS):
        bars = bars_from_ticks(period, t, ask, bid)
        assert (bars.open_ms % period == 0).all()
        assert (np.diff(bars.open_ms) > 0).all()


def test_update_when_batch_is_empty_closes_nothing() -> None:
    builder = BarBuilder(M5_MS)
    empty = np.zeros(0, np.int64)
    assert len(builder.update(empty, empty, empty, empty)) == 0
    assert len(builder.flush()) == 0


def test_update_when_time_goes_back_across_batches_raises() -> None:
    builder = BarBuilder(M1_MS)
    one = np.ones(1, np.int64)
    builder.update(np.array([T0 + 120_000]), one, one, one)
    with pytest.raises(ValueError, match="back in time"):
        builder.update(np.array([T0]), one, one, one)


def test_flush_when_called_twice_closes_the_open_bar_once() -> None:
    builder = BarBuilder(M1_MS)
    one = np.ones(1, np.int64)
    builder.update(np.array([T0]), one, one, one)
    assert builder.flush().close_seq.tolist() == [-1]
    assert len(builder.flush()) == 0
    assert builder.open_bar_ms is None


def test_h1_bars_when_rebuilt_from_replay_ticks_equal_the_shipped_csv() -> None:
    source = ReplaySource.eurusd()
    csv = load_h1_bars()
    builder = BarBuilder(H1_MS)
    parts = []
    seen = 0
    for batch in source.read(["EURUSD"], batch_size=1000):
        seq = np.arange(batch.seq, batch.seq + len(batch), dtype=np.int64)
        parts.append(builder.update(batch.time_msc, batch.ask, batch.ask - batch.bid, seq))
        seen += len(batch)
    parts.append(builder.flush())
    bars = concat(parts)
    assert len(bars) == len(csv) == 6225
    assert np.array_equal(bars.open_ms, csv.time_ms)
    for name in ("open", "high", "low", "close"):
        assert np.array_equal(getattr(bars, name), getattr(csv, name)), name
    assert int(bars.tick_count.sum()) == seen == source.tick_count(["EURUSD"])
    # Seq ranges tile the stream: each bar starts right after the previous one.
    assert bars.seq_first[0] == 0
    assert bars.seq_last[-1] == seen - 1
    assert np.array_equal(bars.seq_first[1:], bars.seq_last[:-1] + 1)
    assert np.array_equal(bars.close_seq[:-1], bars.seq_first[1:])

"""No lookahead: a row never changes with ticks after its time, nor with the batching.

"Identical" here is bit for bit: every column of every row, values compared as raw
float64 bits (so NaN, -0.0 and the last ulp all count), and the row order too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pytest

from quantmesh.datasets import load_h1_bars
from quantmesh.services.features.engine import FeatureEngine
from quantmesh.services.features.schema import FeatureRows
from quantmesh.services.marketdata.sources import (
    EURUSD,
    GBPUSD,
    Bars,
    ReplaySource,
    Symbol,
    TickColumns,
    rebatch,
)

H1 = 3_600_000
FIELDS = ("symbol_index", "time_msc", "bid", "ask", "volume")
ROW_FIELDS = (
    "symbol_index",
    "time_msc",
    "bar_open_ms",
    "session_mask",
    "regime",
    "tick_seq_first",
    "tick_seq_last",
)


def join(batches: Iterable[TickColumns]) -> TickColumns:
    parts = list(batches)
    return TickColumns(
        parts[0].seq, *(np.concatenate([getattr(p, f) for p in parts]) for f in FIELDS)
    )


def rows_of(ticks: TickColumns, start: int, stop: int) -> TickColumns:
    return TickColumns(ticks.seq + start, *(getattr(ticks, f)[start:stop] for f in FIELDS))


def batches_of(ticks: TickColumns, size: int) -> Iterator[TickColumns]:
    return rebatch([ticks], size)


def random_batches(ticks: TickColumns, seed: int, max_size: int = 5_000) -> Iterator[TickColumns]:
    """Batches of log-uniform random sizes 1..max_size: many tiny ones, some large."""
    rng = np.random.default_rng(seed)
    start = 0
    while start < len(ticks):
        size = int(np.exp(rng.uniform(0, np.log(max_size))))
        stop = min(start + size, len(ticks))
        yield rows_of(ticks, start, stop)
        start = stop


def run(symbols: list[Symbol], batches: Iterable[TickColumns]) -> FeatureRows:
    engine = FeatureEngine(symbols)
    return FeatureRows.concat([*(engine.on_ticks(b) for b in batches), engine.finish()])


def assert_identical(actual: FeatureRows, expected: FeatureRows) -> None:
    assert len(actual) == len(expected)
    for name in ROW_FIELDS:
        assert np.array_equal(getattr(actual, name), getattr(expected, name)), name
    assert actual.values.shape == expected.values.shape
    assert np.array_equal(actual.values.view(np.int64), expected.values.view(np.int64))


def up_to(rows: FeatureRows, t: int) -> FeatureRows:
    return rows.take(np.flatnonzero(rows.time_msc <= t))


@pytest.fixture(scope="module")
def replay() -> ReplaySource:
    return ReplaySource.eurusd()


@pytest.fixture(scope="module")
def ticks(replay: ReplaySource) -> TickColumns:
    return join(replay.read(["EURUSD"], batch_size=100_000))


@pytest.fixture(scope="module")
def full(replay: ReplaySource, ticks: TickColumns) -> FeatureRows:
    return run([EURUSD], batches_of(ticks, 1000))


@pytest.fixture(scope="module")
def prefix(ticks: TickColumns) -> TickColumns:
    """About 400 hours: past every warm-up, the regime's (115 bars) included."""
    return rows_of(ticks, 0, 40_000)


def test_rows_when_fed_in_batches_of_1_7_and_1000_are_identical(prefix: TickColumns) -> None:
    expected = run([EURUSD], batches_of(prefix, 1000))
    assert len(expected) > 300
    assert (expected.regime != 0).sum() > 200  # the comparison covers classified rows
    for size in (1, 7, 1000, len(prefix)):
        assert_identical(run([EURUSD], batches_of(prefix, size)), expected)


@pytest.mark.parametrize("seed", [0, 1])
def test_rows_when_whole_year_fed_in_random_batch_sizes_are_identical(
    ticks: TickColumns, full: FeatureRows, seed: int
) -> None:
    assert_identical(run([EURUSD], random_batches(ticks, seed)), full)


def cut_times(ticks: TickColumns) -> list[int]:
    """Instants to cut the stream at: on a bar end, just before one, mid-bar, a weekend."""
    bars = load_h1_bars()
    return [
        int(bars.time_ms[200]),  # exactly a bar end: the next bar's first tick is later
        int(bars.time_ms[1000]) - 1,
        int(bars.time_ms[2500]) + H1 // 2,
        int(bars.time_ms[4000]) + 17,
        int(ticks.time_msc[123_456]),  # exactly a tick's time
        1_500_076_800_000,  # Saturday 2017-07-15 00:00 UTC: no ticks for a day
        int(ticks.time_msc[-1]) - 60_000,
    ]


def test_rows_when_ticks_after_t_are_withheld_are_identical_up_to_t(
    ticks: TickColumns, full: FeatureRows
) -> None:
    for t in cut_times(ticks):
        n = int(np.searchsorted(ticks.time_msc, t, side="right"))  # ticks with time <= t
        truncated = run([EURUSD], batches_of(rows_of(ticks, 0, n), 1000))
        assert_identical(up_to(truncated, t), up_to(full, t))
        # Only the bar still open at t (flushed by finish) can lie beyond t.
        assert (truncated.time_msc > t).sum() <= 1
        assert len(up_to(full, t)) > 0


def test_rows_when_ticks_after_t_are_changed_are_identical_up_to_t(
    ticks: TickColumns, full: FeatureRows
) -> None:
    rng = np.random.default_rng(5)
    for t in cut_times(ticks)[:4]:
        n = int(np.searchsorted(ticks.time_msc, t, side="right"))
        # A different future: prices shifted by a random walk, spreads widened.
        walk = np.cumsum(rng.integers(-40, 41, len(ticks) - n))
        ask = ticks.ask.copy()
        bid = ticks.bid.copy()
        ask[n:] += walk + 500
        bid[n:] += walk + 500 - rng.integers(0, 50, len(ticks) - n)
        other = TickColumns(ticks.seq, ticks.symbol_index, ticks.time_msc, bid, ask, ticks.volume)
        changed = run([EURUSD], batches_of(other, 1000))
        assert_identical(up_to(changed, t), up_to(full, t))
        assert not np.array_equal(changed.values[-50:], full.values[-50:])  # it did change


@pytest.fixture(scope="module")
def merged_pair() -> TickColumns:
    """EURUSD and GBPUSD replays merged: gappy, overlapping hours."""
    bars = load_h1_bars()
    eur = bars.slice_time(0, int(bars.time_ms[600]))
    picked = np.flatnonzero(np.arange(900) % 4 != 1)
    gbp = Bars(
        bars.time_ms[picked],
        bars.open[picked] + 20_000,
        bars.high[picked] + 20_000,
        bars.low[picked] + 20_000,
        bars.close[picked] + 20_000,
        bars.tick_volume[picked],
    )
    source = ReplaySource({"EURUSD": (EURUSD, eur), "GBPUSD": (GBPUSD, gbp)})
    return join(source.read(["EURUSD", "GBPUSD"], batch_size=100_000))


def test_rows_when_merged_symbols_fed_in_any_batch_size_are_identical(
    merged_pair: TickColumns,
) -> None:
    symbols = [EURUSD, GBPUSD]
    expected = run(symbols, batches_of(merged_pair, 1000))
    assert set(expected.symbol_index.tolist()) == {0, 1}
    some = rows_of(merged_pair, 0, 25_000)
    expected_some = run(symbols, batches_of(some, 1000))
    for size in (1, 7):
        assert_identical(run(symbols, batches_of(some, size)), expected_some)
    assert_identical(run(symbols, random_batches(merged_pair, 3)), expected)


def test_rows_when_merged_stream_is_cut_are_identical_up_to_t_per_symbol(
    merged_pair: TickColumns,
) -> None:
    symbols = [EURUSD, GBPUSD]
    expected = run(symbols, batches_of(merged_pair, 1000))
    times = merged_pair.time_msc
    for t in (int(times[30_000]), int(times[61_111]) + H1 // 3, int(times[-500])):
        n = int(np.searchsorted(times, t, side="right"))
        truncated = run(symbols, batches_of(rows_of(merged_pair, 0, n), 1000))
        for s in (0, 1):
            # A symbol's bar that the cut leaves open is flushed at finish(), so it
            # comes out in another position; per symbol the rows are the same.
            mine = truncated.take(np.flatnonzero(truncated.symbol_index == s))
            theirs = expected.take(np.flatnonzero(expected.symbol_index == s))
            assert_identical(up_to(mine, t), up_to(theirs, t))

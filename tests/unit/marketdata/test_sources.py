"""Domain types and the replay source: counts, batching, seeking, merging, memory."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterable
from itertools import pairwise

import numpy as np
import pytest

from quantmesh.datasets import load_h1_bars
from quantmesh.services.marketdata.sources import (
    EURUSD,
    GBPUSD,
    USDJPY,
    Bars,
    ReplaySource,
    TickColumns,
    TickSource,
)

FIELDS = ("symbol_index", "time_msc", "bid", "ask", "volume")


def collect(batches: Iterable[TickColumns]) -> dict[str, np.ndarray]:
    """Concatenate batches, checking that their seqs run on without gaps."""
    parts = list(batches)
    for before, after in pairwise(parts):
        assert after.seq == before.seq + len(before)
    out = {f: np.concatenate([getattr(p, f) for p in parts]) for f in FIELDS} if parts else {}
    out["seq0"] = np.array([parts[0].seq if parts else -1])
    return out


@pytest.fixture(scope="module")
def eurusd_replay() -> ReplaySource:
    return ReplaySource.eurusd()


@pytest.fixture(scope="module")
def whole(eurusd_replay: ReplaySource) -> dict[str, np.ndarray]:
    return collect(eurusd_replay.read(["EURUSD"]))


@pytest.fixture(scope="module")
def pair() -> ReplaySource:
    """EURUSD (300 bars) and GBPUSD on every third hour of a longer span: gappy, overlapping."""
    bars = load_h1_bars()
    head = bars.slice_time(0, int(bars.time_ms[300]))
    every_third = np.arange(0, 450, 3)
    offset = 20_000  # points, keeps the bars valid
    other = Bars(
        bars.time_ms[every_third],
        bars.open[every_third] + offset,
        bars.high[every_third] + offset,
        bars.low[every_third] + offset,
        bars.close[every_third] + offset,
        bars.tick_volume[every_third],
    )
    return ReplaySource({"EURUSD": (EURUSD, head), "GBPUSD": (GBPUSD, other)}, seed=11)


def test_symbol_point_when_digits_given_is_ten_to_minus_digits() -> None:
    assert EURUSD.point == pytest.approx(1e-5)
    assert USDJPY.point == pytest.approx(1e-3)


def test_bars_slice_time_when_bounds_given_includes_from_and_excludes_to() -> None:
    bars = load_h1_bars()
    t = bars.time_ms
    sliced = bars.slice_time(int(t[10]), int(t[20]))
    assert len(sliced) == 10
    assert sliced.time_ms[0] == t[10]
    assert sliced.time_ms[-1] == t[19]
    assert len(bars.slice_time(int(t[20]), int(t[10]))) == 0


def test_bars_when_columns_differ_in_length_raise_value_error() -> None:
    one, two = np.zeros(1, np.int64), np.zeros(2, np.int64)
    with pytest.raises(ValueError, match="same length"):
        Bars(one, one, one, one, two, np.zeros(1))


def test_replay_when_eurusd_is_a_tick_source_with_its_symbol() -> None:
    source = ReplaySource.eurusd()
    assert isinstance(source, TickSource)
    assert source.name == "replay"
    assert list(source.symbols) == [EURUSD]
    assert len(source.bars("EURUSD")) == 6225


def test_tick_count_when_eurusd_default_seed_is_pinned(eurusd_replay: ReplaySource) -> None:
    # A change here means the generator changed and every replayed tick moved: bump on purpose.
    assert eurusd_replay.tick_count(["EURUSD"]) == 621_187


def test_read_when_whole_replay_yields_tick_count_rows_in_order(
    eurusd_replay: ReplaySource, whole: dict[str, np.ndarray]
) -> None:
    assert len(whole["ask"]) == eurusd_replay.tick_count(["EURUSD"])
    assert whole["seq0"][0] == 0
    assert np.all(np.diff(whole["time_msc"]) > 0)
    assert np.all(whole["ask"] - whole["bid"] >= 1)
    assert np.all(whole["symbol_index"] == 0)
    assert whole["symbol_index"].dtype == np.uint32


@pytest.mark.parametrize("batch_size", [7, 1000, 4096, 100_000])
def test_read_when_batch_size_given_every_batch_but_the_last_is_full(
    eurusd_replay: ReplaySource, batch_size: int
) -> None:
    total = eurusd_replay.tick_count(["EURUSD"])
    sizes = [len(b) for b in eurusd_replay.read(["EURUSD"], batch_size=batch_size)]
    assert sum(sizes) == total
    assert all(size == batch_size for size in sizes[:-1])
    assert 0 < sizes[-1] <= batch_size


@pytest.mark.parametrize("batch_size", [1000, 777, 65_536])
@pytest.mark.parametrize("from_seq", [1, 6_399, 6_400, 123_457, 621_186])
def test_read_when_seeking_to_a_seq_matches_reading_from_zero(
    eurusd_replay: ReplaySource, whole: dict[str, np.ndarray], from_seq: int, batch_size: int
) -> None:
    seeked = collect(eurusd_replay.read(["EURUSD"], from_seq=from_seq, batch_size=batch_size))
    assert seeked["seq0"][0] == from_seq
    for field in FIELDS:
        np.testing.assert_array_equal(seeked[field], whole[field][from_seq:])


def test_read_when_from_seq_equals_tick_count_yields_nothing(eurusd_replay: ReplaySource) -> None:
    end = eurusd_replay.tick_count(["EURUSD"])
    assert list(eurusd_replay.read(["EURUSD"], from_seq=end)) == []


def test_read_when_from_seq_beyond_tick_count_raises_value_error_at_call(
    eurusd_replay: ReplaySource,
) -> None:
    end = eurusd_replay.tick_count(["EURUSD"])
    with pytest.raises(ValueError, match="from_seq"):
        eurusd_replay.read(["EURUSD"], from_seq=end + 1)
    with pytest.raises(ValueError, match="batch_size"):
        eurusd_replay.read(["EURUSD"], batch_size=0)


def test_source_when_symbol_unknown_raises_key_error(eurusd_replay: ReplaySource) -> None:
    with pytest.raises(KeyError, match="GBPUSD"):
        eurusd_replay.read(["GBPUSD"])
    with pytest.raises(KeyError):
        eurusd_replay.tick_count(["EURUSD", "XAUUSD"])
    with pytest.raises(KeyError):
        eurusd_replay.bars("USDJPY")


def test_read_when_symbols_not_sorted_or_repeated_raises_value_error(pair: ReplaySource) -> None:
    with pytest.raises(ValueError, match="sorted and distinct"):
        pair.read(["GBPUSD", "EURUSD"])
    with pytest.raises(ValueError, match="sorted and distinct"):
        pair.tick_count(["EURUSD", "EURUSD"])


def test_read_when_whole_replay_memory_peak_stays_far_below_the_history(
    eurusd_replay: ReplaySource,
) -> None:
    total = eurusd_replay.tick_count(["EURUSD"])
    history_bytes = total * (4 + 8 + 8 + 8 + 8)  # one row of TickColumns
    tracemalloc.start()
    try:
        rows = sum(len(batch) for batch in eurusd_replay.read(["EURUSD"], batch_size=1000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows == total
    assert peak < history_bytes / 10


def test_read_when_two_symbols_orders_by_time_then_symbol_index(pair: ReplaySource) -> None:
    merged = collect(pair.read(["EURUSD", "GBPUSD"], batch_size=999))
    assert len(merged["ask"]) == pair.tick_count(["EURUSD", "GBPUSD"])
    t, s = merged["time_msc"], merged["symbol_index"].astype(np.int64)
    assert np.all((np.diff(t) > 0) | ((np.diff(t) == 0) & (np.diff(s) > 0)))
    assert set(np.unique(s)) == {0, 1}
    assert np.all(merged["ask"] > merged["bid"])


def test_read_when_two_symbols_each_symbol_keeps_its_own_stream(pair: ReplaySource) -> None:
    merged = collect(pair.read(["EURUSD", "GBPUSD"]))
    assert pair.tick_count(["EURUSD", "GBPUSD"]) == pair.tick_count(["EURUSD"]) + pair.tick_count(
        ["GBPUSD"]
    )
    for index, name in enumerate(["EURUSD", "GBPUSD"]):
        alone = collect(pair.read([name]))
        mine = merged["symbol_index"] == index
        for field in ("time_msc", "bid", "ask", "volume"):
            np.testing.assert_array_equal(merged[field][mine], alone[field])


@pytest.mark.parametrize("batch_size", [1000, 333])
@pytest.mark.parametrize("from_seq", [1, 5_000, 12_345, 29_999])
def test_read_when_two_symbols_seeked_matches_reading_from_zero(
    pair: ReplaySource, from_seq: int, batch_size: int
) -> None:
    names = ["EURUSD", "GBPUSD"]
    whole = collect(pair.read(names))
    seeked = collect(pair.read(names, from_seq=from_seq, batch_size=batch_size))
    assert seeked["seq0"][0] == from_seq
    for field in FIELDS:
        np.testing.assert_array_equal(seeked[field], whole[field][from_seq:])
    end = pair.tick_count(names)
    assert list(pair.read(names, from_seq=end)) == []


def test_replay_when_symbols_bars_are_off_a_common_hour_grid_raises_value_error() -> None:
    bars = load_h1_bars().slice_time(0, 1_483_400_000_000)
    shifted = Bars(
        bars.time_ms + 1_800_000, bars.open, bars.high, bars.low, bars.close, bars.tick_volume
    )
    with pytest.raises(ValueError, match="common H1 grid"):
        ReplaySource({"EURUSD": (EURUSD, bars), "GBPUSD": (GBPUSD, shifted)})


def test_replay_when_key_differs_from_symbol_name_raises_value_error() -> None:
    with pytest.raises(ValueError, match="differs"):
        ReplaySource({"EURUSD": (GBPUSD, load_h1_bars())})

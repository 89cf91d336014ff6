"""The bar-to-tick generator, on the shipped EUR/USD bars and on hand-made edge cases."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from quantmesh.datasets import load_h1_bars
from quantmesh.services.marketdata.sources import Bars
from quantmesh.services.marketdata.ticks import H1_MS, BarTickGenerator

T0 = 1_483_308_000_000  # 2017-01-01T22:00:00Z


@dataclass(frozen=True)
class Ticks:
    time_msc: np.ndarray
    ask: np.ndarray
    bid: np.ndarray
    volume: np.ndarray


def generate_all(generator: BarTickGenerator) -> Ticks:
    chunks = [generator.chunk(c) for c in range(generator.n_chunks)]
    return Ticks(
        *(np.concatenate([getattr(ch, f) for ch in chunks]) for f in Ticks.__annotations__)
    )


def make_bars(rows: list[tuple[int, int, int, int, float]]) -> Bars:
    """Hourly bars from (open, high, low, close, volume) rows, starting at T0."""
    o, h, lo, c, v = (np.array(column) for column in zip(*rows, strict=True))
    time_ms = T0 + H1_MS * np.arange(len(rows), dtype=np.int64)
    return Bars(time_ms, o.astype(np.int64), h.astype(np.int64), lo.astype(np.int64), c, v * 1.0)


@pytest.fixture(scope="module")
def eurusd_bars() -> Bars:
    return load_h1_bars()


@pytest.fixture(scope="module")
def generator(eurusd_bars: Bars) -> BarTickGenerator:
    return BarTickGenerator(eurusd_bars, seed=7, stream=1, spread_points=12)


@pytest.fixture(scope="module")
def ticks(generator: BarTickGenerator) -> Ticks:
    return generate_all(generator)


def test_generate_when_real_data_every_bar_opens_closes_and_touches_high_and_low(
    generator: BarTickGenerator, ticks: Ticks, eurusd_bars: Bars
) -> None:
    first, last = generator.first_seq[:-1], generator.first_seq[1:] - 1
    np.testing.assert_array_equal(ticks.ask[first], eurusd_bars.open)
    np.testing.assert_array_equal(ticks.ask[last], eurusd_bars.close)
    np.testing.assert_array_equal(np.maximum.reduceat(ticks.ask, first), eurusd_bars.high)
    np.testing.assert_array_equal(np.minimum.reduceat(ticks.ask, first), eurusd_bars.low)


def test_generate_when_real_data_times_strictly_increase_inside_each_bar_hour(
    generator: BarTickGenerator, ticks: Ticks, eurusd_bars: Bars
) -> None:
    assert np.all(np.diff(ticks.time_msc) > 0)
    bar_open = np.repeat(eurusd_bars.time_ms, generator.counts)
    assert np.all(ticks.time_msc >= bar_open)
    assert np.all(ticks.time_msc < bar_open + H1_MS)
    np.testing.assert_array_equal(ticks.time_msc[generator.first_seq[:-1]], eurusd_bars.time_ms)


def test_generate_when_real_data_spread_is_at_least_one_point_around_typical(
    ticks: Ticks,
) -> None:
    spread = ticks.ask - ticks.bid
    assert spread.min() >= 1
    assert np.median(spread) == 12


def test_generate_when_real_data_tick_volumes_sum_to_bar_volume(
    generator: BarTickGenerator, ticks: Ticks, eurusd_bars: Bars
) -> None:
    sums = np.add.reduceat(ticks.volume, generator.first_seq[:-1])
    np.testing.assert_allclose(sums, eurusd_bars.tick_volume, rtol=1e-12)
    assert np.all(ticks.volume >= 0)


def test_counts_when_bar_volume_is_higher_give_more_ticks_and_at_least_four(
    generator: BarTickGenerator, eurusd_bars: Bars
) -> None:
    counts = generator.counts
    assert counts.min() >= 4
    assert counts.mean() == pytest.approx(100, rel=0.05)
    assert np.corrcoef(counts, eurusd_bars.tick_volume)[0, 1] > 0.95


def test_counts_when_known_before_generation_match_generated_chunk_lengths(
    generator: BarTickGenerator,
) -> None:
    for c in (0, 1, generator.n_chunks // 2, generator.n_chunks - 1):
        b0, b1 = generator.chunk_bounds(c)
        chunk = generator.chunk(c)
        assert len(chunk) == generator.counts[b0:b1].sum()
        assert chunk.first_seq == generator.first_seq[b0]
    assert generator.total == generator.counts.sum() == generator.first_seq[-1]


def test_generate_when_real_data_both_orders_of_extremes_occur(
    generator: BarTickGenerator, ticks: Ticks, eurusd_bars: Bars
) -> None:
    bar = np.repeat(np.arange(len(eurusd_bars)), generator.counts)
    row = np.arange(len(ticks.ask))
    big = np.iinfo(np.int64).max
    at_high = np.where(ticks.ask == eurusd_bars.high[bar], row, big)
    at_low = np.where(ticks.ask == eurusd_bars.low[bar], row, big)
    high_first = np.minimum.reduceat(at_high, generator.first_seq[:-1]) < np.minimum.reduceat(
        at_low, generator.first_seq[:-1]
    )
    assert 0.4 < high_first.mean() < 0.6


def test_chunk_when_generated_out_of_order_is_bit_identical(
    generator: BarTickGenerator, ticks: Ticks
) -> None:
    for c in (57, 3, generator.n_chunks - 1, 0):
        chunk = generator.chunk(c)
        rows = slice(chunk.first_seq, chunk.first_seq + len(chunk))
        np.testing.assert_array_equal(chunk.time_msc, ticks.time_msc[rows])
        np.testing.assert_array_equal(chunk.ask, ticks.ask[rows])
        np.testing.assert_array_equal(chunk.bid, ticks.bid[rows])
        np.testing.assert_array_equal(chunk.volume, ticks.volume[rows])


def test_generate_when_same_seed_twice_identical_and_other_seed_different(
    eurusd_bars: Bars, ticks: Ticks
) -> None:
    again = generate_all(BarTickGenerator(eurusd_bars, seed=7, stream=1, spread_points=12))
    other = BarTickGenerator(eurusd_bars, seed=8, stream=1, spread_points=12)
    for field in Ticks.__annotations__:
        np.testing.assert_array_equal(getattr(again, field), getattr(ticks, field))
    assert np.any(other.counts != BarTickGenerator(eurusd_bars, seed=7, stream=1).counts)


def test_chunks_when_from_seq_inside_a_chunk_start_exactly_there(
    generator: BarTickGenerator, ticks: Ticks
) -> None:
    from_seq = int(generator.first_seq[200]) + 3
    first = next(generator.chunks(from_seq))
    assert first.first_seq == from_seq
    np.testing.assert_array_equal(first.ask, ticks.ask[from_seq : from_seq + len(first)])
    assert list(generator.chunks(generator.total)) == []


def test_generate_when_bar_is_flat_every_tick_sits_at_its_price() -> None:
    bars = make_bars([(100_000, 100_000, 100_000, 100_000, 5.0)] * 3)
    out = generate_all(BarTickGenerator(bars, seed=1, mean_ticks_per_bar=50))
    assert np.all(out.ask == 100_000)
    assert np.all(out.ask - out.bid >= 1)


def test_generate_when_open_is_high_and_close_is_low_keeps_the_bar_exactly() -> None:
    rows = [(100_050, 100_050, 99_950, 99_950, 1.0), (99_950, 100_000, 99_900, 100_000, 3.0)]
    bars = make_bars(rows)
    gen = BarTickGenerator(bars, seed=3, mean_ticks_per_bar=30)
    out = generate_all(gen)
    first = gen.first_seq[:-1]
    np.testing.assert_array_equal(out.ask[first], bars.open)
    np.testing.assert_array_equal(out.ask[gen.first_seq[1:] - 1], bars.close)
    np.testing.assert_array_equal(np.maximum.reduceat(out.ask, first), bars.high)
    np.testing.assert_array_equal(np.minimum.reduceat(out.ask, first), bars.low)


def test_generate_when_all_volumes_are_zero_every_bar_still_gets_ticks() -> None:
    bars = make_bars([(100_000, 100_010, 99_990, 100_005, 0.0)] * 5)
    gen = BarTickGenerator(bars, seed=2, mean_ticks_per_bar=20)
    out = generate_all(gen)
    assert gen.counts.min() >= 4
    assert np.all(out.volume == 0)


def test_generator_when_bars_open_less_than_an_hour_apart_raises_value_error() -> None:
    bars = make_bars([(100_000, 100_010, 99_990, 100_005, 1.0)] * 2)
    overlapping = Bars(
        bars.time_ms - np.array([0, 60_000]),
        bars.open,
        bars.high,
        bars.low,
        bars.close,
        bars.tick_volume,
    )
    with pytest.raises(ValueError, match="opens less than"):
        BarTickGenerator(overlapping, seed=0)


def test_generator_when_high_below_close_raises_value_error() -> None:
    with pytest.raises(ValueError, match="bar 0 breaks"):
        BarTickGenerator(make_bars([(100_000, 100_010, 99_990, 100_020, 1.0)]), seed=0)

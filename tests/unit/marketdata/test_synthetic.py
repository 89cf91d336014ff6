"""The synthetic source: correlated walks, seeking, subsets, bars and memory."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterable
from itertools import pairwise

import numpy as np
import pytest

from quantmesh.services.marketdata.sources import EURUSD, GBPUSD, TickColumns, TickSource
from quantmesh.services.marketdata.synthetic import MARKET_YEAR_MS, SyntheticSource

ALL = ["EURGBP", "EURUSD", "GBPUSD", "USDJPY"]
FIELDS = ("symbol_index", "time_msc", "bid", "ask", "volume")
HOUR_MS = 3_600_000


def collect(batches: Iterable[TickColumns]) -> dict[str, np.ndarray]:
    parts = list(batches)
    for before, after in pairwise(parts):
        assert after.seq == before.seq + len(before)
    out = {f: np.concatenate([getattr(p, f) for p in parts]) for f in FIELDS}
    out["seq0"] = np.array([parts[0].seq])
    return out


def mid_log_returns(source: SyntheticSource, names: list[str]) -> np.ndarray:
    """(steps - 1, symbols) log-returns of the mid quote."""
    ticks = collect(source.read(names))
    mid = (ticks["ask"] + ticks["bid"]).reshape(-1, len(names)) / 2.0
    return np.diff(np.log(mid), axis=0)


@pytest.fixture(scope="module")
def small() -> SyntheticSource:
    # chunk_steps 1000 does not divide the 14,400 steps of an hour: bars span chunk edges.
    return SyntheticSource(duration_ms=2 * HOUR_MS + 1_000, chunk_steps=1000)


@pytest.fixture(scope="module")
def small_all(small: SyntheticSource) -> dict[str, np.ndarray]:
    return collect(small.read(ALL))


def test_synthetic_when_default_serves_four_symbols_with_metadata() -> None:
    source = SyntheticSource()
    assert isinstance(source, TickSource)
    assert source.name == "synthetic"
    by_name = {s.name: s for s in source.symbols}
    assert list(by_name) == ALL
    assert by_name["USDJPY"].digits == 3
    assert (by_name["EURGBP"].currency_base, by_name["EURGBP"].currency_profit) == ("EUR", "GBP")
    assert source.tick_count(ALL) == 5 * 24 * 3600 * 4 * 4  # a market week of 250 ms steps


def test_read_when_all_symbols_every_step_quotes_each_symbol_in_index_order(
    small: SyntheticSource, small_all: dict[str, np.ndarray]
) -> None:
    assert len(small_all["ask"]) == small.tick_count(ALL) == small.n_steps * 4
    assert small_all["seq0"][0] == 0
    index = small_all["symbol_index"].reshape(-1, 4)
    assert np.all(index == np.arange(4))
    times = small_all["time_msc"].reshape(-1, 4)
    assert np.all(times == times[:, :1])
    assert np.all(np.diff(times[:, 0]) == 250)
    assert np.all(small_all["ask"] - small_all["bid"] >= 1)
    assert np.all(small_all["volume"] == 1.0)


def test_read_when_first_step_quotes_the_start_prices(small_all: dict[str, np.ndarray]) -> None:
    mid = (small_all["ask"][:4] + small_all["bid"][:4]) / 2
    np.testing.assert_allclose(mid, [86_000, 110_000, 127_000, 150_000], atol=1)


@pytest.mark.parametrize("batch_size", [1000, 4093])
@pytest.mark.parametrize("from_seq", [1, 3_999, 4_000, 57_601, 115_203])
def test_read_when_seeking_to_a_seq_matches_reading_from_zero(
    small_all: dict[str, np.ndarray], from_seq: int, batch_size: int
) -> None:
    fresh = SyntheticSource(duration_ms=2 * HOUR_MS + 1_000, chunk_steps=1000)
    seeked = collect(fresh.read(ALL, from_seq=from_seq, batch_size=batch_size))
    assert seeked["seq0"][0] == from_seq
    sizes = [len(b) for b in fresh.read(ALL, from_seq=from_seq, batch_size=batch_size)]
    assert all(size == batch_size for size in sizes[:-1])
    for field in FIELDS:
        np.testing.assert_array_equal(seeked[field], small_all[field][from_seq:])


def test_read_when_subset_subscribed_prices_equal_the_full_streams_columns(
    small: SyntheticSource, small_all: dict[str, np.ndarray]
) -> None:
    subset = collect(small.read(["EURUSD", "USDJPY"]))
    assert len(subset["ask"]) == small.tick_count(["EURUSD", "USDJPY"]) == small.n_steps * 2
    np.testing.assert_array_equal(subset["symbol_index"].reshape(-1, 2), [[0, 1]] * small.n_steps)
    for field in ("time_msc", "bid", "ask"):
        full = small_all[field].reshape(-1, 4)[:, [1, 3]]
        np.testing.assert_array_equal(subset[field].reshape(-1, 2), full)


def test_read_when_from_seq_is_the_end_yields_nothing_and_beyond_raises(
    small: SyntheticSource,
) -> None:
    end = small.tick_count(["GBPUSD"])
    assert list(small.read(["GBPUSD"], from_seq=end)) == []
    with pytest.raises(ValueError, match="from_seq"):
        small.read(["GBPUSD"], from_seq=end + 1)
    with pytest.raises(KeyError):
        small.read(["XAUUSD"])


@pytest.mark.parametrize("rho", [0.6, -0.2, 0.0])
def test_returns_when_one_rho_configured_have_that_empirical_correlation(rho: float) -> None:
    source = SyntheticSource(correlation=rho, tick_ms=60_000, duration_ms=30 * 86_400_000)
    corr = np.corrcoef(mid_log_returns(source, ALL), rowvar=False)
    off_diagonal = corr[~np.eye(4, dtype=bool)]
    np.testing.assert_allclose(off_diagonal, rho, atol=0.03)


def test_returns_when_full_matrix_configured_match_it_in_generation_order() -> None:
    # Rows and columns follow the instruments' order: EURUSD, GBPUSD, USDJPY, EURGBP.
    matrix = np.array(
        [
            [1.0, 0.7, -0.3, 0.4],
            [0.7, 1.0, -0.2, -0.3],
            [-0.3, -0.2, 1.0, 0.0],
            [0.4, -0.3, 0.0, 1.0],
        ]
    )
    source = SyntheticSource(correlation=matrix, tick_ms=60_000, duration_ms=30 * 86_400_000)
    names = ["EURUSD", "GBPUSD", "USDJPY", "EURGBP"]
    returns = mid_log_returns(source, ALL)[:, [ALL.index(n) for n in names]]
    np.testing.assert_allclose(np.corrcoef(returns, rowvar=False), matrix, atol=0.03)


def test_returns_when_volatility_configured_annualise_back_to_it() -> None:
    source = SyntheticSource(
        annual_volatility=[0.05, 0.10, 0.15, 0.20], tick_ms=60_000, duration_ms=30 * 86_400_000
    )
    returns = mid_log_returns(source, ALL)
    annualised = returns.std(axis=0) * np.sqrt(MARKET_YEAR_MS / 60_000)
    expected = {"EURUSD": 0.05, "GBPUSD": 0.10, "USDJPY": 0.15, "EURGBP": 0.20}
    np.testing.assert_allclose(annualised, [expected[n] for n in ALL], rtol=0.05)


@pytest.mark.parametrize(
    ("correlation", "message"),
    [
        (
            [[1.0, 0.9, -0.9, 0], [0.9, 1.0, 0.9, 0], [-0.9, 0.9, 1.0, 0], [0, 0, 0, 1.0]],
            "positive",
        ),
        (-0.5, "positive definite"),
        (1.0, "positive definite"),
        ([[1.0, 0.5], [0.5, 1.0]], "4x4"),
        ([[1.0, 0.5, 0, 0], [0.4, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]], "symmetric"),
        ([[2.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]], "unit diagonal"),
        (float("nan"), "finite"),
    ],
)
def test_synthetic_when_correlation_is_invalid_raises_value_error(
    correlation: float | list[list[float]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        SyntheticSource(correlation=correlation)


def test_bars_when_aggregated_match_the_hourly_ask_ticks(
    small: SyntheticSource, small_all: dict[str, np.ndarray]
) -> None:
    ask = small_all["ask"].reshape(-1, 4)
    hour = small_all["time_msc"].reshape(-1, 4)[:, 0] // HOUR_MS
    starts = np.flatnonzero(np.r_[True, np.diff(hour) != 0])
    ends = np.r_[starts[1:], len(hour)] - 1
    for j, name in enumerate(ALL):
        bars = small.bars(name)
        assert len(bars) == 3  # two full hours and one second of a third
        np.testing.assert_array_equal(bars.time_ms, hour[starts] * HOUR_MS)
        np.testing.assert_array_equal(bars.open, ask[starts, j])
        np.testing.assert_array_equal(bars.close, ask[ends, j])
        np.testing.assert_array_equal(bars.high, np.maximum.reduceat(ask[:, j], starts))
        np.testing.assert_array_equal(bars.low, np.minimum.reduceat(ask[:, j], starts))
        np.testing.assert_array_equal(bars.tick_volume, np.diff(np.r_[starts, len(hour)]))


def test_read_when_a_day_is_streamed_memory_peak_stays_far_below_the_history() -> None:
    source = SyntheticSource(instruments=[(EURUSD, 1.1), (GBPUSD, 1.27)], duration_ms=86_400_000)
    names = ["EURUSD", "GBPUSD"]
    total = source.tick_count(names)
    history_bytes = total * (4 + 8 + 8 + 8 + 8)
    tracemalloc.start()
    try:
        rows = sum(len(batch) for batch in source.read(names, batch_size=1000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows == total
    assert peak < history_bytes / 20

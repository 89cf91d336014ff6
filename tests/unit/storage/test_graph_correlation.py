"""Rolling correlation of log returns, on series crafted so the answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from quantmesh.runtime.errors import InvalidArgument
from quantmesh.services.marketdata.sources import Bars
from quantmesh.storage.graph import SymbolEdge, open_graph
from quantmesh.storage.graph.correlation import (
    align_closes,
    latest_correlations,
    log_returns,
    rolling_correlation,
    update_correlations,
    update_from_bars,
)

EPS = 1e-3  # returns of a tenth of a percent, like an hourly major


def closes(returns: np.ndarray, start: float = 1.1) -> np.ndarray:
    """Closes whose log returns are exactly ``returns`` (up to float rounding)."""
    series: np.ndarray = start * np.exp(np.concatenate([[0.0], np.cumsum(returns)]))
    return series


RNG = np.random.default_rng(7)
BASE = RNG.normal(0.0, EPS, 400)


def test_log_returns_recover_the_crafted_returns() -> None:
    np.testing.assert_allclose(log_returns(closes(BASE)), BASE, rtol=0, atol=1e-13)
    with pytest.raises(InvalidArgument, match="positive"):
        log_returns([1.1, 0.0, 1.2])


def test_perfectly_correlated_and_anti_correlated_series() -> None:
    a = closes(BASE)
    twice = closes(2 * BASE, start=150.0)  # same moves, twice as big: still r = +1
    mirror = closes(-BASE, start=0.9)
    window = 50
    r_same = rolling_correlation(a, twice, window)
    r_anti = rolling_correlation(a, mirror, window)
    assert len(r_same) == len(a)
    assert np.isnan(r_same[:window]).all()  # fewer than `window` returns so far
    np.testing.assert_allclose(r_same[window:], 1.0, atol=1e-9)
    np.testing.assert_allclose(r_anti[window:], -1.0, atol=1e-9)


def test_orthogonal_series_have_zero_correlation_in_every_window() -> None:
    # a: + − + − …, b: + + − − …; over any four consecutive returns both have mean 0 and
    # Σ a·b = 1·1 + (−1)·1 + 1·(−1) + (−1)·(−1) = 0, so r = 0 in every window of 4k.
    a = EPS * np.tile([1.0, -1.0, 1.0, -1.0], 50)
    b = EPS * np.tile([1.0, 1.0, -1.0, -1.0], 50)
    r = rolling_correlation(closes(a), closes(b), window=8)
    np.testing.assert_allclose(r[8:], 0.0, atol=1e-9)


def test_a_window_worked_by_hand() -> None:
    # returns a = (1, 2, 3)·ε, b = (1, 3, 2)·ε; deviations from the means (2ε):
    # a (−1, 0, 1), b (−1, 1, 0); Σ da·db = 1, Σ da² = 2, Σ db² = 2; r = 1 / √(2·2) = 0.5.
    r = rolling_correlation(
        closes(EPS * np.array([1.0, 2, 3])), closes(EPS * np.array([1.0, 3, 2])), 3
    )
    assert np.isnan(r[:3]).all()
    assert r[3] == pytest.approx(0.5, abs=1e-9)


def test_rolling_matches_numpy_corrcoef_at_every_bar() -> None:
    other = 0.6 * BASE + RNG.normal(0.0, EPS, len(BASE))
    window = 30
    r = rolling_correlation(closes(BASE), closes(other), window)
    ra, rb = log_returns(closes(BASE)), log_returns(closes(other))
    for t in range(window, len(BASE) + 1):
        expected = np.corrcoef(ra[t - window : t], rb[t - window : t])[0, 1]
        assert r[t] == pytest.approx(expected, abs=1e-12)


def test_flat_series_has_no_correlation() -> None:
    flat = np.full(60, 1.25)
    r = rolling_correlation(closes(BASE[:59]), flat, 20)
    assert np.isnan(r).all()
    pairs = latest_correlations({"EURUSD": closes(BASE[:59]), "GBPUSD": flat}, 20)
    assert pairs == {}


def test_latest_correlations_of_three_symbols() -> None:
    a = closes(BASE)
    pairs = latest_correlations(
        {"GBPUSD": closes(2 * BASE), "EURUSD": a, "USDJPY": closes(-BASE)}, window=40
    )
    assert set(pairs) == {("EURUSD", "GBPUSD"), ("EURUSD", "USDJPY"), ("GBPUSD", "USDJPY")}
    assert pairs["EURUSD", "GBPUSD"] == pytest.approx(1.0, abs=1e-9)
    assert pairs["EURUSD", "USDJPY"] == pytest.approx(-1.0, abs=1e-9)
    with pytest.raises(InvalidArgument, match="fewer than a window"):
        latest_correlations({"EURUSD": a[:10], "GBPUSD": a[:10]}, window=40)
    with pytest.raises(InvalidArgument, match="different lengths"):
        latest_correlations({"EURUSD": a, "GBPUSD": a[:-1]}, window=40)


def test_update_correlations_weights_the_graph_edges() -> None:
    graph = open_graph("memory://")
    graph.upsert_symbol(SymbolEdge("EURUSD", "EUR", "USD"))
    graph.upsert_symbol(SymbolEdge("GBPUSD", "GBP", "USD"))
    graph.upsert_symbol(SymbolEdge("USDJPY", "USD", "JPY"))
    written = update_correlations(
        graph,
        {"EURUSD": closes(BASE), "GBPUSD": closes(2 * BASE), "USDJPY": closes(-BASE)},
        window=40,
        updated_ms=1_700_000_000_000,
    )
    assert [edge.symbol for edge in written] == ["EURUSD", "GBPUSD", "USDJPY"]
    assert graph.correlation("EURUSD", "GBPUSD") == pytest.approx(1.0, abs=1e-9)
    assert graph.correlation("USDJPY", "EURUSD") == pytest.approx(-1.0, abs=1e-9)
    edge = {e.symbol: e for e in graph.symbols()}["GBPUSD"]
    assert (edge.base, edge.quote, edge.updated_ms) == ("GBP", "USD", 1_700_000_000_000)
    with pytest.raises(InvalidArgument, match="not in the currency graph: EURGBP"):
        update_correlations(graph, {"EURGBP": closes(BASE)}, window=40, updated_ms=0)
    graph.close()


def _bars(times: list[int], points: np.ndarray) -> Bars:
    zeros = np.zeros(len(times))
    t = np.array(times, dtype=np.int64)
    p = points.astype(np.int64)
    return Bars(t, p, p, p, p, zeros)


def test_bars_align_on_shared_times_before_correlating() -> None:
    hour = 3_600_000
    # EURUSD misses the bar at hour 2; USDJPY has an extra one at hour 7. Closes in points.
    eur = _bars(
        [0, hour, 3 * hour, 4 * hour, 5 * hour, 6 * hour],
        np.array([110_000, 110_110, 110_000, 110_220, 110_110, 110_330]),
    )
    jpy = _bars(
        [0, hour, 2 * hour, 3 * hour, 4 * hour, 5 * hour, 6 * hour, 7 * hour],
        np.array([150_000, 149_850, 1, 150_000, 149_700, 149_850, 149_550, 150_000]),
    )
    times, aligned = align_closes({"EURUSD": eur, "USDJPY": jpy})
    assert times.tolist() == [0, hour, 3 * hour, 4 * hour, 5 * hour, 6 * hour]
    assert aligned["USDJPY"].tolist() == [150_000, 149_850, 150_000, 149_700, 149_850, 149_550]
    graph = open_graph("memory://")
    graph.upsert_symbol(SymbolEdge("EURUSD", "EUR", "USD"))
    graph.upsert_symbol(SymbolEdge("USDJPY", "USD", "JPY"))
    (first, _) = update_from_bars(graph, {"EURUSD": eur, "USDJPY": jpy}, window=5)
    assert first.updated_ms == 6 * hour
    # EURUSD rises by 0.1 % when USDJPY falls by 0.1 % and back (the lone bar at hour 2,
    # 1 point, would have swamped everything had it not been dropped): close to −1.
    assert graph.correlation("EURUSD", "USDJPY") == pytest.approx(-1.0, abs=0.01)
    graph.close()

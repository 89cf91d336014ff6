"""Streaming indicators against plain-loop references, on random and real data."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from quantmesh.datasets import load_h1_bars
from quantmesh.services.features.indicators import (
    RollingStats,
    SeededEma,
    Trailing,
    WilderDmi,
    WilderRsi,
    ema,
    last_windows,
    rolling_std,
    rolling_zscore,
    safe_ratio,
    wilder_atr,
    wilder_rsi,
)

NAN = float("nan")

# ---------------------------------------------------------------------------------------
# References: the textbook definitions, one bar at a time, in plain Python.


def ref_ema(x: list[float], n: int, alpha: float | None = None) -> list[float]:
    a = 2.0 / (n + 1) if alpha is None else alpha
    out = [NAN] * len(x)
    if len(x) < n:
        return out
    y = sum(x[:n]) / n
    out[n - 1] = y
    for i in range(n, len(x)):
        y = a * x[i] + (1.0 - a) * y
        out[i] = y
    return out


def ref_rsi(close: list[float], n: int = 14) -> list[float]:
    """Wilder's RSI / 100, in the classic ``(avg * (n - 1) + x) / n`` form."""
    out = [NAN] * len(close)
    gains = [max(b - a, 0.0) for a, b in itertools.pairwise(close)]
    losses = [max(a - b, 0.0) for a, b in itertools.pairwise(close)]
    if len(gains) < n:
        return out
    g, lo = sum(gains[:n]) / n, sum(losses[:n]) / n
    for i in range(n, len(close)):
        if i > n:
            g = (g * (n - 1) + gains[i - 1]) / n
            lo = (lo * (n - 1) + losses[i - 1]) / n
        out[i] = 0.5 if g + lo == 0 else 1.0 - 1.0 / (1.0 + g / lo) if lo else 1.0
    return out


def ref_true_range(h: list[float], lo: list[float], c: list[float]) -> list[float]:
    return [NAN] + [
        max(h[i] - lo[i], abs(h[i] - c[i - 1]), abs(lo[i] - c[i - 1])) for i in range(1, len(c))
    ]


def ref_atr(h: list[float], lo: list[float], c: list[float], n: int = 14) -> list[float]:
    tr = ref_true_range(h, lo, c)
    out = [NAN] * len(c)
    if len(c) <= n:
        return out
    atr = sum(tr[1 : n + 1]) / n
    out[n] = atr
    for i in range(n + 1, len(c)):
        atr = (atr * (n - 1) + tr[i]) / n
        out[i] = atr
    return out


def ref_adx(h: list[float], lo: list[float], c: list[float], n: int = 14) -> list[float]:
    """Wilder's ADX / 100 with his running *sums* (TR14, +DM14, -DM14)."""
    tr = ref_true_range(h, lo, c)
    plus, minus = [NAN], [NAN]
    for i in range(1, len(c)):
        up, down = h[i] - h[i - 1], lo[i - 1] - lo[i]
        plus.append(up if up > down and up > 0 else 0.0)
        minus.append(down if down > up and down > 0 else 0.0)
    out = [NAN] * len(c)
    if len(c) <= n:
        return out
    tr_n, plus_n, minus_n = sum(tr[1 : n + 1]), sum(plus[1 : n + 1]), sum(minus[1 : n + 1])
    dx: list[float] = []
    adx = NAN
    for i in range(n, len(c)):
        if i > n:
            tr_n = tr_n - tr_n / n + tr[i]
            plus_n = plus_n - plus_n / n + plus[i]
            minus_n = minus_n - minus_n / n + minus[i]
        pdi = plus_n / tr_n if tr_n else 0.0
        mdi = minus_n / tr_n if tr_n else 0.0
        dx.append(abs(pdi - mdi) / (pdi + mdi) if pdi + mdi else 0.0)
        if len(dx) == n:
            adx = sum(dx) / n
        elif len(dx) > n:
            adx = (adx * (n - 1) + dx[-1]) / n
        out[i] = adx
    return out


def ref_rolling_std(x: list[float], w: int, ddof: int) -> list[float]:
    out = [NAN] * len(x)
    for i in range(w - 1, len(x)):
        window = x[i - w + 1 : i + 1]
        mean = sum(window) / w
        out[i] = math.sqrt(sum((v - mean) ** 2 for v in window) / (w - ddof))
    return out


def ref_zscore(x: list[float], w: int) -> list[float]:
    out = [NAN] * len(x)
    for i in range(w - 1, len(x)):
        window = x[i - w + 1 : i + 1]
        mean = sum(window) / w
        std = math.sqrt(sum((v - mean) ** 2 for v in window) / w)
        out[i] = 0.0 if std == 0 else (x[i] - mean) / std
    return out


# ---------------------------------------------------------------------------------------
# Data: a random walk (with flat stretches and NaN-free) and the shipped EUR/USD bars.


def random_bars(seed: int, n: int = 600) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    close = 10_000 + np.cumsum(rng.integers(-30, 31, n)).astype(np.float64)
    close[100:130] = close[100]  # a flat stretch: zero gains and losses, zero ranges
    high = close + rng.integers(0, 20, n) * (np.arange(n) % 7 != 0)
    low = close - rng.integers(0, 20, n) * (np.arange(n) % 5 != 0)
    high[100:130], low[100:130] = close[100], close[100]
    return high, low, close


@pytest.fixture(scope="module")
def real() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    bars = load_h1_bars()
    return (
        bars.high.astype(np.float64),
        bars.low.astype(np.float64),
        bars.close.astype(np.float64),
    )


def datasets(real: tuple[np.ndarray, ...]) -> list[tuple[np.ndarray, ...]]:
    return [random_bars(1), random_bars(2, 200), real]


def assert_close(actual: np.ndarray, expected: list[float]) -> None:
    np.testing.assert_allclose(actual, np.array(expected), rtol=1e-9, atol=1e-12)
    assert np.array_equal(np.isnan(actual), np.isnan(np.array(expected)))


def random_splits(n: int, seed: int) -> list[slice]:
    rng = np.random.default_rng(seed)
    cuts = np.unique(np.concatenate(([0, n], rng.integers(0, n, n // 5))))
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(cuts)]


# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("period", [1, 3, 10, 30])
def test_ema_when_compared_to_loop_reference_matches(
    period: int, real: tuple[np.ndarray, ...]
) -> None:
    for _, _, close in datasets(real):
        assert_close(ema(close, period), ref_ema(close.tolist(), period))


def test_wilder_smoothing_when_compared_to_loop_reference_matches(
    real: tuple[np.ndarray, ...],
) -> None:
    for _, _, close in datasets(real):
        smoothed = SeededEma.wilder(14).update(close)
        assert_close(smoothed, ref_ema(close.tolist(), 14, 1 / 14))


def test_wilder_rsi_when_compared_to_loop_reference_matches(real: tuple[np.ndarray, ...]) -> None:
    for _, _, close in datasets(real):
        rsi = wilder_rsi(close, 14)
        assert_close(rsi, ref_rsi(close.tolist(), 14))
        assert np.isnan(rsi[:14]).all()
        assert ((rsi[14:] >= 0) & (rsi[14:] <= 1)).all()


def test_wilder_atr_when_compared_to_loop_reference_matches(real: tuple[np.ndarray, ...]) -> None:
    for high, low, close in datasets(real):
        atr = wilder_atr(high, low, close, 14)
        assert_close(atr, ref_atr(high.tolist(), low.tolist(), close.tolist(), 14))
        assert np.isnan(atr[:14]).all()
        assert np.isfinite(atr[14:]).all()


def test_wilder_adx_when_compared_to_loop_reference_with_sums_matches(
    real: tuple[np.ndarray, ...],
) -> None:
    for high, low, close in datasets(real):
        adx = WilderDmi(14).update(high, low, close).adx
        assert_close(adx, ref_adx(high.tolist(), low.tolist(), close.tolist(), 14))
        assert np.isnan(adx[:27]).all()
        assert np.isfinite(adx[27:]).all()


@pytest.mark.parametrize(("window", "ddof"), [(2, 0), (20, 0), (20, 1), (7, 1)])
def test_rolling_std_when_compared_to_loop_reference_matches(
    window: int, ddof: int, real: tuple[np.ndarray, ...]
) -> None:
    for _, _, close in datasets(real):
        log_returns = np.diff(np.log(close))
        for x in (close, log_returns):
            assert_close(rolling_std(x, window, ddof), ref_rolling_std(x.tolist(), window, ddof))


def test_rolling_zscore_when_compared_to_loop_reference_matches(
    real: tuple[np.ndarray, ...],
) -> None:
    for _, _, close in datasets(real):
        assert_close(rolling_zscore(close, 20), ref_zscore(close.tolist(), 20))


def test_rolling_zscore_when_window_is_flat_is_zero_not_nan() -> None:
    z = rolling_zscore(np.full(25, 1.2345), 20)
    assert np.isnan(z[:19]).all()
    assert (z[19:] == 0.0).all()


def test_rsi_when_closes_only_rise_is_one_and_when_flat_is_half() -> None:
    assert (wilder_rsi(np.arange(30.0))[14:] == 1.0).all()
    assert (wilder_rsi(np.arange(30.0)[::-1])[14:] == 0.0).all()
    assert (wilder_rsi(np.full(30, 5.0))[14:] == 0.5).all()


def test_seeded_ema_when_fewer_inputs_than_period_outputs_only_nan() -> None:
    smoother = SeededEma(10)
    assert np.isnan(smoother.update(np.arange(9.0))).all()
    assert not smoother.ready
    assert smoother.update(np.array([9.0]))[0] == 4.5  # the mean of 0..9
    assert smoother.ready


def test_seeded_ema_when_input_starts_with_nan_seeds_from_first_values() -> None:
    x = np.concatenate(([NAN, NAN, NAN], np.arange(1.0, 8.0)))
    out = SeededEma(3).update(x)
    assert np.isnan(out[:5]).all()
    assert out[5] == 2.0  # mean of 1, 2, 3
    assert_close(out[3:], ref_ema(x[3:].tolist(), 3))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_indicators_when_fed_in_random_splits_are_bit_identical(seed: int) -> None:
    high, low, close = random_bars(seed + 10, 500)
    whole_ema = SeededEma(10).update(close)
    whole_rsi = WilderRsi(14).update(close)
    whole_dmi = WilderDmi(14).update(high, low, close)
    whole_stats = RollingStats(20, 1).update(close)
    ema_s, rsi_s, dmi_s, stats_s = SeededEma(10), WilderRsi(14), WilderDmi(14), RollingStats(20, 1)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("ema", "rsi", "atr", "adx", "m", "s")}
    for part in random_splits(len(close), seed):
        parts["ema"].append(ema_s.update(close[part]))
        parts["rsi"].append(rsi_s.update(close[part]))
        dmi = dmi_s.update(high[part], low[part], close[part])
        parts["atr"].append(dmi.atr)
        parts["adx"].append(dmi.adx)
        mean, std = stats_s.update(close[part])
        parts["m"].append(mean)
        parts["s"].append(std)
    expected = {
        "ema": whole_ema,
        "rsi": whole_rsi,
        "atr": whole_dmi.atr,
        "adx": whole_dmi.adx,
        "m": whole_stats[0],
        "s": whole_stats[1],
    }
    for name, pieces in parts.items():
        joined = np.concatenate(pieces)
        assert np.array_equal(joined, expected[name], equal_nan=True), name


def test_trailing_when_extended_keeps_last_values_and_nan_before() -> None:
    trail = Trailing(3)
    assert np.isnan(trail.values).all()
    joined = trail.extend(np.array([1.0, 2.0]))
    assert np.array_equal(joined, [NAN, NAN, NAN, 1.0, 2.0], equal_nan=True)
    trail.extend(np.array([3.0, 4.0]))
    assert trail.values.tolist() == [2.0, 3.0, 4.0]
    assert trail.last == 4.0


def test_last_windows_when_asked_for_windows_ending_at_new_values_returns_them() -> None:
    joined = np.arange(10.0)
    assert last_windows(joined, 3, 2).tolist() == [[6.0, 7.0, 8.0], [7.0, 8.0, 9.0]]
    assert last_windows(joined, 3, 0).shape == (0, 3)
    with pytest.raises(ValueError, match="no 9 windows"):
        last_windows(joined, 3, 9)


def test_safe_ratio_when_denominator_is_zero_uses_fallback_and_keeps_nan() -> None:
    out = safe_ratio(np.array([1.0, 1.0, NAN]), np.array([2.0, 0.0, 1.0]), 0.5)
    assert np.array_equal(out, [0.5, 0.5, NAN], equal_nan=True)


def test_constructors_when_given_bad_parameters_raise() -> None:
    with pytest.raises(ValueError, match="period"):
        SeededEma(0)
    with pytest.raises(ValueError, match="alpha"):
        SeededEma(3, 1.5)
    with pytest.raises(ValueError, match="window"):
        RollingStats(3, 3)
    with pytest.raises(ValueError, match="size"):
        Trailing(0)


@pytest.mark.parametrize("alpha", [2 / 11, 2 / 31, 1 / 14, 1.0])
def test_seeded_ema_when_short_and_long_inputs_take_both_paths_bits_are_equal(
    alpha: float,
) -> None:
    rng = np.random.default_rng(9)
    x = rng.normal(0, 1, 2_000) * 10.0 ** rng.uniform(-6, 6, 2_000)
    long_path = SeededEma(5, alpha).update(x)  # one call, longer than the Python path takes
    short = SeededEma(5, alpha)
    short_path = np.concatenate([short.update(x[i : i + 3]) for i in range(0, len(x), 3)])
    assert np.array_equal(long_path.view(np.int64), short_path.view(np.int64))

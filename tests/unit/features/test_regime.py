"""Regime rules, precedence, warm-up, constructed markets and the shipped data."""

from __future__ import annotations

import numpy as np
import pytest

from quantmesh.datasets import load_h1_bars
from quantmesh.features.v1 import features_pb2
from quantmesh.services.features.engine import H1Features
from quantmesh.services.features.regime import (
    Regime,
    RegimeConfig,
    RegimeDetector,
    RegimeInputs,
    classify,
)

NAN = float("nan")
NEUTRAL = {
    "close": 100.0,
    "true_range": 1.0,
    "prior_atr": 1.0,
    "prior_high": 101.0,
    "prior_low": 99.0,
    "vol_rank": 0.5,
    "adx": 0.15,
    "plus_di": 0.2,
    "minus_di": 0.2,
    "ema_fast": 100.0,
    "ema_slow": 100.0,
}
UP = {"adx": 0.4, "plus_di": 0.3, "minus_di": 0.1, "ema_fast": 100.5, "ema_slow": 100.0}
DOWN = {"adx": 0.4, "plus_di": 0.1, "minus_di": 0.3, "ema_fast": 99.5, "ema_slow": 100.0}
BREAKOUT = {"close": 102.0, "true_range": 2.0}


def regime_of(**changes: float) -> Regime:
    values = {**NEUTRAL, **changes}
    inputs = RegimeInputs(**{k: np.array([v]) for k, v in values.items()})
    return Regime(int(classify(inputs)[0]))


def run(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    return H1Features().update(high, low, close)[1]


def noisy_market(center: np.ndarray, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Bars whose close wanders around ``center`` with random, stationary ranges."""
    rng = np.random.default_rng(seed)
    close = center + rng.normal(0, 8, len(center))
    high = np.maximum(close, center) + rng.uniform(2, 12, len(center))
    low = np.minimum(close, center) - rng.uniform(2, 12, len(center))
    return high, low, close


def test_regime_values_when_compared_to_the_proto_enum_match() -> None:
    for regime in Regime:
        assert features_pb2.Regime.Value(f"REGIME_{regime.name}") == regime.value
    assert len(Regime) == len(features_pb2.Regime.keys())


def test_classify_when_no_rule_fires_is_ranging() -> None:
    assert regime_of() is Regime.RANGING


@pytest.mark.parametrize("field", sorted(NEUTRAL))
def test_classify_when_any_input_is_nan_is_unspecified(field: str) -> None:
    assert regime_of(**{field: NAN}) is Regime.UNSPECIFIED


def test_classify_when_close_leaves_prior_range_with_expanding_range_is_breakout() -> None:
    assert regime_of(**BREAKOUT) is Regime.BREAKOUT
    assert regime_of(close=98.0, true_range=1.5) is Regime.BREAKOUT  # downwards, 1.5 ATR


def test_classify_when_close_leaves_range_without_range_expansion_is_not_breakout() -> None:
    assert regime_of(close=102.0, true_range=1.49) is Regime.RANGING
    assert regime_of(close=101.0, true_range=3.0) is Regime.RANGING  # at the high: inside


def test_classify_when_volatility_rank_is_extreme_is_high_or_low_volatility() -> None:
    assert regime_of(vol_rank=0.9) is Regime.HIGH_VOLATILITY
    assert regime_of(vol_rank=0.1) is Regime.LOW_VOLATILITY
    assert regime_of(vol_rank=0.89) is Regime.RANGING


def test_classify_when_adx_strong_and_directions_agree_is_trend() -> None:
    assert regime_of(**UP) is Regime.TREND_UP
    assert regime_of(**DOWN) is Regime.TREND_DOWN
    assert regime_of(**{**UP, "adx": 0.24}) is Regime.RANGING
    assert regime_of(**{**UP, "ema_fast": 99.0}) is Regime.RANGING  # DI and EMAs disagree


def test_classify_when_several_rules_fire_follows_documented_precedence() -> None:
    assert regime_of(**BREAKOUT, vol_rank=0.95, **UP) is Regime.BREAKOUT
    assert regime_of(vol_rank=0.95, **UP) is Regime.HIGH_VOLATILITY
    assert regime_of(vol_rank=0.05, **DOWN) is Regime.TREND_DOWN
    assert regime_of(vol_rank=0.05) is Regime.LOW_VOLATILITY


def test_classify_when_thresholds_configured_uses_them() -> None:
    inputs = RegimeInputs(**{k: np.array([v]) for k, v in {**NEUTRAL, "vol_rank": 0.8}.items()})
    assert classify(inputs, RegimeConfig(vol_high=0.75))[0] == Regime.HIGH_VOLATILITY


def test_config_when_thresholds_are_inconsistent_raises() -> None:
    with pytest.raises(ValueError, match="vol_low"):
        RegimeConfig(vol_low=0.6, vol_high=0.5)
    with pytest.raises(ValueError, match="window"):
        RegimeConfig(breakout_window=0)


def test_detector_when_warming_up_is_unspecified_until_the_documented_bar() -> None:
    bars = load_h1_bars()
    regime = run(bars.high, bars.low, bars.close)
    first = RegimeConfig().warmup_bars
    assert first == 115
    assert (regime[: first - 1] == Regime.UNSPECIFIED).all()
    assert (regime[first - 1 :] != Regime.UNSPECIFIED).all()


def test_detector_when_run_on_shipped_2017_bars_finds_every_regime() -> None:
    bars = load_h1_bars()
    regime = run(bars.high, bars.low, bars.close)
    counts = np.bincount(regime, minlength=7)
    assert (counts[1:] > 0.03 * len(regime)).all(), counts  # every regime, none marginal
    assert counts[Regime.RANGING] < 0.6 * len(regime)


@pytest.mark.parametrize(
    ("slope", "expected", "never"),
    [(6.0, Regime.TREND_UP, Regime.TREND_DOWN), (-6.0, Regime.TREND_DOWN, Regime.TREND_UP)],
)
def test_detector_when_market_drifts_steadily_is_mostly_trend(
    slope: float, expected: Regime, never: Regime
) -> None:
    t = np.arange(400)
    regime = run(*noisy_market(100_000 + slope * t))[150:]
    assert (regime == expected).mean() > 0.5
    assert not (regime == never).any()


def test_detector_when_market_oscillates_around_a_level_is_mostly_ranging() -> None:
    regime = run(*noisy_market(np.full(400, 100_000.0)))[150:]
    counts = np.bincount(regime, minlength=7)
    assert counts.argmax() == Regime.RANGING


def test_detector_when_close_jumps_out_of_range_on_a_wide_bar_is_breakout() -> None:
    high, low, close = noisy_market(np.full(400, 100_000.0))
    close[300], high[300], low[300] = 100_200.0, 100_210.0, 99_990.0
    regime = run(high, low, close)
    assert regime[300] == Regime.BREAKOUT
    assert regime[299] != Regime.BREAKOUT


def test_detector_when_ranges_widen_turns_high_volatility_and_when_narrow_low() -> None:
    high, low, close = noisy_market(np.full(400, 100_000.0))
    t = np.arange(400)
    for scale, expected in ((2.5, Regime.HIGH_VOLATILITY), (0.3, Regime.LOW_VOLATILITY)):
        factor = np.where(t >= 300, scale, 1.0)
        c = 100_000 + (close - 100_000) * np.minimum(factor, 1.0)  # closes stay inside
        h = np.maximum(c + (high - close) * factor, c)
        lo = np.minimum(c - (close - low) * factor, c)
        regime = run(h, lo, c)
        assert (regime[310:330] == expected).all(), regime[300:330]


def test_detector_when_later_bars_are_appended_keeps_earlier_regimes() -> None:
    bars = load_h1_bars()
    whole = run(bars.high, bars.low, bars.close)
    for cut in (150, 1000, 4321):
        prefix = run(bars.high[:cut], bars.low[:cut], bars.close[:cut])
        assert np.array_equal(prefix, whole[:cut])


def test_detector_when_state_is_inspected_holds_only_windows() -> None:
    detector = RegimeDetector()
    rng = np.random.default_rng(1)
    for _ in range(50):
        x = rng.uniform(1, 2, 100)
        detector.update(
            x + 1, x - 1, x, true_range=x, atr=x, adx=x, plus_di=x, minus_di=x,
            ema_fast=x, ema_slow=x,
        )  # fmt: skip
    sizes = [trail.size for trail in vars(detector).values() if hasattr(trail, "size")]
    assert max(sizes) == RegimeConfig().vol_window

"""Market regime of each closed H1 bar, from past and present bars only.

The values are the ``quantmesh.features.v1.Regime`` enum. At bar ``t`` the detector looks
at four signals, each from bars ``<= t`` (O(window) state, no recomputation):

- **breakout**: the close leaves the range of the *previous* ``breakout_window`` bars
  (``close > max(high)`` or ``close < min(low)`` over bars ``t-N..t-1``) while the range
  expands: the bar's true range is at least ``breakout_range`` times the ATR of bar
  ``t-1``.
- **volatility percentile**: the rank of ``ATR14 / close`` among its values at the
  previous ``vol_window`` bars, ``(#lower + #equal / 2) / vol_window``. HIGH at or above
  ``vol_high``, LOW at or below ``vol_low``.
- **trend**: ADX(14) at or above ``adx_trend``, with direction agreed by both the
  directional indicators and the EMAs: up if ``+DI > -DI`` and ``EMA10 > EMA30``, down if
  ``-DI > +DI`` and ``EMA10 < EMA30``.
- otherwise **ranging**.

Precedence, first match wins: UNSPECIFIED (an input still warming up) > BREAKOUT >
HIGH_VOLATILITY > TREND_UP / TREND_DOWN > LOW_VOLATILITY > RANGING. A breakout is the
rarest and most time-critical state, so it wins; extreme volatility matters more to
risk than direction; a strong trend is more informative than a quiet market, which
otherwise defaults to LOW_VOLATILITY.

Warm-up with the defaults: the volatility rank needs ATR (bar 15) plus ``vol_window``
earlier ATRs, so the first regime is at bar ``15 + vol_window`` (115); ADX (bar 28),
EMA30 (bar 30) and the breakout range (bar 21) are ready before that.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from quantmesh.services.features.indicators import Trailing, last_windows


class Regime(IntEnum):
    """Market regime; the values of ``quantmesh.features.v1.Regime``."""

    UNSPECIFIED = 0
    TREND_UP = 1
    TREND_DOWN = 2
    RANGING = 3
    HIGH_VOLATILITY = 4
    LOW_VOLATILITY = 5
    BREAKOUT = 6


@dataclass(frozen=True, slots=True)
class RegimeConfig:
    """Thresholds of the regime rules (see the module docstring).

    Attributes
    ----------
    breakout_window:
        Previous bars whose high/low range a breakout close must leave.
    breakout_range:
        Minimum true range of a breakout bar, in ATRs of the bar before it.
    vol_window:
        Previous bars the volatility percentile ranks against.
    vol_high, vol_low:
        Percentile rank thresholds (inclusive) for HIGH and LOW volatility.
    adx_trend:
        Minimum ADX (as a fraction: 0.25 is the usual 25) of a trend.
    """

    breakout_window: int = 20
    breakout_range: float = 1.5
    vol_window: int = 100
    vol_high: float = 0.90
    vol_low: float = 0.10
    adx_trend: float = 0.25

    def __post_init__(self) -> None:
        if self.breakout_window < 1 or self.vol_window < 1:
            raise ValueError("breakout_window and vol_window must be >= 1")
        if not 0.0 <= self.vol_low < self.vol_high <= 1.0:
            raise ValueError("need 0 <= vol_low < vol_high <= 1")
        if self.breakout_range < 0 or self.adx_trend < 0:
            raise ValueError("breakout_range and adx_trend must be >= 0")

    @property
    def warmup_bars(self) -> int:
        """Bars before the first classified bar, given ATR(14), ADX(14) and EMA30 inputs."""
        return max(15 + self.vol_window, 28, 30, self.breakout_window + 1)


# eq=False: the fields are numpy arrays, for which a generated __eq__ would fail.
@dataclass(frozen=True, slots=True, eq=False)
class RegimeInputs:
    """Per-bar inputs of :func:`classify` (float64 arrays of one length; NaN = not ready).

    Attributes
    ----------
    close, true_range:
        The bar's close and true range.
    prior_atr:
        ATR of the bar before.
    prior_high, prior_low:
        Highest high and lowest low of the previous ``breakout_window`` bars.
    vol_rank:
        Percentile rank of the bar's ATR / close among the previous ``vol_window`` bars.
    adx, plus_di, minus_di:
        Wilder's ADX and directional indicators, as fractions.
    ema_fast, ema_slow:
        EMA10 and EMA30 of the close.
    """

    close: np.ndarray
    true_range: np.ndarray
    prior_atr: np.ndarray
    prior_high: np.ndarray
    prior_low: np.ndarray
    vol_rank: np.ndarray
    adx: np.ndarray
    plus_di: np.ndarray
    minus_di: np.ndarray
    ema_fast: np.ndarray
    ema_slow: np.ndarray


def classify(inputs: RegimeInputs, config: RegimeConfig | None = None) -> np.ndarray:
    """Apply the rules and their precedence to each bar.

    Parameters
    ----------
    inputs:
        The bars' signals; a NaN anywhere in a bar's inputs makes it UNSPECIFIED.
    config:
        Thresholds; the defaults when None.

    Returns
    -------
    numpy.ndarray
        uint8 :class:`Regime` values.
    """
    cfg = config or RegimeConfig()
    columns = (
        inputs.close,
        inputs.true_range,
        inputs.prior_atr,
        inputs.prior_high,
        inputs.prior_low,
        inputs.vol_rank,
        inputs.adx,
        inputs.plus_di,
        inputs.minus_di,
        inputs.ema_fast,
        inputs.ema_slow,
    )
    ready = ~np.isnan(np.stack(columns)).any(axis=0)
    close = inputs.close
    breakout = ((close > inputs.prior_high) | (close < inputs.prior_low)) & (
        inputs.true_range >= cfg.breakout_range * inputs.prior_atr
    )
    strong = inputs.adx >= cfg.adx_trend
    up = strong & (inputs.plus_di > inputs.minus_di) & (inputs.ema_fast > inputs.ema_slow)
    down = strong & (inputs.minus_di > inputs.plus_di) & (inputs.ema_fast < inputs.ema_slow)
    regime: np.ndarray = np.select(
        [
            ~ready,
            breakout,
            inputs.vol_rank >= cfg.vol_high,
            up,
            down,
            inputs.vol_rank <= cfg.vol_low,
        ],
        [
            Regime.UNSPECIFIED,
            Regime.BREAKOUT,
            Regime.HIGH_VOLATILITY,
            Regime.TREND_UP,
            Regime.TREND_DOWN,
            Regime.LOW_VOLATILITY,
        ],
        default=Regime.RANGING,
    ).astype(np.uint8)
    return regime


class RegimeDetector:
    """Streaming regime classification of one symbol's H1 bars.

    State: the previous ``breakout_window`` highs and lows, ``vol_window`` volatilities
    and one ATR; nothing grows with the history.
    """

    def __init__(self, config: RegimeConfig | None = None) -> None:
        self.config = config or RegimeConfig()
        self._highs = Trailing(self.config.breakout_window)
        self._lows = Trailing(self.config.breakout_window)
        self._vol = Trailing(self.config.vol_window)
        self._atr = Trailing(1)

    def update(
        self,
        high: np.ndarray,
        low: np.ndarray,
        close: np.ndarray,
        *,
        true_range: np.ndarray,
        atr: np.ndarray,
        adx: np.ndarray,
        plus_di: np.ndarray,
        minus_di: np.ndarray,
        ema_fast: np.ndarray,
        ema_slow: np.ndarray,
    ) -> np.ndarray:
        """Regime of each new bar (uint8), given its OHLC and its indicator values."""
        k = len(close)
        if k == 0:
            return np.zeros(0, np.uint8)
        n, w = self.config.breakout_window, self.config.vol_window
        # Windows of n + 1 end at each new bar; all but the last column are the bars before.
        highs = last_windows(self._highs.extend(high), n + 1, k)[:, :-1]
        lows = last_windows(self._lows.extend(low), n + 1, k)[:, :-1]
        vol = last_windows(self._vol.extend(atr / close), w + 1, k)
        prior, current = vol[:, :-1], vol[:, -1:]
        rank = ((prior < current).sum(axis=1) + 0.5 * (prior == current).sum(axis=1)) / w
        rank[np.isnan(vol).any(axis=1)] = np.nan
        prior_atr = self._atr.extend(atr)[:-1]
        inputs = RegimeInputs(
            close=np.asarray(close, np.float64),
            true_range=true_range,
            prior_atr=prior_atr,
            prior_high=highs.max(axis=1),
            prior_low=lows.min(axis=1),
            vol_rank=rank,
            adx=adx,
            plus_di=plus_di,
            minus_di=minus_di,
            ema_fast=ema_fast,
            ema_slow=ema_slow,
        )
        return classify(inputs, self.config)

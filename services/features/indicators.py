"""Streaming indicators with O(window) state: EMA, Wilder RSI, ATR, DMI/ADX, rolling windows.

Every class takes a batch of new values (one per newly closed bar) and returns one output
per input, NaN until its warm-up is complete. Feeding a series in any split gives the
same bits as feeding it at once, because:

- recursions (EMA, Wilder smoothing) run through :func:`scipy.signal.lfilter` with the
  filter state ``zi`` carried between calls, which performs the same floating-point
  operations per sample whatever the split; short inputs (the usual handful of bars a
  batch closes) run the very same per-sample arithmetic in Python instead, because
  lfilter's fixed cost is larger than their work (a test pins both paths bit-equal);
- seeds are exact: the first average is :func:`math.fsum` of the first ``n`` values / n;
- rolling statistics reduce one contiguous window per output row (a two-pass mean and
  variance), so a row's result depends only on the values in its window.

The no-lookahead tests rely on this: rows must not change with the tick batch size.

Conventions
-----------
- **EMA(n)**: ``alpha = 2 / (n + 1)``; the first value, at input ``n``, is the SMA of the
  first ``n`` inputs; then ``y = alpha * x + (1 - alpha) * y_prev``.
- **Wilder(n)**: the same with ``alpha = 1 / n``.
- **RSI(n)**: Wilder averages of gains ``max(d, 0)`` and losses ``max(-d, 0)`` of the
  close changes ``d``; ``rsi = gain / (gain + loss)`` in [0, 1] (RSI / 100), 0.5 when
  both are 0. The first change needs two closes, so the first RSI is at close ``n + 1``.
- **ATR(n)**: Wilder average of the true range ``max(h - l, |h - c_prev|, |l - c_prev|)``,
  which starts at the second bar: the first ATR is at bar ``n + 1``.
- **DMI/ADX(n)**: ``+DM = up`` if ``up > down`` and ``up > 0`` else 0 (``up = h - h_prev``,
  ``down = l_prev - l``), ``-DM`` mirrored; ``+DI = Wilder(+DM) / ATR`` (0 when ATR is 0);
  ``DX = |+DI - -DI| / (+DI + -DI)`` (0 when both are 0); ``ADX = Wilder(DX)``. DI and
  ADX are fractions in [0, 1] (the usual value / 100). First DI at bar ``n + 1``, first
  ADX at bar ``2n``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

_NAN = float("nan")
_SHORT = 64  # inputs up to this long are smoothed in Python, longer ones by lfilter


class SeededEma:
    """Exponential smoothing seeded with the simple mean of its first ``period`` inputs.

    Parameters
    ----------
    period:
        Number of inputs averaged into the seed (>= 1).
    alpha:
        Smoothing factor in (0, 1]; ``2 / (period + 1)`` for an EMA (the default),
        ``1 / period`` for Wilder's smoothing (see :meth:`wilder`).

    Notes
    -----
    NaN inputs are skipped until the seed is complete (so a smoothed series can start
    where its input becomes defined); afterwards a NaN input would propagate, and
    callers never pass one. State: up to ``period`` seed values, then one float.
    """

    def __init__(self, period: int, alpha: float | None = None) -> None:
        if period < 1:
            raise ValueError(f"period must be >= 1, got {period}")
        alpha = 2.0 / (period + 1) if alpha is None else alpha
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.period = period
        self.alpha = alpha
        # y[i] = b0 * x[i] + z; z = b1 * x[i] - a1 * y[i] = (1 - alpha) * y[i]
        self._b = np.array([alpha, 0.0])
        self._a = np.array([1.0, alpha - 1.0])
        self._seed: list[float] = []
        self._z: float | None = None  # the filter state: (1 - alpha) * last output

    @classmethod
    def wilder(cls, period: int) -> SeededEma:
        """Wilder's smoothing (``alpha = 1 / period``), seeded with the SMA."""
        return cls(period, 1.0 / period)

    @property
    def ready(self) -> bool:
        """Whether the seed is complete (outputs are defined from now on)."""
        return self._z is not None

    def update(self, x: np.ndarray) -> np.ndarray:
        """Smooth new inputs; return one float64 output per input (NaN before the seed)."""
        x = np.asarray(x, np.float64)
        out = np.full(len(x), _NAN)
        start = 0
        if self._z is None:
            valid = np.flatnonzero(~np.isnan(x))
            take = valid[: self.period - len(self._seed)]
            self._seed.extend(x[take].tolist())
            if len(self._seed) < self.period:
                return out
            at = int(take[-1])
            seed = math.fsum(self._seed) / self.period
            out[at] = seed
            self._seed = []
            self._z = 0.0 - seed * float(self._a[1])  # the state lfilter would carry
            start = at + 1
        if start < len(x):
            out[start:] = self._filter(x[start:])
        return out

    def _filter(self, x: np.ndarray) -> np.ndarray:
        assert self._z is not None
        if len(x) > _SHORT:
            y, zf = lfilter(self._b, self._a, x, zi=np.array([self._z]))
            self._z = float(zf[0])
            result: np.ndarray = y
            return result
        # Few values (the usual batch): lfilter's fixed cost (~10 µs) dwarfs the work, so
        # run its exact per-sample arithmetic here. A test pins the two paths bit-equal.
        b0, b1, a1 = float(self._b[0]), float(self._b[1]), float(self._a[1])
        z = self._z
        values = x.tolist()
        for i, value in enumerate(values):
            y_i = z + b0 * value
            z = value * b1 - y_i * a1
            values[i] = y_i
        self._z = z
        return np.array(values)


def safe_ratio(numerator: np.ndarray, denominator: np.ndarray, when_zero: float) -> np.ndarray:
    """``numerator / denominator``, ``when_zero`` where the denominator is 0, NaN stays NaN."""
    out = np.full(np.shape(numerator), when_zero, np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _previous(last: float, x: np.ndarray) -> np.ndarray:
    """``x`` shifted one step later, ``last`` (the value before this batch) first."""
    prev = np.empty_like(x)
    prev[0] = last
    prev[1:] = x[:-1]
    return prev


class WilderRsi:
    """Wilder's RSI of a close series, as a fraction in [0, 1] (see the module notes)."""

    def __init__(self, period: int = 14) -> None:
        self.period = period
        self._last = _NAN
        self._gain = SeededEma.wilder(period)
        self._loss = SeededEma.wilder(period)

    def update(self, close: np.ndarray) -> np.ndarray:
        """RSI after each new close; NaN for the first ``period`` closes."""
        close = np.asarray(close, np.float64)
        if len(close) == 0:
            return np.zeros(0)
        change = close - _previous(self._last, close)
        self._last = float(close[-1])
        gain = self._gain.update(np.maximum(change, 0.0))  # NaN (first close) stays NaN
        loss = self._loss.update(np.maximum(-change, 0.0))
        return safe_ratio(gain, gain + loss, 0.5)


# eq=False: the fields are numpy arrays, for which a generated __eq__ would fail.
@dataclass(frozen=True, slots=True, eq=False)
class DmiValues:
    """Outputs of :class:`WilderDmi` for a batch of bars (float64, one per bar)."""

    true_range: np.ndarray
    atr: np.ndarray
    plus_di: np.ndarray
    minus_di: np.ndarray
    adx: np.ndarray


class WilderDmi:
    """Wilder's true range, ATR, +DI, -DI and ADX (fractions), see the module notes."""

    def __init__(self, period: int = 14) -> None:
        self.period = period
        self._last = (_NAN, _NAN, _NAN)  # high, low, close of the bar before the batch
        self._atr = SeededEma.wilder(period)
        self._plus = SeededEma.wilder(period)
        self._minus = SeededEma.wilder(period)
        self._adx = SeededEma.wilder(period)

    def update(self, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> DmiValues:
        """Indicators after each new bar."""
        high = np.asarray(high, np.float64)
        low = np.asarray(low, np.float64)
        close = np.asarray(close, np.float64)
        if len(close) == 0:
            empty = np.zeros(0)
            return DmiValues(empty, empty, empty, empty, empty)
        prev_high = _previous(self._last[0], high)
        prev_low = _previous(self._last[1], low)
        prev_close = _previous(self._last[2], close)
        self._last = (float(high[-1]), float(low[-1]), float(close[-1]))
        true_range = np.maximum(
            high - low, np.maximum(np.abs(high - prev_close), np.abs(low - prev_close))
        )
        up = high - prev_high
        down = prev_low - low
        first = np.isnan(prev_close)  # the very first bar has no movement yet
        plus_dm = np.where(first, _NAN, np.where((up > down) & (up > 0), up, 0.0))
        minus_dm = np.where(first, _NAN, np.where((down > up) & (down > 0), down, 0.0))
        atr = self._atr.update(true_range)
        plus_di = safe_ratio(self._plus.update(plus_dm), atr, 0.0)
        minus_di = safe_ratio(self._minus.update(minus_dm), atr, 0.0)
        dx = safe_ratio(np.abs(plus_di - minus_di), plus_di + minus_di, 0.0)
        adx = self._adx.update(dx)
        return DmiValues(true_range, atr, plus_di, minus_di, adx)


class Trailing:
    """The last ``size`` values of a series, NaN where the series was shorter.

    :meth:`extend` returns the tail joined with the new values, so that window ``w``
    ending at every new value (``w <= size + 1``) can be read from it.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self._tail = np.full(size, _NAN)

    @property
    def values(self) -> np.ndarray:
        """The last ``size`` values (read-only view)."""
        view = self._tail.view()
        view.flags.writeable = False
        return view

    @property
    def last(self) -> float:
        """The latest value."""
        return float(self._tail[-1])

    def extend(self, x: np.ndarray) -> np.ndarray:
        """Append ``x``; return ``tail + x`` (``size + len(x)`` values)."""
        joined = np.concatenate((self._tail, np.asarray(x, np.float64)))
        self._tail = joined[-self.size :].copy()
        return joined


def last_windows(joined: np.ndarray, width: int, count: int) -> np.ndarray:
    """The ``count`` windows of ``width`` ending at the last ``count`` values of ``joined``.

    Returns a C-contiguous ``(count, width)`` copy, so that each row reduces the same way
    whichever rows surround it.
    """
    first = len(joined) - width - count + 1
    if first < 0:
        raise ValueError(f"{len(joined)} values hold no {count} windows of {width}")
    # A gather rather than sliding_window_view: a few times faster on small batches.
    windows: np.ndarray = joined[np.arange(first, first + count)[:, None] + np.arange(width)]
    return windows


def window_stats(windows: np.ndarray, ddof: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (with ``ddof``) of each row of ``windows``.

    Two-pass on values shifted by each row's first value: no cancellation, and a row of
    equal values has a standard deviation of exactly 0. A row holding a NaN gives NaN.
    """
    width = windows.shape[1]
    shift = windows[:, 0]
    shifted = windows - shift[:, None]
    mean = shifted.sum(axis=1) / width
    deviation = shifted - mean[:, None]
    std: np.ndarray = np.sqrt((deviation * deviation).sum(axis=1) / (width - ddof))
    return shift + mean, std


def window_zscore(windows: np.ndarray) -> np.ndarray:
    """z-score of each row's last value within its row (population std; 0 if flat)."""
    width = windows.shape[1]
    shifted = windows - windows[:, :1]
    mean = shifted.sum(axis=1) / width
    deviation = shifted - mean[:, None]
    std = np.sqrt((deviation * deviation).sum(axis=1) / width)
    return safe_ratio(deviation[:, -1], std, 0.0)


class RollingStats:
    """Rolling mean and standard deviation over the last ``window`` inputs."""

    def __init__(self, window: int, ddof: int = 0) -> None:
        if window < 1 or not 0 <= ddof < window:
            raise ValueError(f"need window >= 1 and 0 <= ddof < window, got {window}, {ddof}")
        self.window = window
        self.ddof = ddof
        self._trail = Trailing(max(window - 1, 1))

    def update(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) of the window ending at each new input; NaN until ``window`` inputs."""
        x = np.asarray(x, np.float64)
        return window_stats(last_windows(self._trail.extend(x), self.window, len(x)), self.ddof)


# Whole-series forms, for offline use and tests: one call of the streaming classes.


def ema(x: np.ndarray, period: int) -> np.ndarray:
    """EMA of ``x`` seeded with the SMA of its first ``period`` values (NaN before)."""
    return SeededEma(period).update(np.asarray(x, np.float64))


def wilder_rsi(close: np.ndarray, period: int = 14) -> np.ndarray:
    """Wilder's RSI of ``close`` as a fraction in [0, 1] (NaN for the first ``period``)."""
    return WilderRsi(period).update(np.asarray(close, np.float64))


def wilder_atr(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int = 14
) -> np.ndarray:
    """Wilder's ATR (NaN for the first ``period`` bars)."""
    return WilderDmi(period).update(high, low, close).atr


def rolling_std(x: np.ndarray, window: int, ddof: int = 0) -> np.ndarray:
    """Standard deviation of each trailing ``window`` (NaN for the first ``window - 1``)."""
    return RollingStats(window, ddof).update(np.asarray(x, np.float64))[1]


def rolling_zscore(x: np.ndarray, window: int) -> np.ndarray:
    """``(x - SMA) / std`` over each trailing ``window`` (population std, 0 if flat)."""
    x = np.asarray(x, np.float64)
    return window_zscore(last_windows(Trailing(max(window - 1, 1)).extend(x), window, len(x)))

"""The feature engine: a merged tick stream in, one feature row per closed H1 bar out.

Per symbol the engine builds M1, M5 and H1 ask bars from the ticks
(:mod:`~quantmesh.services.features.bars`), updates streaming indicators on every bar
that closes (:mod:`~quantmesh.services.features.indicators`), and when an H1 bar
closes emits its row: H1 OHLC features, clock and session features, intrabar features
read from the M5 and M1 bars of that hour, and the regime
(:mod:`~quantmesh.services.features.regime`). The columns are
:data:`~quantmesh.services.features.schema.FEATURE_NAMES`.

Invariants the tests pin down:

- **No lookahead.** A row is emitted when the first tick at or after its bar's end
  arrives (or at :meth:`FeatureEngine.finish`) and depends on ticks before that end
  only; its ``time_msc`` is the bar's end.
- **Batching does not matter.** Any split of the same tick stream gives bit-identical
  rows in the same order (see the determinism notes in ``indicators``).
- **O(window) state.** Each symbol keeps three open bars, indicator states and a few
  trailing windows (at most 100 floats each); nothing grows with the history.

Rows of one ``on_ticks`` call are ordered by the seq of the tick that closed their bar,
ties (several bars closed by one flush) by symbol index: the order in which a streaming
consumer learns of them, which no batch split changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from quantmesh.services.features.bars import H1_MS, M1_MS, M5_MS, BarBuilder, ClosedBars
from quantmesh.services.features.indicators import (
    SeededEma,
    Trailing,
    WilderDmi,
    WilderRsi,
    last_windows,
    window_stats,
    window_zscore,
)
from quantmesh.services.features.regime import RegimeConfig, RegimeDetector
from quantmesh.services.features.schema import FEATURE_NAMES, FeatureRows
from quantmesh.services.features.sessions import DAY_MS, SESSIONS, session_mask
from quantmesh.services.marketdata.sources import Bars, Symbol, TickColumns

M1_RV_WINDOW = 60  # M1 returns in the realized volatility
_NO_SEQ = -1  # tick seq of rows computed from bars, and close seq of a flushed bar
_Columns = dict[str, np.ndarray]


class H1Features:
    """H1 OHLC features and regime of one symbol's closed H1 bars, incrementally.

    This is the part of a row that depends on H1 OHLC only (the columns of
    :data:`~quantmesh.services.features.schema.MODEL_FEATURES` but the clock ones), so the
    same code serves the tick engine and :func:`features_from_bars`.

    Parameters
    ----------
    regime_config:
        Regime thresholds; the defaults when None.
    """

    def __init__(self, regime_config: RegimeConfig | None = None) -> None:
        self._closes = Trailing(20)  # C[t-4] for log_return_4; 19 earlier closes for SMA20
        self._returns = Trailing(19)  # 19 earlier returns for volatility_20
        self._ema10 = SeededEma(10)
        self._ema30 = SeededEma(30)
        self._rsi = WilderRsi(14)
        self._dmi = WilderDmi(14)
        self._regime = RegimeDetector(regime_config)

    def update(
        self, high: np.ndarray, low: np.ndarray, close: np.ndarray
    ) -> tuple[_Columns, np.ndarray]:
        """Features and regimes of new closed bars, oldest first.

        Parameters
        ----------
        high, low, close:
            The bars' ask prices (points or price; only ratios are used).

        Returns
        -------
        tuple
            ``({feature name: float64 column}, uint8 regimes)``, one entry per bar.
        """
        high = np.asarray(high, np.float64)
        low = np.asarray(low, np.float64)
        close = np.asarray(close, np.float64)
        k = len(close)
        closes = self._closes.extend(close)  # 20 earlier closes, then the new ones
        log_return_1 = np.log(closes[20:] / closes[19:-1])
        log_return_4 = np.log(closes[20:] / closes[16:-4])
        returns = self._returns.extend(log_return_1)
        ema10 = self._ema10.update(close)
        ema30 = self._ema30.update(close)
        dmi = self._dmi.update(high, low, close)
        regime = self._regime.update(
            high,
            low,
            close,
            true_range=dmi.true_range,
            atr=dmi.atr,
            adx=dmi.adx,
            plus_di=dmi.plus_di,
            minus_di=dmi.minus_di,
            ema_fast=ema10,
            ema_slow=ema30,
        )
        columns = {
            "log_return_1": log_return_1,
            "log_return_4": log_return_4,
            "close_ema_10_gap": (close - ema10) / close,
            "close_ema_30_gap": (close - ema30) / close,
            "ema_10_30_ratio": ema10 / ema30 - 1.0,
            "rsi_14": self._rsi.update(close),
            "atr_14_rel": dmi.atr / close,
            "adx_14": dmi.adx,
            "volatility_20": window_stats(last_windows(returns, 20, k), ddof=1)[1],
            "zscore_20": window_zscore(last_windows(closes, 20, k)),
        }
        return columns, regime


class IntrabarFeatures:
    """Features of one symbol's M5 and M1 bars, read at H1 closes, incrementally.

    The M5 RSI and M1 returns are updated on every closed M5 / M1 bar. An H1 bar ending
    at ``e`` reads them at the last bar opening before ``e``: that bar is closed by the
    same tick that closes the H1 bar (or earlier), so it is always known by then.
    """

    def __init__(self) -> None:
        self._m5_rsi = WilderRsi(14)
        self._m5_last = Trailing(1)  # RSI of the last closed M5 bar
        self._m1_close = Trailing(1)
        self._m1_returns = Trailing(M1_RV_WINDOW)

    def update(self, m1: ClosedBars, m5: ClosedBars, h1_end_ms: np.ndarray) -> _Columns:
        """Take newly closed M1 and M5 bars; return the features at each H1 end.

        Returns no column when no H1 bar closed.

        Parameters
        ----------
        m1, m5:
            Bars closed by the current batch, oldest first.
        h1_end_ms:
            int64 ends of the H1 bars closed by the same batch.
        """
        if len(m1) == 0:  # no M1 bar closed, so neither did any M5 or H1 bar
            return {}
        rsi = self._m5_last.extend(self._m5_rsi.update(m5.close) if len(m5) else np.zeros(0))
        closes = self._m1_close.extend(m1.close)
        returns = self._m1_returns.extend(np.log(closes[1:] / closes[:-1]))
        if len(h1_end_ms) == 0:
            return {}
        # rsi[0] is the value before this batch; rsi[j] after the j-th new M5 bar.
        m5_rsi = rsi[np.searchsorted(m5.open_ms, h1_end_ms, side="left")]
        # returns[W - 1 + j] follows the j-th new M1 bar; a window of W ends there.
        at = np.searchsorted(m1.open_ms, h1_end_ms, side="left")
        windows = returns[at[:, None] + np.arange(M1_RV_WINDOW)]
        m1_rv = np.sqrt((windows * windows).sum(axis=1))
        return {"m5_rsi_14": m5_rsi, "m1_realized_vol_60": m1_rv}


def clock_columns(end_ms: np.ndarray) -> tuple[_Columns, np.ndarray]:
    """Hour-of-day and session features at each row time, and the session masks."""
    hours = np.mod(end_ms, DAY_MS) / H1_MS
    angle = (2.0 * np.pi / 24.0) * hours
    mask = session_mask(end_ms)
    columns = {"hour_sin": np.sin(angle), "hour_cos": np.cos(angle)}
    for spec in SESSIONS:
        columns[spec.column] = ((mask & np.uint32(spec.flag)) != 0).astype(np.float64)
    return columns, mask


def _matrix(columns: _Columns, rows: int) -> np.ndarray:
    """``(rows, n_features)`` C-contiguous values in schema order; absent columns are NaN."""
    missing = np.full(rows, np.nan)
    return np.stack([columns.get(name, missing) for name in FEATURE_NAMES], axis=1)


@dataclass(frozen=True, slots=True, eq=False)
class _Part:
    rows: FeatureRows
    close_seq: np.ndarray  # seq of the tick that closed each row's bar; -1 at the flush


class _SymbolState:
    """Everything the engine keeps for one symbol: O(window), independent of history."""

    def __init__(self, index: int, regime_config: RegimeConfig | None) -> None:
        self.index = index
        self.last_time = np.iinfo(np.int64).min
        self._m1 = BarBuilder(M1_MS)
        self._m5 = BarBuilder(M5_MS)
        self._h1 = BarBuilder(H1_MS)
        self._h1_features = H1Features(regime_config)
        self._intrabar = IntrabarFeatures()

    def update(
        self, time_msc: np.ndarray, ask: np.ndarray, spread: np.ndarray, seq: np.ndarray
    ) -> _Part | None:
        if time_msc[0] < self.last_time or bool(np.any(time_msc[1:] < time_msc[:-1])):
            raise ValueError(f"ticks of symbol {self.index} go back in time")
        self.last_time = int(time_msc[-1])
        return self._advance(
            self._m1.update(time_msc, ask, spread, seq),
            self._m5.update(time_msc, ask, spread, seq),
            self._h1.update(time_msc, ask, spread, seq),
        )

    def flush(self) -> _Part | None:
        return self._advance(self._m1.flush(), self._m5.flush(), self._h1.flush())

    def _advance(self, m1: ClosedBars, m5: ClosedBars, h1: ClosedBars) -> _Part | None:
        end = h1.open_ms + H1_MS
        intrabar = self._intrabar.update(m1, m5, end)
        k = len(h1)
        if k == 0:
            return None
        columns, regime = self._h1_features.update(h1.high, h1.low, h1.close)
        clock, mask = clock_columns(end)
        columns.update(clock)
        columns.update(intrabar)
        columns["spread_mean_points"] = h1.mean_spread
        columns["tick_count"] = h1.tick_count.astype(np.float64)
        columns["close_points"] = h1.close.astype(np.float64)
        rows = FeatureRows(
            symbol_index=np.full(k, self.index, np.uint32),
            time_msc=end,
            bar_open_ms=h1.open_ms,
            values=_matrix(columns, k),
            session_mask=mask,
            regime=regime,
            tick_seq_first=h1.seq_first,
            tick_seq_last=h1.seq_last,
        )
        return _Part(rows, h1.close_seq)


class FeatureEngine:
    """Incremental features of a merged multi-symbol tick stream.

    Parameters
    ----------
    symbols:
        The symbols of the stream; a tick's ``symbol_index`` indexes this sequence, and
        so does each row's.
    regime_config:
        Thresholds of the regime detector; the defaults when None.

    Examples
    --------
    >>> engine = FeatureEngine([EURUSD])  # doctest: +SKIP
    >>> rows = FeatureRows.concat([*(engine.on_ticks(b) for b in batches), engine.finish()])
    """

    def __init__(
        self, symbols: Sequence[Symbol], *, regime_config: RegimeConfig | None = None
    ) -> None:
        if not symbols:
            raise ValueError("a feature engine needs at least one symbol")
        self._symbols = tuple(symbols)
        self._states = [_SymbolState(i, regime_config) for i in range(len(self._symbols))]
        self._finished = False

    @property
    def symbols(self) -> tuple[Symbol, ...]:
        """The symbols, in ``symbol_index`` order."""
        return self._symbols

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Names of the columns of ``FeatureRows.values``."""
        return FEATURE_NAMES

    def on_ticks(self, ticks: TickColumns) -> FeatureRows:
        """Consume a batch of the merged tick stream; return the rows of the bars it closed.

        Parameters
        ----------
        ticks:
            The next batch: row ``i`` has seq ``ticks.seq + i``; each symbol's times are
            non-decreasing across batches.

        Returns
        -------
        FeatureRows
            One row per H1 bar closed by a tick of this batch (often none), ordered by
            the seq of that tick, then by symbol index.

        Raises
        ------
        ValueError
            For a symbol index out of range or a symbol's time going back.
        RuntimeError
            After :meth:`finish`.
        """
        if self._finished:
            raise RuntimeError("the engine is finished; make a new one for a new stream")
        n = len(ticks)
        if n == 0:
            return FeatureRows.empty()
        time_msc = np.asarray(ticks.time_msc, np.int64)
        ask = np.asarray(ticks.ask, np.int64)
        spread = ask - np.asarray(ticks.bid, np.int64)
        seq = np.arange(ticks.seq, ticks.seq + n, dtype=np.int64)
        symbol_index = np.asarray(ticks.symbol_index)
        if int(symbol_index.max()) >= len(self._states):
            raise ValueError(
                f"symbol_index {int(symbol_index.max())} out of range for "
                f"{len(self._states)} symbol(s)"
            )
        if len(self._states) == 1:
            part = self._states[0].update(time_msc, ask, spread, seq)
            return FeatureRows.empty() if part is None else part.rows
        # A stable sort by symbol keeps each symbol's ticks in stream order.
        order = np.argsort(symbol_index, kind="stable")
        bounds = np.concatenate(
            ([0], np.cumsum(np.bincount(symbol_index, minlength=len(self._states))))
        )
        time_msc, ask, spread, seq = time_msc[order], ask[order], spread[order], seq[order]
        parts = []
        for s in np.flatnonzero(np.diff(bounds)):
            lo, hi = int(bounds[s]), int(bounds[s + 1])
            part = self._states[s].update(time_msc[lo:hi], ask[lo:hi], spread[lo:hi], seq[lo:hi])
            if part is not None:
                parts.append(part)
        return _merge(parts)

    def finish(self) -> FeatureRows:
        """End of stream: close every open bar and return their rows (by symbol index).

        A flushed bar's row keeps ``time_msc`` = its open + 1 h, like every row, although
        the stream ended before then. The engine accepts no more ticks afterwards.
        """
        if self._finished:
            raise RuntimeError("finish() was already called")
        self._finished = True
        return _merge([p for p in (state.flush() for state in self._states) if p is not None])


def _merge(parts: list[_Part]) -> FeatureRows:
    if not parts:
        return FeatureRows.empty()
    if len(parts) == 1:
        return parts[0].rows
    rows = FeatureRows.concat([p.rows for p in parts])
    close_seq = np.concatenate([p.close_seq for p in parts])
    key = np.where(close_seq < 0, np.iinfo(np.int64).max, close_seq)
    # Parts come in symbol order, so a stable sort orders ties by symbol.
    return rows.take(np.argsort(key, kind="stable"))


def features_from_bars(
    bars: Bars, *, symbol_index: int = 0, regime_config: RegimeConfig | None = None
) -> FeatureRows:
    """Rows of H1 bars given as bars (e.g. the shipped CSV), not ticks.

    The H1 OHLC, clock and session columns and the regime are computed by the same code
    as in :class:`FeatureEngine`, so they equal the engine's rows for ticks that rebuild
    these bars, bit for bit: use it to build training sets with serving parity. The
    intrabar columns (M5, M1, spread, tick count) need ticks and are NaN; the tick seqs
    are -1.

    Parameters
    ----------
    bars:
        One symbol's H1 bars, oldest first, opening on whole UTC hours.
    symbol_index:
        Value of the rows' ``symbol_index``.
    regime_config:
        Regime thresholds; the defaults when None.
    """
    k = len(bars)
    open_ms = np.asarray(bars.time_ms, np.int64)
    if k and bool(np.any(np.mod(open_ms, H1_MS) != 0)):
        raise ValueError("H1 bars must open on whole UTC hours")
    columns, regime = H1Features(regime_config).update(bars.high, bars.low, bars.close)
    end = open_ms + H1_MS
    clock, mask = clock_columns(end)
    columns.update(clock)
    columns["close_points"] = np.asarray(bars.close, np.float64)
    return FeatureRows(
        symbol_index=np.full(k, symbol_index, np.uint32),
        time_msc=end,
        bar_open_ms=open_ms.copy(),
        values=_matrix(columns, k),
        session_mask=mask,
        regime=regime,
        tick_seq_first=np.full(k, _NO_SEQ, np.int64),
        tick_seq_last=np.full(k, _NO_SEQ, np.int64),
    )

"""The feature schema: names, order, units and warm-up of every column, and the row type.

A row is the feature vector of one symbol at the close of one H1 bar. Its ``time_msc`` is
the bar's end (open + 1 h), the first instant at which everything in the row is known.
Every value is dimensionless or relative (ratios, log-returns, z-scores, [0, 1] scales),
so that a model trained on one symbol or price level carries over to another; the only
exceptions are the two tick-generator diagnostics, ``spread_mean_points`` and
``tick_count``, which no model is meant to see (see :data:`MODEL_FEATURES`).

Warm-up counts closed bars of the feature's own timeframe, *including* the bar of the
row: ``warmup_bars = 2`` means the second bar's row is the first with a value. Before
that the value is NaN, never a stand-in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from quantmesh.services.features.sessions import SESSIONS

SCHEMA_VERSION = "1"
TIMEFRAME = "H1"  # the bars rows are emitted on; FeatureSchema.timeframe

Timeframe = Literal["H1", "M5", "M1", "time"]


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """Description of one feature column (mirrors ``quantmesh.features.v1.FeatureSpec``).

    Attributes
    ----------
    name:
        Unique lower-snake-case name.
    description:
        What the feature measures and how, for people.
    unit:
        Unit of the value; empty when unitless.
    warmup_bars:
        Closed bars of ``timeframe`` needed before the value is defined (the row's own
        bar included). 0 for features of the clock alone.
    timeframe:
        Bars the feature is computed from: ``H1``, ``M5``, ``M1``, or ``time`` for
        features of the row time only.
    model_input:
        Whether a model may learn from it; see :data:`MODEL_FEATURES`.
    """

    name: str
    description: str
    unit: str
    warmup_bars: int
    timeframe: Timeframe
    model_input: bool


def _h1(name: str, description: str, unit: str, warmup: int) -> FeatureSpec:
    return FeatureSpec(name, description, unit, warmup, "H1", model_input=True)


def _clock(name: str, description: str) -> FeatureSpec:
    return FeatureSpec(name, description, "", 0, "time", model_input=True)


def _intrabar(name: str, description: str, unit: str, warmup: int, tf: Timeframe) -> FeatureSpec:
    return FeatureSpec(name, description, unit, warmup, tf, model_input=False)


FEATURE_SPECS: tuple[FeatureSpec, ...] = (
    _h1("log_return_1", "ln(close / previous close) of H1 ask closes.", "log-return", 2),
    _h1("log_return_4", "ln(close / close 4 bars earlier) of H1 ask closes.", "log-return", 5),
    _h1(
        "close_ema_10_gap",
        "(close - EMA10(close)) / close; the EMA is seeded with the SMA of its first 10 "
        "closes, then alpha = 2/11.",
        "ratio",
        10,
    ),
    _h1(
        "close_ema_30_gap",
        "(close - EMA30(close)) / close; seeded with the SMA of its first 30 closes, alpha = 2/31.",
        "ratio",
        30,
    ),
    _h1("ema_10_30_ratio", "EMA10(close) / EMA30(close) - 1.", "ratio", 30),
    _h1(
        "rsi_14",
        "Wilder's RSI(14) / 100: avg gain / (avg gain + avg loss) of close changes, each "
        "average seeded with the mean of the first 14 changes then smoothed with 1/14; "
        "0.5 when both averages are 0.",
        "ratio",
        15,
    ),
    _h1(
        "atr_14_rel",
        "Wilder's ATR(14) / close. True range max(high-low, |high-prev close|, "
        "|low-prev close|) from the second bar; seeded with the mean of the first 14.",
        "ratio",
        15,
    ),
    _h1(
        "adx_14",
        "Wilder's ADX(14) / 100: Wilder average (seeded with the mean of the first 14) of "
        "DX = |+DI - -DI| / (+DI + -DI), with +DI, -DI from Wilder-smoothed directional "
        "movement over ATR(14); DX is 0 when both DIs are 0.",
        "ratio",
        28,
    ),
    _h1(
        "volatility_20",
        "Sample standard deviation (ddof 1) of the last 20 H1 log returns.",
        "log-return",
        21,
    ),
    _h1(
        "zscore_20",
        "(close - SMA20(close)) / std20(close), population std (ddof 0, Bollinger); 0 when "
        "the 20 closes are all equal.",
        "z-score",
        20,
    ),
    _clock("hour_sin", "sin(2*pi*h/24), h the UTC hour of day of the row time (the bar end)."),
    _clock("hour_cos", "cos(2*pi*h/24), h the UTC hour of day of the row time (the bar end)."),
    *(_clock(session.column, session.describe()) for session in SESSIONS),
    _intrabar(
        "m5_rsi_14",
        "Wilder's RSI(14) / 100 of M5 ask closes, at the last M5 bar of the hour. Warm-up "
        "in M5 bars.",
        "ratio",
        15,
        "M5",
    ),
    _intrabar(
        "m1_realized_vol_60",
        "sqrt(sum of squared M1 close-to-close log returns) over the last 60 M1 returns at "
        "the H1 close. Warm-up in M1 bars.",
        "log-return",
        61,
        "M1",
    ),
    _intrabar(
        "spread_mean_points",
        "Mean ask - bid of the ticks of the H1 bar.",
        "points",
        1,
        "H1",
    ),
    _intrabar("tick_count", "Number of ticks in the H1 bar.", "ticks", 1, "H1"),
    # A price, not a feature: the decision layer sets stops and targets from it.
    FeatureSpec(
        "close_points",
        "Ask close of the H1 bar in integer points of the symbol; the reference price "
        "for stops and targets. Never a model input: a price level does not generalise.",
        "points",
        1,
        "H1",
        model_input=False,
    ),
)

FEATURE_NAMES: tuple[str, ...] = tuple(spec.name for spec in FEATURE_SPECS)

# What a model may train on: features of H1 OHLC and of the clock only. The intrabar
# features (M5 RSI, M1 realized volatility, spread, tick count) are computed from ticks,
# and the shipped ticks come from the synthetic bar-to-tick generator
# (quantmesh.services.marketdata.ticks): within an hour their path, spread and count are
# seeded noise, not market observations. A model fitted to them would learn the generator.
MODEL_FEATURES: tuple[str, ...] = tuple(spec.name for spec in FEATURE_SPECS if spec.model_input)

FEATURE_INDEX: dict[str, int] = {name: i for i, name in enumerate(FEATURE_NAMES)}

if len(FEATURE_INDEX) != len(FEATURE_NAMES):  # pragma: no cover - a schema edit gone wrong
    raise RuntimeError("feature names must be unique")


def schema_digest(names: Sequence[str] = FEATURE_NAMES) -> str:
    """SHA-256 of the feature names joined with ``\\n``, as lower-case hex.

    This is ``FeatureSchema.digest`` of the contract (``bytes.fromhex`` of it): the names
    in schema order and nothing else. The version travels beside it in its own field.

    Parameters
    ----------
    names:
        Feature names in column order; by default the whole schema.

    Returns
    -------
    str
        64 hex digits.
    """
    return hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()


def feature_columns(names: Sequence[str]) -> np.ndarray:
    """Column indices of ``names`` in :data:`FEATURE_NAMES`; KeyError for an unknown name."""
    return np.array([FEATURE_INDEX[name] for name in names], dtype=np.intp)


# eq=False: the fields are numpy arrays, for which a generated __eq__ would fail.
@dataclass(frozen=True, slots=True, eq=False)
class FeatureRows:
    """Feature rows as columns of equal length; every field has one entry per row.

    Attributes
    ----------
    symbol_index:
        uint32 index into the engine's symbol list.
    time_msc:
        int64 UTC epoch ms at which the row is complete: the H1 bar's end.
    bar_open_ms:
        int64 UTC epoch ms of the H1 bar's open (``time_msc - 3_600_000``).
    values:
        float64 ``(rows, n_features)``, C-contiguous (streamed flattened, row-major).
        Column ``j`` is :data:`FEATURE_NAMES` ``[j]``. NaN while warming up.
    session_mask:
        uint32 OR of session flags open at ``time_msc`` (Sydney 1, Tokyo 2, London 4,
        New York 8).
    regime:
        uint8 ``quantmesh.features.v1.Regime`` value; 0 during warm-up.
    tick_seq_first, tick_seq_last:
        int64 seqs, on the tick stream, of the first and last tick of the bar; -1 for
        rows computed from bars rather than ticks.
    """

    symbol_index: np.ndarray
    time_msc: np.ndarray
    bar_open_ms: np.ndarray
    values: np.ndarray
    session_mask: np.ndarray
    regime: np.ndarray
    tick_seq_first: np.ndarray
    tick_seq_last: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.time_msc)
        if self.values.ndim != 2 or not self.values.flags.c_contiguous:
            raise ValueError("values must be a C-contiguous 2-D array")
        columns = (
            self.symbol_index,
            self.bar_open_ms,
            self.values,
            self.session_mask,
            self.regime,
            self.tick_seq_first,
            self.tick_seq_last,
        )
        if any(len(column) != n for column in columns):
            raise ValueError("FeatureRows columns must all have the same length")

    def __len__(self) -> int:
        return len(self.time_msc)

    @property
    def n_features(self) -> int:
        """Number of feature columns."""
        return int(self.values.shape[1])

    def column(self, name: str) -> np.ndarray:
        """The values of feature ``name`` (a view); KeyError for an unknown name."""
        return self.values[:, FEATURE_INDEX[name]]

    def select(self, names: Sequence[str]) -> np.ndarray:
        """``(rows, len(names))`` C-contiguous values of ``names``, in that order."""
        return np.ascontiguousarray(self.values[:, feature_columns(names)])

    @classmethod
    def empty(cls, n_features: int = len(FEATURE_NAMES)) -> FeatureRows:
        """No rows, with ``n_features`` columns."""
        none = np.zeros(0, np.int64)
        return cls(
            symbol_index=np.zeros(0, np.uint32),
            time_msc=none,
            bar_open_ms=none.copy(),
            values=np.zeros((0, n_features), np.float64),
            session_mask=np.zeros(0, np.uint32),
            regime=np.zeros(0, np.uint8),
            tick_seq_first=none.copy(),
            tick_seq_last=none.copy(),
        )

    @classmethod
    def concat(cls, parts: Sequence[FeatureRows], n_features: int | None = None) -> FeatureRows:
        """The rows of ``parts``, in order (a part itself when it is the only non-empty one).

        Parameters
        ----------
        parts:
            Rows with the same number of feature columns.
        n_features:
            Columns of the result when ``parts`` has no rows; by default the schema's.
        """
        full = [part for part in parts if len(part)]
        if not full:
            width = n_features if n_features is not None else len(FEATURE_NAMES)
            if parts:
                width = parts[0].n_features
            return cls.empty(width)
        if len(full) == 1:
            return full[0]
        return cls(
            symbol_index=np.concatenate([p.symbol_index for p in full]),
            time_msc=np.concatenate([p.time_msc for p in full]),
            bar_open_ms=np.concatenate([p.bar_open_ms for p in full]),
            values=np.concatenate([p.values for p in full], axis=0),
            session_mask=np.concatenate([p.session_mask for p in full]),
            regime=np.concatenate([p.regime for p in full]),
            tick_seq_first=np.concatenate([p.tick_seq_first for p in full]),
            tick_seq_last=np.concatenate([p.tick_seq_last for p in full]),
        )

    def take(self, index: np.ndarray) -> FeatureRows:
        """Rows at ``index`` (integer indices or a boolean mask), as copies."""
        return FeatureRows(
            symbol_index=self.symbol_index[index],
            time_msc=self.time_msc[index],
            bar_open_ms=self.bar_open_ms[index],
            values=np.ascontiguousarray(self.values[index]),
            session_mask=self.session_mask[index],
            regime=self.regime[index],
            tick_seq_first=self.tick_seq_first[index],
            tick_seq_last=self.tick_seq_last[index],
        )

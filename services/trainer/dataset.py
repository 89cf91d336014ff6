"""Training rows: features known at each H1 bar close, labelled with the next move.

A row ``t`` is one closed H1 bar. Its features use only ticks up to the bar's end
(``times[t]``); its label is ``y[t] = 1`` if ``close[t + h] > close[t]`` (``h`` =
``horizon_bars``; equal closes count as not up), which becomes known at
``label_times[t]``, the end of bar ``t + h``. Rows whose label is undefined (the last
``h`` bars) or whose features are NaN (indicator warm-up) are dropped, never filled.
Walk-forward splits use ``label_times`` to purge training rows whose label would reach
into a test window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantmesh.services.features.engine import FeatureEngine
from quantmesh.services.features.schema import MODEL_FEATURES, SCHEMA_VERSION, FeatureRows
from quantmesh.services.marketdata.sources import EURUSD, ReplaySource

__all__ = ["Dataset", "build_dataset", "load_dataset"]


# eq=False: the fields are numpy arrays.
@dataclass(frozen=True, eq=False)
class Dataset:
    """Model-ready rows, oldest first, as columns of equal length.

    Attributes
    ----------
    times:
        int64 UTC epoch ms when each row's features are known (its bar's end).
    X:
        float32 ``[rows, len(feature_names)]`` raw (unscaled) features, all finite.
    y:
        int64 labels: 1 if the close ``horizon_bars`` bars ahead is above this close.
    feature_names:
        Column names of ``X``.
    closes:
        float64 close price of each row's bar.
    label_times:
        int64 UTC epoch ms when each label is known (end of bar ``t + horizon_bars``).
    prev_move:
        float64 ``close[t] - close[t - 1]``: the last move, for the persistence baseline.
    horizon_bars:
        Prediction horizon in bars.
    schema:
        Version of the feature schema the columns come from (``FeatureSchema.version``).
    """

    times: np.ndarray
    X: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]
    closes: np.ndarray
    label_times: np.ndarray
    prev_move: np.ndarray
    horizon_bars: int = 1
    schema: str = ""

    def __post_init__(self) -> None:
        n = len(self.times)
        columns = (self.X, self.y, self.closes, self.label_times, self.prev_move)
        if any(len(column) != n for column in columns):
            raise ValueError("Dataset columns must all have the same length")
        if self.X.shape[1:] != (len(self.feature_names),):
            raise ValueError(f"X has shape {self.X.shape}, expected {len(self.feature_names)} cols")

    def __len__(self) -> int:
        return len(self.times)

    def rows(self, index: np.ndarray | slice) -> Dataset:
        """The rows at ``index`` (a slice or sorted indices), as a new Dataset."""
        return Dataset(
            self.times[index],
            self.X[index],
            self.y[index],
            self.feature_names,
            self.closes[index],
            self.label_times[index],
            self.prev_move[index],
            self.horizon_bars,
            self.schema,
        )


def build_dataset(
    bar_end_ms: np.ndarray,
    closes: np.ndarray,
    features: np.ndarray,
    feature_names: tuple[str, ...],
    horizon_bars: int,
    schema: str = "",
) -> Dataset:
    """Label consecutive bars and drop the rows that cannot be used.

    Parameters
    ----------
    bar_end_ms:
        int64 end time of each bar (when its close and features are known), increasing.
    closes:
        Close price of each bar.
    features:
        ``[bars, features]``, computed from data up to each bar's end; NaN in warm-up.
    feature_names:
        Column names of ``features``.
    horizon_bars:
        ``h``: the label compares the close ``h`` bars ahead with this one.
    schema:
        Version of the feature schema.

    Returns
    -------
    Dataset
        Only rows with finite features, a defined label and a previous close.
    """
    if horizon_bars < 1:
        raise ValueError(f"horizon_bars must be >= 1, got {horizon_bars}")
    n = len(closes)
    closes = np.asarray(closes, np.float64)
    h = horizon_bars
    future = np.full(n, np.nan)
    future[: max(n - h, 0)] = closes[h:]
    label_times = np.full(n, -1, np.int64)
    label_times[: max(n - h, 0)] = bar_end_ms[h:]
    prev_move = np.full(n, np.nan)
    prev_move[1:] = np.diff(closes)
    keep = np.isfinite(features).all(axis=1) & np.isfinite(future) & np.isfinite(prev_move)
    return Dataset(
        times=np.asarray(bar_end_ms, np.int64)[keep],
        X=np.ascontiguousarray(features[keep], dtype=np.float32),
        y=(future[keep] > closes[keep]).astype(np.int64),
        feature_names=tuple(feature_names),
        closes=closes[keep],
        label_times=label_times[keep],
        prev_move=prev_move[keep],
        horizon_bars=h,
        schema=schema,
    )


def load_dataset(horizon_bars: int = 1, *, replay: ReplaySource | None = None) -> Dataset:
    """EUR/USD H1 rows for a ``horizon_bars`` direction model, features as served.

    The features are computed exactly as the live pipeline computes them: the
    :class:`~quantmesh.services.features.engine.FeatureEngine` runs over the replay's
    ticks, and the :data:`~quantmesh.services.features.schema.MODEL_FEATURES` columns are
    kept. Labels come from the H1 ask closes the replay's ticks follow (the last tick of
    each bar is its close), matched to the rows by bar open time.

    Parameters
    ----------
    horizon_bars:
        Prediction horizon in bars.
    replay:
        Tick source; by default :meth:`ReplaySource.eurusd` (the shipped 2017 bars).
    """
    replay = replay or ReplaySource.eurusd()
    engine = FeatureEngine([EURUSD])
    parts = [engine.on_ticks(batch) for batch in replay.read([EURUSD.name], batch_size=10_000)]
    rows = FeatureRows.concat([*parts, engine.finish()])
    bars = replay.bars(EURUSD.name)
    at = np.searchsorted(bars.time_ms, rows.bar_open_ms).clip(0, max(len(bars) - 1, 0))
    if len(rows) == 0 or not np.array_equal(bars.time_ms[at], rows.bar_open_ms):
        raise ValueError("feature rows do not line up with the replay's H1 bars")
    return build_dataset(
        rows.time_msc,
        bars.close[at] * EURUSD.point,
        rows.select(MODEL_FEATURES),
        MODEL_FEATURES,
        horizon_bars,
        schema=SCHEMA_VERSION,
    )

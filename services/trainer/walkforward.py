"""Walk-forward evaluation: train on the past, test on the next window, roll forward.

The rows after the first ``min_train_fraction`` of the data are cut into ``folds``
consecutive test windows of (nearly) equal size. Fold ``k`` trains on the rows before
its test window (all of them with ``window="expanding"``; the last ``train_rows`` with
``window="rolling"``) and tests on the window. Training rows whose label is only known
after the test window starts (``label_times > times[first test row]``, the last
``horizon_bars - 1`` rows) are purged, so no test-period price leaks into training.
The scaler, early stopping and the logistic baseline all see training rows only, and
the hyper-parameters are fixed: nothing is tuned on a test window.

Overall out-of-sample metrics pool the predictions of all test windows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from quantmesh.services.trainer.dataset import Dataset
from quantmesh.services.trainer.evaluation import Metrics, baseline_predictions, score_all
from quantmesh.services.trainer.model import EpochLog, HyperParams, fit_direction_model

__all__ = ["Fold", "FoldResult", "WalkForwardResult", "run_walk_forward", "walk_forward_folds"]

Window = Literal["expanding", "rolling"]
MIN_TRAIN_ROWS = 100
MIN_TEST_ROWS = 10


@dataclass(frozen=True, eq=False)
class Fold:
    """Row indices of one walk-forward window: train strictly before test."""

    index: int
    train: np.ndarray
    test: np.ndarray


def walk_forward_folds(
    times: np.ndarray,
    label_times: np.ndarray,
    folds: int,
    *,
    min_train_fraction: float = 0.4,
    window: Window = "expanding",
    train_rows: int | None = None,
) -> list[Fold]:
    """Cut rows (oldest first) into walk-forward folds.

    Parameters
    ----------
    times, label_times:
        When each row's features and label are known (UTC epoch ms), increasing.
    folds:
        Number of test windows.
    min_train_fraction:
        Share of the rows before the first test window.
    window:
        ``expanding`` trains on everything before the test window; ``rolling`` on the
        last ``train_rows`` rows before it.
    train_rows:
        Rolling window length (default: the first training window's length).

    Raises
    ------
    ValueError
        For too few rows: each fold needs 100 training and 10 test rows.
    """
    n = len(times)
    if folds < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    if not 0.0 < min_train_fraction < 1.0:
        raise ValueError(f"min_train_fraction must be in (0, 1), got {min_train_fraction}")
    first_test = int(n * min_train_fraction)
    bounds = np.linspace(first_test, n, folds + 1).round().astype(np.int64)
    if np.diff(bounds).min() < MIN_TEST_ROWS:
        raise ValueError(f"{n} rows are too few for {folds} test windows of >= {MIN_TEST_ROWS}")
    width = train_rows if train_rows is not None else first_test
    out = []
    for k in range(folds):
        test_start, test_end = int(bounds[k]), int(bounds[k + 1])
        train_start = 0 if window == "expanding" else max(0, test_start - width)
        candidates = np.arange(train_start, test_start)
        # Purge: a label that is only known inside the test window must not be learned.
        train = candidates[label_times[candidates] <= times[test_start]]
        if len(train) < MIN_TRAIN_ROWS:
            raise ValueError(f"fold {k} has {len(train)} training rows; {MIN_TRAIN_ROWS} needed")
        out.append(Fold(k, train, np.arange(test_start, test_end)))
    return out


@dataclass
class FoldResult:
    """One fold's windows, training summary and out-of-sample metrics.

    Window times are UTC epoch ms: a window runs from its first row's time (when the
    first prediction is made) to its last row's label time (when the last label used is
    known), so ``train_to_ms <= test_from_ms`` always holds.

    ``metrics`` maps ``model`` and each baseline name to its scores on the test rows;
    ``predictions`` holds the same predictors' test outputs, for pooling.
    """

    index: int
    train_from_ms: int
    train_to_ms: int
    test_from_ms: int
    test_to_ms: int
    train_rows: int
    test_rows: int
    epochs: int
    best_epoch: int
    scaler_mean: np.ndarray
    metrics: dict[str, Metrics]
    predictions: dict[str, tuple[str, np.ndarray]] = field(repr=False)
    y_test: np.ndarray = field(repr=False)


@dataclass
class WalkForwardResult:
    """All folds and the pooled out-of-sample metrics of every predictor."""

    folds: list[FoldResult]
    overall: dict[str, Metrics]


# (fold index, epoch log), then (fold index, None) when the fold is done.
ProgressFn = Callable[[int, EpochLog | None], None]


def run_walk_forward(
    data: Dataset,
    folds: list[Fold],
    hp: HyperParams,
    seed: int,
    confidence: float,
    on_progress: ProgressFn | None = None,
) -> WalkForwardResult:
    """Train and evaluate the model and the baselines on every fold.

    Fold ``k`` seeds its model with ``seed + k``, so folds are independent and a rerun
    with the same seed reproduces every number.
    """
    results = []
    for fold in folds:
        train, test = data.rows(fold.train), data.rows(fold.test)

        def epoch_hook(log: EpochLog, k: int = fold.index) -> None:
            if on_progress is not None:
                on_progress(k, log)

        fit = fit_direction_model(
            train.X, train.y, train.times, train.label_times, hp, seed + fold.index, epoch_hook
        )
        predictions = {"model": ("p", fit.model.predict(test.X))}
        predictions |= baseline_predictions(train.X, train.y, test.X, test.prev_move, seed)
        mean = fit.model.get_buffer("mean").numpy().reshape(-1).astype(np.float64)
        results.append(
            FoldResult(
                index=fold.index,
                train_from_ms=int(train.times[0]),
                train_to_ms=int(train.label_times[-1]),
                test_from_ms=int(test.times[0]),
                test_to_ms=int(test.label_times[-1]),
                train_rows=len(train),
                test_rows=len(test),
                epochs=len(fit.history),
                best_epoch=fit.best_epoch,
                scaler_mean=mean,
                metrics=score_all(test.y, predictions, confidence),
                predictions=predictions,
                y_test=test.y,
            )
        )
        if on_progress is not None:
            on_progress(fold.index, None)
    return WalkForwardResult(results, pool(results, confidence))


def pool(results: list[FoldResult], confidence: float) -> dict[str, Metrics]:
    """Metrics of every predictor over all test windows together."""
    y = np.concatenate([r.y_test for r in results])
    pooled = {
        name: (kind, np.concatenate([r.predictions[name][1] for r in results]))
        for name, (kind, _) in results[0].predictions.items()
    }
    return score_all(y, pooled, confidence)

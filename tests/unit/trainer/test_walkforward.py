"""Walk-forward windows see only the past; scaler, validation and baselines see train rows."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
import pytest

from quantmesh.services.trainer import evaluation, model
from quantmesh.services.trainer.model import HyperParams
from quantmesh.services.trainer.walkforward import run_walk_forward, walk_forward_folds

H1 = 3_600_000


def hourly(rows: int, horizon: int = 1) -> tuple[np.ndarray, np.ndarray]:
    times = H1 * np.arange(1, rows + 1, dtype=np.int64)
    return times, times + horizon * H1


@pytest.mark.parametrize("horizon", [1, 3, 24])
@pytest.mark.parametrize("window", ["expanding", "rolling"])
def test_every_fold_trains_strictly_before_it_tests(horizon: int, window: Any) -> None:
    times, label_times = hourly(3_000, horizon)
    folds = walk_forward_folds(times, label_times, 8, window=window)
    assert len(folds) == 8
    for fold in folds:
        assert fold.train.max() < fold.test.min()
        assert times[fold.train].max() < times[fold.test].min()
        # No training label is known only after the test window has begun.
        assert label_times[fold.train].max() <= times[fold.test[0]]
        assert np.all(np.diff(fold.test) == 1)


def test_test_windows_tile_the_data_after_the_first_training_window() -> None:
    times, label_times = hourly(2_000)
    folds = walk_forward_folds(times, label_times, 5, min_train_fraction=0.5)
    assert folds[0].test[0] == 1_000
    assert folds[-1].test[-1] == 1_999
    for before, after in pairwise(folds):
        assert after.test[0] == before.test[-1] + 1
    assert sum(len(f.test) for f in folds) == 1_000


def test_expanding_windows_start_at_the_beginning_and_rolling_ones_keep_their_length() -> None:
    times, label_times = hourly(2_000)
    expanding = walk_forward_folds(times, label_times, 4)
    rolling = walk_forward_folds(times, label_times, 4, window="rolling", train_rows=500)
    assert all(f.train[0] == 0 for f in expanding)
    assert [len(f.train) for f in expanding] == sorted(len(f.train) for f in expanding)
    assert all(len(f.train) == 500 for f in rolling)
    assert all(f.train[-1] == f.test[0] - 1 for f in rolling)


def test_training_rows_whose_label_reaches_into_the_test_window_are_purged() -> None:
    times, label_times = hourly(1_000, horizon=5)
    (fold,) = walk_forward_folds(times, label_times, 1, min_train_fraction=0.5)
    assert fold.test[0] == 500
    assert fold.train[-1] == 495  # rows 496..499 learn closes of test-period bars


def test_too_little_data_for_the_folds_is_refused() -> None:
    times, label_times = hourly(300)
    with pytest.raises(ValueError, match="too few"):
        walk_forward_folds(times, label_times, 50)
    with pytest.raises(ValueError, match="training rows"):
        walk_forward_folds(times, label_times, 2, min_train_fraction=0.1)


def test_the_scaler_validation_and_baselines_never_see_test_rows(
    synthetic: Any, fast_hp: HyperParams, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = synthetic(rows=1_500, horizon=2)
    folds = walk_forward_folds(data.times, data.label_times, 4)
    seen: dict[str, list[np.ndarray]] = {"scaler": [], "logistic": [], "fit": []}

    def spy(name: str, real: Any) -> Any:
        def wrapper(X: np.ndarray, *args: Any, **kwargs: Any) -> Any:
            seen[name].append(X[:, 0].astype(np.int64))  # column 0 is the row number
            return real(X, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(model, "fit_scaler", spy("scaler", model.fit_scaler))
    monkeypatch.setattr(evaluation, "fit_logistic", spy("logistic", evaluation.fit_logistic))
    result = run_walk_forward(data, folds, fast_hp, seed=1, confidence=0.05)

    assert len(seen["scaler"]) == len(seen["logistic"]) == len(folds)
    for fold, scaled, logistic, fold_result in zip(
        folds, seen["scaler"], seen["logistic"], result.folds, strict=True
    ):
        assert set(scaled) < set(fold.train)  # a strict subset: validation rows held out
        assert scaled.max() < fold.test.min()
        # Validation is the END of the training window, purged like a test window.
        held_out = np.setdiff1d(fold.train, scaled)
        assert held_out.min() > scaled.max()
        assert np.array_equal(logistic, fold.train)
        assert fold_result.train_to_ms <= fold_result.test_from_ms
        expected_mean = data.X[scaled].astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(fold_result.scaler_mean, expected_mean, rtol=1e-6)


def test_model_and_baselines_are_scored_on_the_same_test_rows(
    synthetic: Any, fast_hp: HyperParams
) -> None:
    data = synthetic(rows=1_200)
    folds = walk_forward_folds(data.times, data.label_times, 3)
    result = run_walk_forward(data, folds, fast_hp, seed=3, confidence=0.05)
    names = {"model", "always_up", "majority", "previous_move", "logistic"}
    for fold, fold_result in zip(folds, result.folds, strict=True):
        assert set(fold_result.metrics) == names
        assert {m.samples for m in fold_result.metrics.values()} == {len(fold.test)}
        up_rate = data.y[fold.test].mean()
        assert fold_result.metrics["always_up"].accuracy == pytest.approx(up_rate)
    assert result.overall["model"].samples == sum(len(f.test) for f in folds)


def test_a_learnable_signal_is_learned_out_of_sample(synthetic: Any) -> None:
    data = synthetic(rows=1_200, signal=3.0, numbered=False)
    folds = walk_forward_folds(data.times, data.label_times, 2)
    hp = HyperParams(hidden=(16,), batch_size=32, max_epochs=30, patience=8)
    result = run_walk_forward(data, folds, hp, seed=0, confidence=0.05)
    # The Bayes accuracy is 1 - atan(1/3)/pi, about 0.90; logistic regression gets there.
    assert result.overall["model"].accuracy > 0.85
    assert result.overall["model"].accuracy > result.overall["always_up"].accuracy + 0.3
    assert result.overall["model"].log_loss < 0.4
    assert result.overall["model"].coverage > 0.5


def test_the_same_seed_reproduces_every_number(synthetic: Any, fast_hp: HyperParams) -> None:
    data = synthetic(rows=1_000)
    folds = walk_forward_folds(data.times, data.label_times, 2)
    first = run_walk_forward(data, folds, fast_hp, seed=11, confidence=0.05)
    second = run_walk_forward(data, folds, fast_hp, seed=11, confidence=0.05)
    assert first.overall == second.overall
    assert [f.metrics for f in first.folds] == [f.metrics for f in second.folds]
    for a, b in zip(first.folds, second.folds, strict=True):
        np.testing.assert_array_equal(a.predictions["model"][1], b.predictions["model"][1])

"""Training rows: served features, next-move labels, nothing filled, nothing from the future."""

from __future__ import annotations

import numpy as np

from quantmesh.services.features.schema import MODEL_FEATURES, SCHEMA_VERSION
from quantmesh.services.trainer.dataset import Dataset, build_dataset

H1 = 3_600_000


def test_rows_carry_the_model_features_of_the_feature_engine(real_data: Dataset) -> None:
    assert real_data.feature_names == MODEL_FEATURES
    assert real_data.X.dtype == np.float32
    assert np.isfinite(real_data.X).all()
    assert np.all(np.diff(real_data.times) > 0)
    assert real_data.times[0] % H1 == 0
    assert real_data.schema == SCHEMA_VERSION
    # 2017 has 6,225 H1 bars: the warm-up rows and the last (unlabelled) one are dropped.
    assert 6_100 < len(real_data) < 6_225


def test_labels_compare_the_next_close_with_this_one(real_data: Dataset) -> None:
    closes, y = real_data.closes, real_data.y
    assert np.array_equal(y[:-1], (closes[1:] > closes[:-1]).astype(np.int64))
    assert np.array_equal(real_data.label_times[:-1], real_data.times[1:])
    assert np.array_equal(real_data.prev_move[1:], np.diff(closes))
    assert set(np.unique(y)) == {0, 1}
    assert 0.45 < y.mean() < 0.55


def test_labels_use_the_prices_the_features_are_computed_from(real_data: Dataset) -> None:
    log_return = real_data.X[:, real_data.feature_names.index("log_return_1")]
    np.testing.assert_allclose(log_return[1:], np.diff(np.log(real_data.closes)), atol=1e-7)


def test_warm_up_and_unlabelled_rows_are_dropped_never_filled() -> None:
    bars = 12
    end = H1 * np.arange(1, bars + 1, dtype=np.int64)
    closes = 1.0 + 0.01 * np.array([0, 1, 3, 2, 2, 5, 4, 6, 7, 5, 8, 9], np.float64)
    features = np.arange(bars, dtype=np.float64).reshape(-1, 1)
    features[:3] = np.nan  # warm-up
    data = build_dataset(end, closes, features, ("x",), horizon_bars=3)
    # Rows 0-2 lack features; rows 9-11 have no close 3 bars ahead.
    assert data.X[:, 0].tolist() == [3, 4, 5, 6, 7, 8]
    assert data.y.tolist() == [1, 1, 1, 1, 1, 1]
    assert data.label_times.tolist() == (end[6:12]).tolist()
    assert data.horizon_bars == 3


def test_an_equal_close_is_not_an_up_move() -> None:
    end = H1 * np.arange(1, 5, dtype=np.int64)
    data = build_dataset(end, np.array([1.0, 1.0, 1.0, 2.0]), np.zeros((4, 1)), ("x",), 1)
    assert data.y.tolist() == [0, 1]  # the first row has no previous close

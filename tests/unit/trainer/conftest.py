"""Fixtures of the trainer tests: a synthetic dataset with a known signal, the real one."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from quantmesh.services.trainer.dataset import Dataset, load_dataset
from quantmesh.services.trainer.model import HyperParams

H1 = 3_600_000
T0 = 1_483_315_200_000  # 2017-01-02 00:00 UTC

SyntheticFactory = Callable[..., Dataset]


def make_synthetic(
    rows: int = 1_200, horizon: int = 1, signal: float = 3.0, seed: int = 0, numbered: bool = True
) -> Dataset:
    """Hourly rows whose label depends on feature 1; feature 0 is the row number.

    The row number lets a test see exactly which rows a fitted object was given. It is a
    trend no model can extrapolate, so tests of model quality turn it off (``numbered``).
    """
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 4)).astype(np.float32)
    if numbered:
        X[:, 0] = np.arange(rows)
    X[:, 2] *= 1_000.0  # a badly scaled column: the built-in scaler must handle it
    y = (signal * X[:, 1] + rng.normal(size=rows) > 0).astype(np.int64)
    times = T0 + H1 * np.arange(1, rows + 1, dtype=np.int64)
    return Dataset(
        times=times,
        X=X,
        y=y,
        feature_names=("row", "signal", "scaled_noise", "noise"),
        closes=1.1 + np.cumsum(rng.normal(scale=1e-3, size=rows)),
        label_times=times + horizon * H1,
        prev_move=rng.normal(size=rows),
        horizon_bars=horizon,
        schema="synthetic",
    )


@pytest.fixture(scope="session")
def synthetic() -> SyntheticFactory:
    return make_synthetic


@pytest.fixture
def fast_hp() -> HyperParams:
    """Few epochs: the tests check wiring and invariants, not model quality."""
    return HyperParams(hidden=(8,), max_epochs=6, patience=3, batch_size=128)


@pytest.fixture(scope="session")
def real_data() -> Dataset:
    """The real EUR/USD rows, features from the feature engine over the replay ticks."""
    return load_dataset(horizon_bars=1)

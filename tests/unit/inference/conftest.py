"""Fixtures of the inference core tests: two real trained models in a fresh registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quantmesh.services.inference.core import ModelServer
from quantmesh.services.inference.testing import (
    MODEL_NAME,
    TinyModel,
    direction_dataset,
    register_tiny_model,
    train_direction_model,
)
from quantmesh.services.registry.core import ModelRegistry


@pytest.fixture(scope="session")
def champion_model() -> TinyModel:
    return train_direction_model(l2=1.0)


@pytest.fixture(scope="session")
def challenger_model() -> TinyModel:
    return train_direction_model(l2=2_000.0)


@pytest.fixture(scope="session")
def features() -> np.ndarray:
    """Real FP32 feature rows of the shipped data, in the test models' column order."""
    return direction_dataset()[0].astype(np.float32)


@pytest.fixture
def registry(
    tmp_path: Path, champion_model: TinyModel, challenger_model: TinyModel
) -> ModelRegistry:
    """``eurusd-direction`` version 1 is the champion, version 2 the challenger."""
    registry = ModelRegistry(tmp_path / "registry")
    register_tiny_model(registry, MODEL_NAME, champion_model, ["champion"])
    register_tiny_model(registry, MODEL_NAME, challenger_model, ["challenger"])
    return registry


@pytest.fixture
def server(registry: ModelRegistry) -> ModelServer:
    server = ModelServer(registry, cache_size=1_000)
    server.serve(f"{MODEL_NAME}@champion")
    return server

"""The training job: registers an ONNX model with OOS metrics, hash and aliases; reruns agree."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from quantmesh.services.registry.core import ModelRegistry
from quantmesh.services.trainer.dataset import Dataset
from quantmesh.services.trainer.export import onnx_predict
from quantmesh.services.trainer.model import HyperParams
from quantmesh.services.trainer.pipeline import (
    TrainConfig,
    TrainingResult,
    TrainProgress,
    train_model,
)
from quantmesh.services.trainer.report import build_report


@pytest.fixture(scope="module")
def small(real_data: Dataset) -> Dataset:
    return real_data.rows(slice(0, 2_000))


def config(seed: int = 7) -> TrainConfig:
    hyper = HyperParams(hidden=(8,), max_epochs=4, patience=2)
    return TrainConfig(folds=2, seed=seed, hyper=hyper, model_name="test-direction")


@pytest.fixture(scope="module")
def first(small: Dataset, tmp_path_factory: pytest.TempPathFactory) -> TrainingResult:
    registry = ModelRegistry(tmp_path_factory.mktemp("registry"))
    return train_model(config(), registry, data=small)


def test_the_model_is_registered_with_oos_metrics_schema_and_hash(
    first: TrainingResult, small: Dataset
) -> None:
    mv = first.model_version
    assert mv is not None
    assert (mv.name, mv.version, mv.aliases, first.alias) == (
        "test-direction",
        1,
        ("champion",),
        "champion",
    )
    assert mv.sha256 == first.sha256 == hashlib.sha256(first.onnx_bytes).hexdigest()
    assert mv.feature_names == small.feature_names
    assert (mv.data_from_ms, mv.data_to_ms) == (small.times[0], small.label_times[-1])
    overall = first.walk_forward.overall
    assert mv.metrics["accuracy"] == overall["model"].accuracy
    assert mv.metrics["log_loss"] == overall["model"].log_loss
    assert mv.metrics["samples"] == overall["model"].samples
    for baseline in ("always_up", "majority", "previous_move", "logistic"):
        assert mv.metrics[f"baseline_{baseline}_accuracy"] == overall[baseline].accuracy
    assert "baseline_always_up_log_loss" not in mv.metrics  # NaN metrics are left out
    assert mv.params["horizon_bars"] == "1"
    assert mv.params["seed"] == "7"
    assert mv.params["feature_schema_version"] == small.schema == "1"
    assert mv.params["symbol"] == "EURUSD"


def test_the_registered_artifact_predicts_like_the_final_model(
    first: TrainingResult, small: Dataset, tmp_path: Path
) -> None:
    mv = first.model_version
    assert mv is not None
    registry = ModelRegistry(mv.artifact_path.parent.parent)
    onnx_bytes = registry.read_artifact(registry.resolve("test-direction@champion"))
    assert onnx_bytes == first.onnx_bytes
    expected = first.final.model.predict(small.X)
    np.testing.assert_allclose(onnx_predict(onnx_bytes, small.X)[:, 0], expected, atol=1e-6)
    assert first.onnx_max_abs_diff <= 1e-5


def test_a_rerun_with_the_same_seed_reproduces_metrics_and_artifact(
    first: TrainingResult, small: Dataset
) -> None:
    mv = first.model_version
    assert mv is not None
    registry = ModelRegistry(mv.artifact_path.parent.parent)
    again = train_model(config(), registry, data=small)
    assert again.walk_forward.overall == first.walk_forward.overall
    assert [f.metrics for f in again.walk_forward.folds] == [
        f.metrics for f in first.walk_forward.folds
    ]
    assert again.sha256 == first.sha256
    # Same bytes: the registry returns the same version, which stays champion.
    assert again.model_version is not None
    assert again.model_version.version == mv.version
    assert again.alias == "champion"


def test_a_new_model_becomes_challenger_while_a_champion_exists(
    small: Dataset, tmp_path: Path
) -> None:
    registry = ModelRegistry(tmp_path)
    champion = train_model(config(seed=1), registry, data=small)
    challenger = train_model(config(seed=2), registry, data=small)
    assert (champion.alias, challenger.alias) == ("champion", "challenger")
    assert registry.resolve("test-direction@champion").version == 1
    assert registry.resolve("test-direction@challenger").version == 2


def test_progress_covers_every_fold_and_the_final_fit(small: Dataset) -> None:
    events: list[TrainProgress] = []
    threads = torch.get_num_threads()
    train_model(config(), None, data=small, on_progress=events.append)
    done = [(e.stage, e.fold) for e in events if e.log is None]
    assert done == [("fold", 0), ("fold", 1), ("final", 2)]
    assert all(e.log.epoch < 4 for e in events if e.log is not None)
    assert torch.get_num_threads() == threads  # the one-thread setting is restored


def test_the_report_is_strict_json_with_folds_overall_and_artifact(
    first: TrainingResult,
) -> None:
    report = build_report(first, total_seconds=1.5)
    text = json.dumps(report, allow_nan=False)
    loaded = json.loads(text)
    assert len(loaded["folds"]) == 2
    for fold in loaded["folds"]:
        assert fold["train_to_ms"] <= fold["test_from_ms"]
        assert set(fold["metrics"]) == {
            "model",
            "always_up",
            "majority",
            "previous_move",
            "logistic",
        }
    assert loaded["overall"]["always_up"]["log_loss"] is None
    assert loaded["final_model"]["sha256"] == first.sha256
    assert loaded["final_model"]["input"] == {
        "name": "features",
        "dtype": "float32",
        "shape": ["batch", len(first.data.feature_names)],
    }
    assert loaded["final_model"]["registered"]["ref"] == "test-direction:1"
    assert loaded["seconds"]["total"] == 1.5

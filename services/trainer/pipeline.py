"""The training job: walk-forward evaluation, final fit, ONNX export and registration.

1. Load the rows (:func:`~quantmesh.services.trainer.dataset.load_dataset`).
2. Walk forward over them (:mod:`~quantmesh.services.trainer.walkforward`): the model and
   the baselines are scored out of sample on every test window.
3. Fit the final model on ALL rows with the same fixed hyper-parameters (early stopping
   on the last ``val_fraction`` of the rows). The metrics it is registered with are the
   walk-forward ones: the final model itself has no test data left, and a model's
   accuracy is only ever quoted out of sample.
4. Export it to ONNX, check ONNX Runtime against torch on every row, and register it.
   The version becomes ``champion`` if the model has no champion yet (or already is
   it), else ``challenger``: promoting a challenger is a decision for a person or an
   A/B test, never an automatic side effect of training.

Torch runs on one thread (see :func:`~quantmesh.services.trainer.model.torch_threads`).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from quantmesh.runtime.errors import NotFound
from quantmesh.services.features.schema import schema_digest
from quantmesh.services.registry.core import ModelRegistry, ModelVersion
from quantmesh.services.trainer.dataset import Dataset, load_dataset
from quantmesh.services.trainer.evaluation import BASELINES, DEFAULT_CONFIDENCE
from quantmesh.services.trainer.export import OPSET, export_onnx, verify_onnx
from quantmesh.services.trainer.model import (
    EpochLog,
    FitResult,
    HyperParams,
    fit_direction_model,
    torch_threads,
)
from quantmesh.services.trainer.walkforward import (
    WalkForwardResult,
    Window,
    run_walk_forward,
    walk_forward_folds,
)

__all__ = ["TrainConfig", "TrainProgress", "TrainingResult", "registry_metrics", "train_model"]

DEFAULT_MODEL_NAME = "eurusd-h1-direction"


@dataclass(frozen=True)
class TrainConfig:
    """What to train; the defaults are what ``quantmesh train`` runs.

    Attributes
    ----------
    horizon_bars:
        Predict the direction of the close this many H1 bars ahead.
    folds:
        Walk-forward test windows.
    seed:
        Seed of every random draw (fold ``k`` uses ``seed + k``; the final fit ``seed``).
    min_train_fraction:
        Share of the rows before the first test window.
    window:
        ``expanding`` or ``rolling`` training windows.
    hyper:
        Fixed model hyper-parameters.
    confidence:
        ``|p - 0.5|`` from which a call counts for the hit rate.
    model_name, symbol, timeframe:
        Registry name and what the model is for.
    """

    horizon_bars: int = 1
    folds: int = 8
    seed: int = 7
    min_train_fraction: float = 0.4
    window: Window = "expanding"
    hyper: HyperParams = field(default_factory=HyperParams)
    confidence: float = DEFAULT_CONFIDENCE
    model_name: str = DEFAULT_MODEL_NAME
    symbol: str = "EURUSD"
    timeframe: str = "H1"


@dataclass(frozen=True)
class TrainProgress:
    """A progress event: ``stage`` is ``fold`` or ``final``; ``log`` None = stage done."""

    stage: str
    fold: int
    folds: int
    log: EpochLog | None


@dataclass
class TrainingResult:
    """Everything a training job produced."""

    config: TrainConfig
    data: Dataset
    walk_forward: WalkForwardResult
    final: FitResult
    onnx_bytes: bytes
    sha256: str
    onnx_max_abs_diff: float
    model_version: ModelVersion | None
    alias: str | None
    seconds: dict[str, float]


def train_model(
    config: TrainConfig,
    registry: ModelRegistry | None,
    *,
    data: Dataset | None = None,
    on_progress: Callable[[TrainProgress], None] | None = None,
) -> TrainingResult:
    """Run the whole job (see the module docstring) and return its results.

    Parameters
    ----------
    config:
        What to train.
    registry:
        Where to register the model; None to only train and export.
    data:
        Rows to use instead of :func:`load_dataset` (tests pass smaller ones).
    on_progress:
        Called after every epoch and at the end of every fold and of the final fit.
    """
    with torch_threads(1):
        return _train(config, registry, data, on_progress or (lambda _: None))


def _train(
    config: TrainConfig,
    registry: ModelRegistry | None,
    data: Dataset | None,
    emit: Callable[[TrainProgress], None],
) -> TrainingResult:
    clock = time.perf_counter()
    seconds: dict[str, float] = {}
    data = load_dataset(config.horizon_bars) if data is None else data
    seconds["load"] = time.perf_counter() - clock

    folds = walk_forward_folds(
        data.times,
        data.label_times,
        config.folds,
        min_train_fraction=config.min_train_fraction,
        window=config.window,
    )

    def on_fold(fold: int, log: EpochLog | None) -> None:
        emit(TrainProgress("fold", fold, len(folds), log))

    clock = time.perf_counter()
    wf = run_walk_forward(data, folds, config.hyper, config.seed, config.confidence, on_fold)
    seconds["walk_forward"] = time.perf_counter() - clock

    clock = time.perf_counter()
    final = fit_direction_model(
        data.X,
        data.y,
        data.times,
        data.label_times,
        config.hyper,
        config.seed,
        lambda log: emit(TrainProgress("final", len(folds), len(folds), log)),
    )
    emit(TrainProgress("final", len(folds), len(folds), None))
    seconds["final_fit"] = time.perf_counter() - clock

    clock = time.perf_counter()
    onnx_bytes = export_onnx(
        final.model,
        data.feature_names,
        {
            "horizon_bars": str(data.horizon_bars),
            "symbol": config.symbol,
            "timeframe": config.timeframe,
            "feature_schema_version": data.schema,
        },
    )
    diff = verify_onnx(onnx_bytes, final.model, data.X)
    seconds["export"] = time.perf_counter() - clock

    version, alias = None, None
    if registry is not None:
        clock = time.perf_counter()
        version, alias = _register(registry, config, data, wf, final, onnx_bytes)
        seconds["register"] = time.perf_counter() - clock
    sha = hashlib.sha256(onnx_bytes).hexdigest()
    return TrainingResult(config, data, wf, final, onnx_bytes, sha, diff, version, alias, seconds)


def registry_metrics(wf: WalkForwardResult) -> dict[str, float]:
    """The pooled walk-forward metrics as the registry stores them (NaN ones left out).

    The model's are ``accuracy``, ``log_loss``, ``brier_score``, ``hit_rate``,
    ``coverage`` and ``samples``; each baseline's are ``baseline_<name>_<metric>``;
    ``folds`` and ``fold_accuracy_min``/``_max`` tell how stable the accuracy was.
    """
    out: dict[str, float] = {}
    for name, metrics in wf.overall.items():
        prefix = "" if name == "model" else f"baseline_{name}_"
        for key, value in metrics.as_dict().items():
            if key == "samples" and prefix:
                continue
            if not math.isnan(value):
                out[prefix + key] = value
    accuracies = [fold.metrics["model"].accuracy for fold in wf.folds]
    out |= {
        "folds": float(len(wf.folds)),
        "fold_accuracy_min": min(accuracies),
        "fold_accuracy_max": max(accuracies),
    }
    return out


def _register(
    registry: ModelRegistry,
    config: TrainConfig,
    data: Dataset,
    wf: WalkForwardResult,
    final: FitResult,
    onnx_bytes: bytes,
) -> tuple[ModelVersion, str]:
    model = wf.overall["model"]
    best_baseline = max(BASELINES, key=lambda name: wf.overall[name].accuracy)
    description = (
        f"MLP {'x'.join(map(str, config.hyper.hidden))}: P(up) of the {config.symbol} "
        f"{config.timeframe} close {data.horizon_bars} bar(s) ahead. Walk-forward "
        f"out-of-sample accuracy {model.accuracy:.4f} over {model.samples} rows in "
        f"{len(wf.folds)} folds (best baseline: {best_baseline} "
        f"{wf.overall[best_baseline].accuracy:.4f}). Final fit on all rows."
    )
    params = {
        "symbol": config.symbol,
        "timeframe": config.timeframe,
        "horizon_bars": str(data.horizon_bars),
        "feature_schema_version": data.schema,
        "feature_schema_digest": schema_digest(data.feature_names),
        "architecture": "mlp",
        "seed": str(config.seed),
        "folds": str(config.folds),
        "window": config.window,
        "min_train_fraction": str(config.min_train_fraction),
        "confidence": str(config.confidence),
        "final_fit": "all rows; early stopping on the last val_fraction",
        "final_best_epoch": str(final.best_epoch),
        "onnx_opset": str(OPSET),
        "torch_version": torch.__version__,
    } | config.hyper.as_params()
    version = registry.register(
        config.model_name,
        onnx_bytes,
        feature_names=data.feature_names,
        metrics=registry_metrics(wf),
        data_from_ms=int(data.times[0]),
        data_to_ms=int(data.label_times[-1]),
        description=description,
        params=params,
    )
    try:
        champion: ModelVersion | None = registry.get(config.model_name, alias="champion")
    except NotFound:
        champion = None
    alias = "champion" if champion is None or champion.version == version.version else "challenger"
    return registry.set_alias(config.model_name, alias, version.version), alias

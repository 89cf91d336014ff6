"""The training report: a JSON-ready dict of a job's windows, metrics and artifact.

Its shape (all times UTC epoch ms, NaN written as ``null``)::

    {"config": {...},
     "data": {rows, features, feature_names, feature_schema_version, horizon_bars,
              from_ms, to_ms, up_rate},
     "metric_definitions": {...},
     "folds": [{index, train_from_ms, train_to_ms, test_from_ms, test_to_ms, train_rows,
                test_rows, epochs, best_epoch,
                "metrics": {"model": {...}, "always_up": {...}, ...}}, ...],
     "overall": {"model": {...}, "always_up": {...}, ...},
     "final_model": {epochs, best_epoch, sha256, onnx_bytes, onnx_max_abs_diff, input,
                     output, registered: {name, version, alias, ref} | null},
     "seconds": {...}, "versions": {...}}
"""

from __future__ import annotations

import math
import platform
from dataclasses import asdict
from typing import Any

import numpy as np

from quantmesh.services.trainer.evaluation import Metrics
from quantmesh.services.trainer.export import INPUT_NAME, OUTPUT_NAME
from quantmesh.services.trainer.pipeline import TrainingResult

__all__ = ["METRIC_DEFINITIONS", "build_report", "metric_table_rows"]

METRIC_DEFINITIONS = {
    "accuracy": "share of test rows whose direction call (p > 0.5 = up) is right",
    "log_loss": "mean -ln p(label), p clipped to [1e-7, 1-1e-7]; null without probabilities",
    "brier_score": "mean (p - label)^2; null without probabilities",
    "hit_rate": "accuracy among confident rows, |p - 0.5| >= confidence; null if none",
    "coverage": "share of test rows that are confident",
    "samples": "test rows scored",
    "label": "1 if the close horizon_bars ahead is above this bar's close (ties are 0)",
    "always_up": "baseline: always call up",
    "majority": "baseline: the training window's up-rate as a constant probability",
    "previous_move": "baseline: the last bar's move repeats (a flat bar calls down)",
    "logistic": "baseline: L2 logistic regression (C=1) on train-standardized features",
}


def build_report(result: TrainingResult, total_seconds: float | None = None) -> dict[str, Any]:
    """The JSON-ready report of ``result`` (see the module docstring for its shape)."""
    import onnxruntime  # type: ignore[import-untyped]
    import sklearn  # type: ignore[import-untyped]
    import torch

    config, data, wf = result.config, result.data, result.walk_forward
    config_dict = asdict(config)
    config_dict["hyper"]["hidden"] = list(config.hyper.hidden)
    registered = None
    if result.model_version is not None:
        mv = result.model_version
        registered = {
            "name": mv.name,
            "version": mv.version,
            "alias": result.alias,
            "ref": mv.ref,
            "aliases": list(mv.aliases),
        }
    seconds = dict(result.seconds)
    if total_seconds is not None:
        seconds["total"] = total_seconds
    report: dict[str, Any] = _clean(
        {
            "config": config_dict,
            "data": {
                "rows": len(data),
                "features": len(data.feature_names),
                "feature_names": list(data.feature_names),
                "feature_schema_version": data.schema,
                "horizon_bars": data.horizon_bars,
                "from_ms": int(data.times[0]),
                "to_ms": int(data.label_times[-1]),
                "up_rate": float(np.mean(data.y)),
            },
            "metric_definitions": METRIC_DEFINITIONS,
            "folds": [
                {
                    "index": fold.index,
                    "train_from_ms": fold.train_from_ms,
                    "train_to_ms": fold.train_to_ms,
                    "test_from_ms": fold.test_from_ms,
                    "test_to_ms": fold.test_to_ms,
                    "train_rows": fold.train_rows,
                    "test_rows": fold.test_rows,
                    "epochs": fold.epochs,
                    "best_epoch": fold.best_epoch,
                    "metrics": {name: m.as_dict() for name, m in fold.metrics.items()},
                }
                for fold in wf.folds
            ],
            "overall": {name: m.as_dict() for name, m in wf.overall.items()},
            "final_model": {
                "epochs": len(result.final.history),
                "best_epoch": result.final.best_epoch,
                "sha256": result.sha256,
                "onnx_bytes": len(result.onnx_bytes),
                "onnx_max_abs_diff": result.onnx_max_abs_diff,
                "input": {
                    "name": INPUT_NAME,
                    "dtype": "float32",
                    "shape": ["batch", len(data.feature_names)],
                },
                "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", 1]},
                "registered": registered,
            },
            "seconds": seconds,
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "onnxruntime": onnxruntime.__version__,
                "scikit-learn": sklearn.__version__,
            },
        }
    )
    return report


def metric_table_rows(result: TrainingResult) -> list[tuple[str, str, dict[str, Metrics]]]:
    """``(window label, test period, {predictor: metrics})`` per fold, then ``overall``."""
    rows = []
    for fold in result.walk_forward.folds:
        period = f"{_day(fold.test_from_ms)} → {_day(fold.test_to_ms)}"
        rows.append((f"fold {fold.index}", period, fold.metrics))
    folds = result.walk_forward.folds
    period = f"{_day(folds[0].test_from_ms)} → {_day(folds[-1].test_to_ms)}"
    rows.append(("overall", period, result.walk_forward.overall))
    return rows


def _day(ms: int) -> str:
    return str(np.datetime64(ms, "ms").astype("datetime64[D]"))


def _clean(value: Any) -> Any:
    # Strict JSON has no NaN: an undefined metric is written as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    return value

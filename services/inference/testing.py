"""Test and benchmark helper: fit a tiny real direction model and register it.

Not used by the service. Tests and ``bench/inference.py`` need a model that is really
trained on the shipped data (not random weights) yet takes well under a second to build
and needs no torch: a logistic regression of the next H1 bar's direction on log returns
and two more features of the shipped schema (named as the features service names them,
so the model streams), fitted by Newton's method in numpy and written as a three-node
ONNX graph
(MatMul → Add → Sigmoid) with the trainer's signature: input ``features`` FP32
``[N, k]``, output ``probability_up`` FP32 ``[N, 1]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quantmesh.datasets import load_h1_bars
from quantmesh.services.registry.core import ModelRegistry, ModelVersion

MODEL_NAME = "eurusd-h1-direction"  # the name the service serves by default
INPUT_NAME = "features"
OUTPUT_NAME = "probability_up"
# Opset and IR version that every ONNX Runtime of the last few years loads.
OPSET = 17
IR_VERSION = 8


@dataclass(frozen=True)
class TinyModel:
    """A fitted logistic direction model and its ONNX artifact.

    Attributes
    ----------
    onnx_bytes:
        The serialized model.
    feature_names:
        Its inputs in column order, names of :data:`FEATURES`.
    weights, bias:
        Coefficients on the raw (unscaled) features.
    metrics:
        Out-of-sample ``accuracy``, ``baseline_accuracy`` and ``log_loss``.
    data_from_ms, data_to_ms:
        Time range of the bars used, ``[from, to)``.
    """

    onnx_bytes: bytes
    feature_names: tuple[str, ...]
    weights: np.ndarray
    bias: float
    metrics: dict[str, float] = field(default_factory=dict)
    data_from_ms: int = 0
    data_to_ms: int = 1

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """The model's P(up) in numpy (float64), for checking served predictions."""
        z = features.astype(np.float64) @ self.weights + self.bias
        result: np.ndarray = 1.0 / (1.0 + np.exp(-z))
        return result


def _log_returns(close: np.ndarray, lag: int) -> np.ndarray:
    out = np.full(len(close), np.nan)
    out[lag:] = np.log(close[lag:] / close[:-lag])
    return out


def _rolling(values: np.ndarray, window: int) -> np.ndarray:
    """``[n, window]`` trailing windows (NaN-padded at the start)."""
    padded = np.r_[np.full(window - 1, np.nan), values]
    return np.lib.stride_tricks.sliding_window_view(padded, window)


def _volatility_20(close: np.ndarray) -> np.ndarray:
    windows = _rolling(_log_returns(close, 1), 20)
    with np.errstate(invalid="ignore"):
        return np.asarray(np.std(windows, axis=1, ddof=1))


def _zscore_20(close: np.ndarray) -> np.ndarray:
    windows = _rolling(close, 20)
    std = np.std(windows, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (close - windows.mean(axis=1)) / std
    return np.asarray(np.where(std == 0, 0.0, z))


# The features of the shipped schema this helper computes from H1 closes, with the
# definitions of quantmesh.services.features.schema (NaN during warm-up).
FEATURES = {
    "log_return_1": lambda close: _log_returns(close, 1),
    "log_return_4": lambda close: _log_returns(close, 4),
    "volatility_20": _volatility_20,
    "zscore_20": _zscore_20,
}
DEFAULT_FEATURES: tuple[str, ...] = tuple(FEATURES)


def feature_matrix(close: np.ndarray, feature_names: Sequence[str]) -> np.ndarray:
    """``[n, k]`` float64 features of H1 closes, one column per name of :data:`FEATURES`."""
    unknown = [name for name in feature_names if name not in FEATURES]
    if unknown:
        raise ValueError(f"cannot compute {unknown}; this helper knows {list(FEATURES)}")
    prices = close.astype(np.float64)
    return np.column_stack([FEATURES[name](prices) for name in feature_names])


def direction_dataset(
    feature_names: Sequence[str] = DEFAULT_FEATURES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, next-bar direction labels (1 = up) and bar times of the shipped H1 data.

    Warm-up rows (any NaN) and the last bar (it has no next bar) are left out.
    """
    bars = load_h1_bars()
    x = feature_matrix(bars.close, feature_names)
    up = np.r_[np.diff(bars.close) > 0, False].astype(np.float64)
    usable = np.isfinite(x).all(axis=1)
    usable[-1] = False
    return x[usable], up[usable], bars.time_ms[usable]


def fit_logistic(
    x: np.ndarray, y: np.ndarray, l2: float = 1.0, iterations: int = 25
) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method on standardised features."""
    mean, scale = x.mean(axis=0), x.std(axis=0)
    z = np.c_[np.ones(len(x)), (x - mean) / scale]
    beta = np.zeros(z.shape[1])
    penalty = np.diag([0.0, *[l2] * x.shape[1]])  # the intercept is not shrunk
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-z @ beta))
        gradient = z.T @ (p - y) + penalty @ beta
        hessian = (z * (p * (1 - p))[:, None]).T @ z + penalty
        beta -= np.linalg.solve(hessian, gradient)
    # Fold the standardisation into the coefficients: the graph takes raw returns.
    weights = beta[1:] / scale
    bias = float(beta[0] - weights @ mean)
    return weights, bias


def logistic_onnx(weights: np.ndarray, bias: float) -> bytes:
    """ONNX graph ``sigmoid(features @ weights + bias)`` with a dynamic batch dimension."""
    k = len(weights)
    graph = helper.make_graph(
        nodes=[
            helper.make_node("MatMul", [INPUT_NAME, "weights"], ["logit_raw"]),
            helper.make_node("Add", ["logit_raw", "bias"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], [OUTPUT_NAME]),
        ],
        name="direction_logistic",
        inputs=[helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", k])],
        outputs=[helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 1])],
        initializer=[
            numpy_helper.from_array(weights.astype(np.float32).reshape(k, 1), "weights"),
            numpy_helper.from_array(np.array([bias], np.float32), "bias"),
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="quantmesh.services.inference.testing",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def train_direction_model(
    feature_names: Sequence[str] = DEFAULT_FEATURES, l2: float = 1.0, train_fraction: float = 0.7
) -> TinyModel:
    """Fit on the first ``train_fraction`` of the shipped bars, evaluate on the rest.

    Different ``l2`` values give different weights, hence different artifacts: that is
    how tests get a champion and a challenger of the same signature.
    """
    names = tuple(feature_names)
    x, y, time_ms = direction_dataset(names)
    split = int(len(x) * train_fraction)
    weights, bias = fit_logistic(x[:split], y[:split], l2=l2)
    model = TinyModel(logistic_onnx(weights, bias), names, weights, bias)
    p = np.clip(model.probabilities(x[split:]), 1e-12, 1 - 1e-12)
    test = y[split:]
    metrics = {
        "accuracy": float(np.mean((p >= 0.5) == (test == 1))),
        "baseline_accuracy": float(max(test.mean(), 1 - test.mean())),
        "log_loss": float(-np.mean(test * np.log(p) + (1 - test) * np.log(1 - p))),
    }
    return TinyModel(
        model.onnx_bytes,
        names,
        weights,
        bias,
        metrics,
        data_from_ms=int(time_ms[0]),
        data_to_ms=int(time_ms[-1]) + 3_600_000,
    )


def register_tiny_model(
    registry: ModelRegistry, name: str, model: TinyModel, aliases: Sequence[str] = ()
) -> ModelVersion:
    """Register ``model`` as the next version of ``name`` with ``aliases``."""
    return registry.register(
        name,
        model.onnx_bytes,
        feature_names=model.feature_names,
        metrics=model.metrics,
        data_from_ms=model.data_from_ms,
        data_to_ms=model.data_to_ms,
        description="logistic regression of the next H1 direction (inference test helper)",
        params={"trainer": "quantmesh.services.inference.testing", "horizon_bars": "1"},
        aliases=aliases,
    )

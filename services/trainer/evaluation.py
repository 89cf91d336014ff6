"""Out-of-sample metrics of direction predictions, and the naive baselines.

Every predictor is scored on the same test rows with the same functions:

- ``accuracy``: share of rows whose predicted direction (``p > 0.5`` means up) is right;
- ``log_loss``: mean negative log-likelihood of the labels, probabilities clipped to
  ``[1e-7, 1 - 1e-7]``; NaN for a baseline that gives no probability;
- ``brier_score``: mean squared error of ``p`` against the label; NaN likewise;
- ``hit_rate`` and ``coverage``: the model is *confident* on a row when
  ``|p - 0.5| >= confidence`` (default 0.05, i.e. ``p >= 0.55`` or ``p <= 0.45``);
  ``coverage`` is the share of confident rows and ``hit_rate`` the accuracy among them
  (NaN when no row is confident).

Baselines: ``always_up``; ``majority`` (the training window's up-rate as a constant
probability, so its direction is the training majority); ``previous_move`` (the last
bar's move repeats; a flat last bar predicts down, like a flat label); and
``logistic`` (scikit-learn's L2 logistic regression on standardized features, fitted on
the same training window as the model).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["BASELINES", "DEFAULT_CONFIDENCE", "Metrics", "fit_logistic", "score"]

DEFAULT_CONFIDENCE = 0.05
BASELINES = ("always_up", "majority", "previous_move", "logistic")
_EPS = 1e-7


@dataclass(frozen=True)
class Metrics:
    """Scores of one predictor on one set of rows (see the module docstring)."""

    samples: int
    accuracy: float
    log_loss: float
    brier_score: float
    hit_rate: float
    coverage: float

    def as_dict(self) -> dict[str, float]:
        """Plain dict (NaN kept), e.g. for JSON reports."""
        return {k: float(v) for k, v in asdict(self).items()}


def score(
    y: np.ndarray,
    *,
    probability: np.ndarray | None = None,
    direction: np.ndarray | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
) -> Metrics:
    """Score predictions of ``y``: give probabilities of up, or bare directions.

    Parameters
    ----------
    y:
        0/1 labels.
    probability:
        ``P(up)`` per row. The direction is ``p > 0.5``.
    direction:
        0/1 calls, for baselines without a probability (log loss, Brier score, hit rate
        and coverage are then NaN).
    confidence:
        Distance from 0.5 beyond which a probability counts as a confident call.
    """
    y = np.asarray(y, np.float64)
    n = len(y)
    if n == 0:
        return Metrics(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    if probability is None:
        if direction is None:
            raise ValueError("give probability or direction")
        calls = np.asarray(direction, np.float64)
        accuracy = float(np.mean(calls == y))
        return Metrics(n, accuracy, math.nan, math.nan, math.nan, math.nan)
    p = np.asarray(probability, np.float64)
    calls = (p > 0.5).astype(np.float64)
    clipped = np.clip(p, _EPS, 1 - _EPS)
    log_loss = float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)))
    confident = np.abs(p - 0.5) >= confidence
    hits = float(np.mean(calls[confident] == y[confident])) if confident.any() else math.nan
    return Metrics(
        samples=n,
        accuracy=float(np.mean(calls == y)),
        log_loss=log_loss,
        brier_score=float(np.mean((p - y) ** 2)),
        hit_rate=hits,
        coverage=float(np.mean(confident)),
    )


def fit_logistic(X_train: np.ndarray, y_train: np.ndarray, seed: int) -> object:
    """scikit-learn logistic regression (C = 1, L2) on features standardized on train."""
    # scikit-learn ships no type information.
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]
    from sklearn.pipeline import make_pipeline  # type: ignore[import-untyped]
    from sklearn.preprocessing import StandardScaler  # type: ignore[import-untyped]

    model = make_pipeline(
        StandardScaler(), LogisticRegression(C=1.0, max_iter=1_000, random_state=seed)
    )
    model.fit(X_train.astype(np.float64), y_train)
    return model


def baseline_predictions(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    prev_move_test: np.ndarray,
    seed: int,
) -> dict[str, tuple[str, np.ndarray]]:
    """Each baseline's test predictions as ``(kind, values)``, kind "p" or "direction"."""
    up_rate = float(np.mean(y_train))
    logistic = fit_logistic(X_train, y_train, seed)
    p_logistic = logistic.predict_proba(X_test.astype(np.float64))[:, 1]  # type: ignore[attr-defined]
    return {
        "always_up": ("direction", np.ones(len(X_test))),
        "majority": ("p", np.full(len(X_test), up_rate)),
        "previous_move": ("direction", (prev_move_test > 0).astype(np.float64)),
        "logistic": ("p", np.asarray(p_logistic, np.float64)),
    }


def score_all(
    y: np.ndarray,
    predictions: Mapping[str, tuple[str, np.ndarray]],
    confidence: float,
) -> dict[str, Metrics]:
    """Score several predictors (``{name: (kind, values)}``) on the same labels."""
    out = {}
    for name, (kind, values) in predictions.items():
        if kind == "p":
            out[name] = score(y, probability=values, confidence=confidence)
        else:
            out[name] = score(y, direction=values, confidence=confidence)
    return out

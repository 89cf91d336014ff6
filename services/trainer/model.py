"""The direction model (an MLP with its scaler built in) and its seeded training loop.

Hyper-parameters are fixed and documented in :class:`HyperParams`; they are never tuned
on test windows. Training is deterministic for a given seed: the initial weights, the
shuffling and dropout all draw from seeded torch generators, and the loop runs on the
CPU with torch's deterministic algorithms.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

__all__ = [
    "DirectionNet",
    "EpochLog",
    "FitResult",
    "HyperParams",
    "fit_direction_model",
    "torch_threads",
]


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads, then restore the setting.

    Training uses one: for an MLP this small, thread hand-offs cost more than they save
    (measured on the 2-core box: 5.8 s with one thread, 6.8 s with two, for 8 folds), and
    spinning OpenMP workers fight with those of scikit-learn and ONNX Runtime.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class HyperParams:
    """Fixed hyper-parameters of the direction MLP (chosen a priori, not tuned on tests).

    Attributes
    ----------
    hidden:
        Widths of the hidden layers (ReLU).
    dropout:
        Dropout after each hidden layer: H1 returns are mostly noise, so a small net
        with some regularization is the honest starting point.
    lr, weight_decay:
        AdamW learning rate and decoupled weight decay.
    batch_size:
        Mini-batch rows.
    max_epochs, patience:
        Early stopping: stop after ``patience`` epochs without a better validation loss
        and keep the best epoch's weights.
    val_fraction:
        Share of each training window, taken from its END, used for early stopping.
    """

    hidden: tuple[int, ...] = (32, 16)
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 256
    max_epochs: int = 60
    patience: int = 8
    val_fraction: float = 0.15

    def as_params(self) -> dict[str, str]:
        """String form for the registry's params."""
        return {
            "hidden": "x".join(map(str, self.hidden)),
            "dropout": str(self.dropout),
            "lr": str(self.lr),
            "weight_decay": str(self.weight_decay),
            "batch_size": str(self.batch_size),
            "max_epochs": str(self.max_epochs),
            "patience": str(self.patience),
            "val_fraction": str(self.val_fraction),
        }


class DirectionNet(nn.Module):
    """``P(up)`` from raw features: standardize, MLP, sigmoid.

    The scaler's mean and std are buffers of the module, so the exported graph takes raw
    features and no caller can forget (or mis-apply) the scaling.
    """

    mean: torch.Tensor  # [1, n_features], buffers set in __init__
    std: torch.Tensor

    def __init__(
        self, mean: np.ndarray, std: np.ndarray, hidden: tuple[int, ...], dropout: float
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(1, -1))
        layers: list[nn.Module] = []
        width = len(mean)
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, 1))
        self.body = nn.Sequential(*layers)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Log-odds of an up move, ``[batch, 1]``."""
        out: torch.Tensor = self.body((x - self.mean) / self.std)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Probability of an up move, ``[batch, 1]``."""
        return torch.sigmoid(self.logits(x))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """``P(up)`` of each row of raw features, float64 ``[rows]``, in eval mode."""
        self.eval()
        with torch.no_grad():
            out = self(torch.as_tensor(X, dtype=torch.float32))
        probabilities: np.ndarray = out.numpy().astype(np.float64).reshape(-1)
        return probabilities


def fit_scaler(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each column of ``X`` (std 1 where a column is constant)."""
    mean = X.astype(np.float64).mean(axis=0)
    std = X.astype(np.float64).std(axis=0)
    std[~(std > 1e-12)] = 1.0  # a constant column carries no information; avoid 0/0
    return mean.astype(np.float32), std.astype(np.float32)


@dataclass(frozen=True)
class EpochLog:
    """One finished epoch: its index (from 0) and mean train and validation losses."""

    epoch: int
    train_loss: float
    val_loss: float


@dataclass
class FitResult:
    """A trained model and how its training went."""

    model: DirectionNet
    best_epoch: int
    history: list[EpochLog] = field(default_factory=list)
    fit_rows: int = 0
    val_rows: int = 0


def fit_direction_model(
    X: np.ndarray,
    y: np.ndarray,
    times: np.ndarray,
    label_times: np.ndarray,
    hp: HyperParams,
    seed: int,
    on_epoch: Callable[[EpochLog], None] | None = None,
) -> FitResult:
    """Train a :class:`DirectionNet` on one training window, with early stopping.

    The last ``hp.val_fraction`` of the rows (by time) form the validation set; rows
    before it whose label is only known after the validation set starts are purged, so
    validation is out of sample too. The scaler is fitted on the fitting rows alone.

    Parameters
    ----------
    X, y:
        Raw features and labels of the training window, oldest first.
    times, label_times:
        When each row's features and label are known (UTC epoch ms).
    hp:
        Hyper-parameters.
    seed:
        Seed of the weights, the shuffling and dropout.
    on_epoch:
        Called after every epoch.

    Returns
    -------
    FitResult
        The model with the best validation loss's weights, in eval mode.
    """
    with torch_threads(1):
        return _fit(X, y, times, label_times, hp, seed, on_epoch)


def _fit(
    X: np.ndarray,
    y: np.ndarray,
    times: np.ndarray,
    label_times: np.ndarray,
    hp: HyperParams,
    seed: int,
    on_epoch: Callable[[EpochLog], None] | None,
) -> FitResult:
    n = len(y)
    n_val = max(1, math.ceil(n * hp.val_fraction))
    val_start = n - n_val
    fit_rows = np.flatnonzero(label_times[:val_start] <= times[val_start])
    if len(fit_rows) < 20:
        raise ValueError(f"training window too small: {len(fit_rows)} fitting rows")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # nn.Linear's init draws from the global generator
    mean, std = fit_scaler(X[fit_rows])
    model = DirectionNet(mean, std, hp.hidden, hp.dropout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    x_fit = torch.as_tensor(X[fit_rows], dtype=torch.float32)
    y_fit = torch.as_tensor(y[fit_rows], dtype=torch.float32).reshape(-1, 1)
    x_val = torch.as_tensor(X[val_start:], dtype=torch.float32)
    y_val = torch.as_tensor(y[val_start:], dtype=torch.float32).reshape(-1, 1)

    best_loss, best_epoch, best_state = math.inf, -1, copy.deepcopy(model.state_dict())
    history: list[EpochLog] = []
    for epoch in range(hp.max_epochs):
        model.train()
        order = torch.randperm(len(x_fit), generator=generator)
        total = 0.0
        for start in range(0, len(order), hp.batch_size):
            batch = order[start : start + hp.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model.logits(x_fit[batch]), y_fit[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        model.eval()
        with torch.no_grad():
            val_loss = float(loss_fn(model.logits(x_val), y_val))
        log = EpochLog(epoch, total / len(order), val_loss)
        history.append(log)
        if on_epoch is not None:
            on_epoch(log)
        if val_loss < best_loss - 1e-6:
            best_loss, best_epoch = val_loss, epoch
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= hp.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(model, best_epoch, history, len(fit_rows), n_val)

"""The vectors port: embedded market states and "which past states looked like this one?".

A :class:`MarketState` is one symbol at one bar close, embedded as a vector
(:mod:`quantmesh.storage.vectors.embedding`), together with what happened next: the
return over ``horizon_ms`` after it. :meth:`VectorPort.nearest` answers with the ``k``
stored states closest to a query vector by cosine distance (``1 - cos``, 0 for the same
direction, 2 for the opposite), nearest first, so a caller can ask "the k most similar
past states and what happened next".

No lookahead: a state's outcome is known only at ``time_msc + horizon_ms``
(:attr:`MarketState.outcome_ms`). ``nearest(..., before_ms=t)`` keeps the states whose
outcome was known by ``t`` (``outcome_ms <= t``), so a decision at ``t`` never sees a
state that ends after it, whatever else the store holds.

Identity: one state per symbol and time (:func:`state_id`, a UUIDv5), so upserting a
state again replaces it: replays and resumed streams write the same rows. A store holds
one horizon per (symbol, time); a caller that wants several horizons uses several stores.

Vectors are compared by direction only: the stores keep them L2-normalised, and return
them so. All vectors of a store have the same length.

Calls block (like every quantmesh port); a call that cannot reach its store is retried
with backoff and then raises :class:`~quantmesh.storage.urls.StoreUnavailableError`.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = [
    "STATE_NAMESPACE",
    "MarketState",
    "Neighbour",
    "VectorPort",
    "VectorStoreError",
    "state_id",
    "unit_vector",
]

# The UUIDv5 namespace of state ids (a fixed random UUID: ids are stable across releases).
STATE_NAMESPACE = uuid.UUID("5d0b9a8e-3f4c-4b8e-9a57-0c1e2f6a7b3d")


class VectorStoreError(RuntimeError):
    """The store refused a request (bad vector length, malformed query); its own words."""


def state_id(symbol: str, time_msc: int) -> str:
    """The id of ``symbol``'s state at ``time_msc``: a UUIDv5, the same on every run."""
    return str(uuid.uuid5(STATE_NAMESPACE, f"{symbol}|{int(time_msc)}"))


def unit_vector(vector: np.ndarray | Sequence[float]) -> np.ndarray:
    """``vector`` as a read-only 1-D float32 array of L2 norm 1.

    Raises ValueError for an empty, non-finite or zero vector (it has no direction).
    """
    array = np.asarray(vector, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"a vector must be 1-D and non-empty, got shape {array.shape}")
    squares = float(array @ array)  # NaN or infinite when any value is
    if not math.isfinite(squares):
        raise ValueError("a vector must be finite (no NaN or infinity)")
    if squares == 0.0:
        raise ValueError("a zero vector has no direction to compare")
    unit = (array / math.sqrt(squares)).astype(np.float32)
    unit.flags.writeable = False
    return unit


# eq=False: a generated __eq__ would compare numpy arrays element-wise and fail.
@dataclass(frozen=True, eq=False)
class MarketState:
    """One symbol at one bar close, embedded, and what happened over the next ``horizon_ms``.

    Attributes
    ----------
    id:
        A UUID; :func:`state_id` of ``symbol`` and ``time_msc`` (see :meth:`of`).
    symbol:
        The instrument, e.g. ``EURUSD``.
    time_msc:
        UTC epoch ms at which the state was complete (its bar's end).
    vector:
        The embedding, stored L2-normalised as float32 (``__post_init__`` normalises).
    next_return_bps:
        ``(close at time_msc + horizon_ms) / (close at time_msc) - 1``, in basis points.
    horizon_ms:
        How far ahead ``next_return_bps`` looks; the outcome is known at
        :attr:`outcome_ms`.
    """

    id: str
    symbol: str
    time_msc: int
    vector: np.ndarray
    next_return_bps: float
    horizon_ms: int

    def __post_init__(self) -> None:
        try:
            uuid.UUID(self.id)
        except ValueError:
            raise ValueError(f"a state id must be a UUID, got {self.id!r}") from None
        if not self.symbol:
            raise ValueError("a state needs a symbol")
        if self.horizon_ms <= 0:
            raise ValueError(f"horizon_ms must be positive, got {self.horizon_ms}")
        if not math.isfinite(self.next_return_bps):
            raise ValueError(f"next_return_bps must be finite, got {self.next_return_bps}")
        object.__setattr__(self, "vector", unit_vector(self.vector))
        object.__setattr__(self, "time_msc", int(self.time_msc))
        object.__setattr__(self, "horizon_ms", int(self.horizon_ms))
        object.__setattr__(self, "next_return_bps", float(self.next_return_bps))

    @classmethod
    def of(
        cls,
        symbol: str,
        time_msc: int,
        vector: np.ndarray | Sequence[float],
        next_return_bps: float,
        horizon_ms: int,
    ) -> MarketState:
        """A state whose id is :func:`state_id` of ``symbol`` and ``time_msc``."""
        return cls(
            state_id(symbol, time_msc),
            symbol,
            time_msc,
            np.asarray(vector),
            next_return_bps,
            horizon_ms,
        )

    @classmethod
    def stored(
        cls,
        id: str,
        symbol: str,
        time_msc: int,
        unit: np.ndarray,
        next_return_bps: float,
        horizon_ms: int,
    ) -> MarketState:
        """A state read back from a store that checked it on the way in (no checks again).

        ``unit`` must be a float32 vector of norm 1; the state takes a read-only copy.
        """
        state = object.__new__(cls)
        vector = np.array(unit, dtype=np.float32)
        vector.flags.writeable = False
        for name, value in (
            ("id", id),
            ("symbol", symbol),
            ("time_msc", time_msc),
            ("vector", vector),
            ("next_return_bps", next_return_bps),
            ("horizon_ms", horizon_ms),
        ):
            object.__setattr__(state, name, value)
        return state

    @property
    def outcome_ms(self) -> int:
        """When ``next_return_bps`` became known: ``time_msc + horizon_ms``."""
        return self.time_msc + self.horizon_ms


@dataclass(frozen=True, eq=False)
class Neighbour:
    """A stored state and its cosine distance (``1 - cos``) to the query."""

    state: MarketState
    distance: float


class VectorPort(Protocol):
    """Market states with cosine similarity search: numpy in-process, or Weaviate."""

    url: str  # as configured, password hidden

    def upsert(self, states: Sequence[MarketState]) -> None:
        """Store ``states``; a state whose id is stored already replaces it."""
        ...

    def nearest(
        self,
        vector: np.ndarray | Sequence[float],
        k: int,
        symbol: str | None = None,
        before_ms: int | None = None,
    ) -> list[Neighbour]:
        """The ``k`` stored states nearest to ``vector``, nearest first.

        ``symbol`` keeps that symbol's states only; ``before_ms`` keeps the states whose
        outcome was known by then (``outcome_ms <= before_ms``). Fewer than ``k`` when
        fewer match; none for ``k == 0``.
        """
        ...

    def count(self) -> int:
        """How many states the store holds."""
        ...

    def close(self) -> None:
        """Release the connection; a file-backed store writes what it has not yet."""
        ...

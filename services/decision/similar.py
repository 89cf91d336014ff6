"""Similar past market states, summarised in the decision's reason (optional, off by default).

With ``QUANTMESH_DECISION_SIMILAR_STATES=k`` (k > 0), each subscription embeds the feature
rows it reads (:mod:`quantmesh.storage.vectors.embedding`), stores every row whose outcome
has become known as a market state in the vectors store (``QUANTMESH_DECISION_VECTORS_URL``),
and, for each row it decides on, looks up the k past states of the same symbol nearest to
the row's own. Their outcomes become :class:`~.policy.SimilarOutcomes`, which the policy
appends to the reason: "12 similar past states: 8 rose over 1h, mean +4.1 bps". The action
is never affected (see :mod:`quantmesh.services.decision.policy`).

No lookahead, twice over: a row's states come only from rows up to it (rows are observed
once each, in stream order, before the row is decided), and the search keeps only states
whose outcome was known by the row's time (``before_ms``), so a store that holds later
states (a file or Weaviate filled by an earlier run) gives the same answers.

A Weaviate round trip runs in a worker thread, so it does not stall the stream's event
loop (a subscription makes one call at a time); the numpy store answers in place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from quantmesh.services.decision.config import DecisionSettings
from quantmesh.services.decision.policy import SimilarOutcomes
from quantmesh.services.decision.upstream import FeatureRow
from quantmesh.storage.vectors import MarketState, Neighbour, VectorPort, open_vectors
from quantmesh.storage.vectors.embedding import StateRecorder
from quantmesh.storage.vectors.memory import NumpyVectors

VECTORS_SETTING = "QUANTMESH_DECISION_VECTORS_URL"
T = TypeVar("T")


def open_similar_store(settings: DecisionSettings) -> VectorPort | None:
    """The vectors store when the lookup is on (``similar_states`` > 0), else None.

    A wrong or unreachable URL fails here, at start-up, naming the setting.
    """
    if settings.similar_states <= 0:
        return None
    return open_vectors(settings.vectors_url, VECTORS_SETTING)


def summarise(neighbours: Sequence[Neighbour], horizon_ms: int) -> SimilarOutcomes:
    """Count, rises and mean return of the neighbours' outcomes."""
    returns = [neighbour.state.next_return_bps for neighbour in neighbours]
    return SimilarOutcomes(
        count=len(returns),
        rose=sum(1 for value in returns if value > 0),
        mean_bps=float(np.mean(returns)) if returns else 0.0,
        horizon_ms=horizon_ms,
    )


class SimilarStates:
    """One subscription's market states: built from its rows, searched for its decisions."""

    def __init__(self, store: VectorPort, k: int, horizon_ms: int) -> None:
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        self._store = store
        self._k = k
        self._horizon_ms = horizon_ms
        self._recorder = StateRecorder(horizon_ms)
        self._last_seq = -1
        self._last_vector: np.ndarray | None = None
        # The numpy store answers in well under a millisecond, less than a thread hop
        # costs; a server's round trip runs in a worker thread instead.
        self._in_process = isinstance(store, NumpyVectors)

    @classmethod
    def over(cls, store: VectorPort | None, settings: DecisionSettings) -> SimilarStates | None:
        """A new subscription's lookup over ``store``; None when the lookup is off."""
        if store is None:
            return None
        return cls(store, settings.similar_states, settings.similar_horizon_ms)

    async def observe(self, row: FeatureRow) -> np.ndarray | None:
        """Record ``row`` (in seq order; a seq seen before is not recorded again), store
        the states it completes, and return its vector (None while warming up)."""
        vector, resolved = self._record(row)
        if resolved:
            await self._call(self._store.upsert, resolved)
        return vector

    async def outcomes(self, row: FeatureRow) -> SimilarOutcomes | None:
        """What followed the k past states nearest ``row``; None while it has no vector."""
        vector, resolved = self._record(row)
        if vector is None:
            if resolved:
                await self._call(self._store.upsert, resolved)
            return None
        neighbours = await self._call(self._store_and_search, resolved, vector, row)
        return summarise(neighbours, self._horizon_ms)

    def _record(self, row: FeatureRow) -> tuple[np.ndarray | None, tuple[MarketState, ...]]:
        if row.seq <= self._last_seq:
            return (self._last_vector if row.seq == self._last_seq else None), ()
        observation = self._recorder.observe(row.symbol, row.time_msc, row.values)
        self._last_seq, self._last_vector = row.seq, observation.vector
        return observation.vector, observation.resolved

    def _store_and_search(
        self, resolved: Sequence[MarketState], vector: np.ndarray, row: FeatureRow
    ) -> list[Neighbour]:
        # The states this row completes first: one whose outcome is this row's close counts.
        if resolved:
            self._store.upsert(resolved)
        return self._store.nearest(vector, self._k, row.symbol, row.time_msc)

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        if self._in_process:
            return function(*args)
        return await asyncio.to_thread(function, *args)

"""The cache port: prediction cache, latest feature vectors, rate-limit counters.

Everything here is derived or short-lived data that a service can recompute or do without,
held where every replica sees it (Redis or DragonflyDB) or, by default, in the process.

- **Predictions** are batch-oriented because inference predicts batches: one call looks
  up (or stores) every row of a batch, keyed by the model version (``model_key``: the
  model artifact's SHA-256, or ``name@version``) and each row's 64-bit feature digest.
  They expire after a TTL.
- **Latest features**: each symbol's most recent feature vector. A write never replaces a
  newer vector with an older one (a replayed stream or a slower subscriber cannot move
  "latest" back in time); the write of an equal ``time_msc`` replaces it.
- **Counters** are fixed windows aligned to the Unix epoch: ``hit(key, 60)`` counts in
  the current minute, and the count starts again at 0 in the next one. A window's counter
  expires with its window, so idle keys cost nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["CachePort", "LatestFeatures", "check_predictions", "window_of"]


@dataclass(frozen=True, slots=True)
class LatestFeatures:
    """A symbol's latest feature vector: ``values[i]`` is feature ``names[i]``.

    ``time_msc`` is the UTC epoch ms at which the row was complete (its bar's end).
    Values may be NaN (a feature still warming up).
    """

    time_msc: int
    names: tuple[str, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.values):
            raise ValueError(
                f"{len(self.names)} feature names but {len(self.values)} values; "
                "each value needs its name"
            )


class CachePort(Protocol):
    """Prediction cache, latest feature vectors and counters: in-process or Redis/Dragonfly.

    Calls block; a call that cannot reach the store is retried with backoff and then
    raises :class:`~quantmesh.storage.urls.StoreUnavailableError`.
    """

    url: str  # as configured, password hidden

    def get_predictions(self, model_key: str, digests: Sequence[int]) -> list[float | None]:
        """The cached value of each digest under ``model_key``; None for a miss.

        Digests are uint64 (``0 <= digest < 2**64``), as :mod:`quantmesh.services.inference.cache`
        computes them.
        """
        ...

    def put_predictions(
        self, model_key: str, digests: Sequence[int], values: Sequence[float], ttl_s: float
    ) -> None:
        """Cache ``values[i]`` for ``digests[i]`` under ``model_key`` for ``ttl_s`` seconds."""
        ...

    def put_latest_features(self, latest: Mapping[str, LatestFeatures]) -> None:
        """Record each symbol's latest vector, unless the stored one is newer."""
        ...

    def latest_features(self, symbol: str) -> LatestFeatures | None:
        """The symbol's latest vector, or None if none was recorded."""
        ...

    def hit(self, key: str, window_s: float, amount: int = 1) -> int:
        """Add ``amount`` to ``key``'s counter in the current window; return its count."""
        ...

    def count(self, key: str, window_s: float) -> int:
        """``key``'s count in the current window (0 when nothing was counted)."""
        ...

    def close(self) -> None: ...


def check_predictions(digests: Sequence[int], values: Sequence[float], ttl_s: float) -> None:
    """Raise ValueError for arguments of :meth:`CachePort.put_predictions` no adapter takes."""
    if len(digests) != len(values):
        raise ValueError(f"{len(digests)} digests but {len(values)} values")
    if not (ttl_s > 0 and math.isfinite(ttl_s)):
        raise ValueError(f"ttl_s must be a positive number of seconds, got {ttl_s}")


def window_of(now_s: float, window_s: float) -> tuple[int, int, int]:
    """The fixed window holding ``now_s``: (window length ms, window number, ms left in it).

    Windows are aligned to the Unix epoch, in whole milliseconds.
    """
    window_ms = round(window_s * 1000)
    if not (math.isfinite(window_s) and window_ms >= 1):
        raise ValueError(f"window_s must be at least 0.001 s, got {window_s}")
    now_ms = math.floor(now_s * 1000)
    number = now_ms // window_ms
    return window_ms, number, (number + 1) * window_ms - now_ms

"""Feature digests and the prediction cache they key: in process, optionally shared.

The digest is the contract's (``PredictionBatch.feature_digest``): the first 8 bytes, read
big-endian, of the SHA-256 of a row's feature values as little-endian float64 in the
model's feature order. Anyone holding the row can recompute it, so it identifies a
model input in traces and the audit log, and it keys the cache together with the
model's artifact SHA-256: a new model version never reads an old version's entries.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from quantmesh.runtime.logging import get_logger
from quantmesh.storage.cache import CachePort
from quantmesh.storage.urls import StoreUnavailableError

T = TypeVar("T")
# Predictions depend only on (model artifact, features), so a long TTL is safe; it bounds
# what the shared store holds for models no longer served.
DEFAULT_SHARED_TTL_S = 86_400.0
_log = get_logger("inference")


def feature_digests(rows: np.ndarray) -> np.ndarray:
    """Digest of each row of a ``[N, k]`` float matrix, as uint64 ``[N]``.

    Float32 rows are widened to float64 first (exactly), so a row digests the same
    whether it arrived as FP32 over the Open Inference Protocol or as float64 features.
    """
    wide = np.ascontiguousarray(rows, dtype="<f8")
    step = wide.itemsize * (wide.shape[1] if wide.ndim == 2 else 1)
    data = memoryview(wide.tobytes())  # one copy; row slices of it copy nothing
    sha256 = hashlib.sha256
    # A list then one array: faster than np.fromiter over a generator for small batches.
    return np.array(
        [
            int.from_bytes(sha256(data[start : start + step]).digest()[:8], "big")
            for start in range(0, len(data), step)
        ],
        dtype=np.uint64,
    )


def row_digest(row: np.ndarray) -> int:
    """Digest of one row (see :func:`feature_digests`), as a Python int."""
    data = np.ascontiguousarray(row, dtype="<f8").tobytes()
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big")


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters of a :class:`PredictionCache`."""

    hits: int
    misses: int
    size: int
    max_entries: int

    @property
    def hit_ratio(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


class PredictionCache:
    """Bounded LRU of probabilities keyed by (model SHA-256, feature digest), optionally
    in front of a shared store.

    Parameters
    ----------
    max_entries:
        Most entries kept in the process; the least recently used go first. 0 disables
        the in-process tier.
    shared:
        A cache port that several processes share (Redis or DragonflyDB), read on an
        in-process miss and written with every fresh prediction; None for none.
    ttl_s:
        How long the shared store keeps a prediction.
    retry_after_s:
        How long the shared store is left alone after it failed; meanwhile the cache
        acts as if it held nothing there.

    Notes
    -----
    Embedded and in-process by default (the design's default for the prediction cache):
    a hit costs a dict lookup, far below a network round trip to Dragonfly. With a shared
    store, an in-process hit still costs no round trip; a miss there costs one batched
    lookup, and a shared hit is kept in process too. The shared store is an accelerator,
    never a dependency: when it is down, predictions are computed (a warning is logged
    once per outage) and their entries are not shared, since they can be recomputed. A
    64-bit digest collision would return another row's prediction; with at most millions
    of entries the odds are below 1e-7 over the cache's life.
    """

    def __init__(
        self,
        max_entries: int = 100_000,
        shared: CachePort | None = None,
        ttl_s: float = DEFAULT_SHARED_TTL_S,
        retry_after_s: float = 5.0,
    ) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be 0 or more, got {max_entries}")
        self.max_entries = max_entries
        self.shared = shared
        self.hits = 0
        self.misses = 0
        self._ttl_s = ttl_s
        self._retry_after_s = retry_after_s
        self._shared_down_until = 0.0  # monotonic; the shared store is skipped until then
        self._entries: OrderedDict[tuple[str, int], float] = OrderedDict()
        # Model loads run in worker threads; lookups run on the event loop.
        self._lock = threading.Lock()

    def lookup(self, model_sha256: str, digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cached probabilities (NaN where missing) and the mask of the missing rows."""
        n = len(digests)
        if not self.max_entries and self.shared is None:
            self.misses += n
            return np.full(n, np.nan, np.float32), np.ones(n, np.bool_)
        digest_list = digests.tolist()
        values: list[float | None]
        if self.max_entries:
            keys = [(model_sha256, digest) for digest in digest_list]
            entries = self._entries
            with self._lock:
                values = [entries.get(key) for key in keys]
                for key, value in zip(keys, values, strict=True):
                    if value is not None:
                        entries.move_to_end(key)
        else:
            values = [None] * n
        if self.shared is not None and None in values:
            self._fill_from_shared(self.shared, model_sha256, digest_list, values)
        hits = n - values.count(None)
        with self._lock:
            self.hits += hits
            self.misses += n - hits
        found = np.array([np.nan if v is None else v for v in values], np.float32)
        return found, np.array([v is None for v in values], np.bool_)

    def get(self, model_sha256: str, digest: int) -> float | None:
        """One cached probability, or None (the batch-1 fast path of :meth:`lookup`)."""
        if self.max_entries:
            key = (model_sha256, digest)
            with self._lock:
                value = self._entries.get(key)
                if value is not None:
                    self.hits += 1
                    self._entries.move_to_end(key)
                    return value
                if self.shared is None:
                    self.misses += 1
                    return None
        elif self.shared is None:
            self.misses += 1
            return None
        values: list[float | None] = [None]
        self._fill_from_shared(self.shared, model_sha256, [digest], values)
        with self._lock:
            if values[0] is None:
                self.misses += 1
            else:
                self.hits += 1
        return values[0]

    def store(self, model_sha256: str, digests: np.ndarray, probabilities: np.ndarray) -> None:
        """Remember fresh predictions, evicting the least recently used beyond the bound."""
        if self.max_entries:
            self._store_local(model_sha256, digests.tolist(), probabilities.tolist())
        shared = self.shared
        if shared is not None and self._shared_up():
            self._call_shared(
                shared,
                "store",
                lambda: shared.put_predictions(
                    model_sha256, digests.tolist(), probabilities.tolist(), self._ttl_s
                ),
            )

    def _store_local(self, model_sha256: str, digests: list[int], values: list[float]) -> None:
        entries = self._entries
        with self._lock:
            for digest, probability in zip(digests, values, strict=True):
                entries[(model_sha256, digest)] = probability
            while len(entries) > self.max_entries:
                entries.popitem(last=False)

    def _fill_from_shared(
        self, shared: CachePort, model_sha256: str, digests: list[int], values: list[float | None]
    ) -> None:
        """Fill the Nones of ``values`` from the shared store; keep its hits in process."""
        if not self._shared_up():
            return
        wanted = [i for i, value in enumerate(values) if value is None]
        found = self._call_shared(
            shared,
            "lookup",
            lambda: shared.get_predictions(model_sha256, [digests[i] for i in wanted]),
        )
        if not found:
            return
        fresh_digests, fresh_values = [], []
        for i, value in zip(wanted, found, strict=True):
            if value is not None:
                values[i] = value
                fresh_digests.append(digests[i])
                fresh_values.append(value)
        if fresh_digests and self.max_entries:
            self._store_local(model_sha256, fresh_digests, fresh_values)

    def _shared_up(self) -> bool:
        return time.monotonic() >= self._shared_down_until

    def _call_shared(self, shared: CachePort, what: str, call: Callable[[], T]) -> T | None:
        """``call()``, or None while the shared store is down (logged once per outage)."""
        try:
            result = call()
        except StoreUnavailableError as error:
            if self._shared_down_until == 0.0:
                _log.warning(
                    "shared prediction cache unavailable; predicting without it",
                    cache=shared.url,
                    during=what,
                    retry_after_s=self._retry_after_s,
                    error=str(error),
                )
            self._shared_down_until = time.monotonic() + self._retry_after_s
            return None
        if self._shared_down_until:
            _log.info("shared prediction cache is back", cache=shared.url)
            self._shared_down_until = 0.0
        return result

    def stats(self) -> CacheStats:
        """Hits (in process or shared), misses, and the in-process tier's size so far."""
        return CacheStats(self.hits, self.misses, len(self._entries), self.max_entries)

    def clear(self) -> None:
        """Drop every in-process entry (the counters and the shared store stay)."""
        with self._lock:
            self._entries.clear()

    def close(self) -> None:
        """Close the shared store's connections."""
        if self.shared is not None:
            self.shared.close()

"""Feature digests and the in-process prediction cache they key.

The digest is the contract's (``PredictionBatch.feature_digest``): the first 8 bytes, read
big-endian, of the SHA-256 of a row's feature values as little-endian float64 in the
model's feature order. Anyone holding the row can recompute it, so it identifies a
model input in traces and the audit log, and it keys the cache together with the
model's artifact SHA-256: a new model version never reads an old version's entries.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np


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
    """Bounded LRU of probabilities keyed by (model SHA-256, feature digest).

    Parameters
    ----------
    max_entries:
        Most entries kept; the least recently used go first. 0 disables the cache.

    Notes
    -----
    Embedded and in-process (the design's default for the prediction cache): a hit
    costs a dict lookup, far below a network round trip to Dragonfly. A 64-bit digest
    collision would return another row's prediction; with at most millions of
    entries the odds are below 1e-7 over the cache's life.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be 0 or more, got {max_entries}")
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[str, int], float] = OrderedDict()
        # Model loads run in worker threads; lookups run on the event loop.
        self._lock = threading.Lock()

    def lookup(self, model_sha256: str, digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cached probabilities (NaN where missing) and the mask of the missing rows."""
        n = len(digests)
        if not self.max_entries:
            self.misses += n
            return np.full(n, np.nan, np.float32), np.ones(n, np.bool_)
        keys = [(model_sha256, digest) for digest in digests.tolist()]
        entries = self._entries
        with self._lock:
            values = [entries.get(key) for key in keys]
            for key, value in zip(keys, values, strict=True):
                if value is not None:
                    entries.move_to_end(key)
            hits = sum(value is not None for value in values)
            self.hits += hits
            self.misses += n - hits
        found = np.array([np.nan if v is None else v for v in values], np.float32)
        return found, np.array([v is None for v in values], np.bool_)

    def get(self, model_sha256: str, digest: int) -> float | None:
        """One cached probability, or None (the batch-1 fast path of :meth:`lookup`)."""
        if not self.max_entries:
            self.misses += 1
            return None
        key = (model_sha256, digest)
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
                self._entries.move_to_end(key)
        return value

    def store(self, model_sha256: str, digests: np.ndarray, probabilities: np.ndarray) -> None:
        """Remember fresh predictions, evicting the least recently used beyond the bound."""
        if not self.max_entries:
            return
        entries = self._entries
        with self._lock:
            for digest, probability in zip(digests.tolist(), probabilities.tolist(), strict=True):
                entries[(model_sha256, digest)] = probability
            while len(entries) > self.max_entries:
                entries.popitem(last=False)

    def stats(self) -> CacheStats:
        """Hits, misses and size so far."""
        return CacheStats(self.hits, self.misses, len(self._entries), self.max_entries)

    def clear(self) -> None:
        """Drop every entry (the counters stay)."""
        with self._lock:
            self._entries.clear()

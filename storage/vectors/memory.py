"""The embedded vectors store: exact cosine search with numpy, in memory or in one ``.npz``.

States live in column arrays (vectors as one ``(n, dim)`` float32 matrix of unit rows),
so a search is one matrix-vector product, a mask for the filters and a partial sort:
about a millisecond over 50 000 states of 32 dimensions. The search is exact (no
approximate index), so it is also the reference the Weaviate adapter is tested against.
Ties in distance are broken by insertion order, so answers are deterministic.

``memory://`` keeps the states for the life of the process. ``file:///var/states.npz``
(relative; ``file:////srv/states.npz`` absolute) loads the file at start and writes it
back atomically (a temporary file, then a rename) on :meth:`NumpyVectors.close` and at
most every ``flush_seconds`` during upserts (``?flush_seconds=5`` by default). States are
derived data, rebuilt from features by replaying them, so a crash loses at most those
seconds of them.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from quantmesh.storage.vectors.port import MarketState, Neighbour, VectorStoreError, unit_vector

__all__ = ["NumpyVectors"]

_FORMAT_VERSION = 1


class NumpyVectors:
    """:class:`~quantmesh.storage.vectors.port.VectorPort` over numpy arrays."""

    def __init__(
        self, path: Path | None = None, *, url: str = "memory://", flush_seconds: float = 5.0
    ) -> None:
        self.url = url
        self._path = path
        self._flush_seconds = flush_seconds
        self._lock = threading.Lock()
        self._n = 0
        self._dim = 0
        self._vectors = np.zeros((0, 0), np.float32)
        self._time = np.zeros(0, np.int64)
        self._horizon = np.zeros(0, np.int64)
        self._returns = np.zeros(0, np.float64)
        self._symbol_code = np.zeros(0, np.int32)
        self._ids: list[str] = []
        self._row_of: dict[str, int] = {}
        self._symbols: list[str] = []
        self._code_of: dict[str, int] = {}
        self._dirty = False
        self._saved_at = time.monotonic()
        if path is not None and path.exists():
            self._load(path)

    # -- the port ---------------------------------------------------------------------

    def upsert(self, states: Sequence[MarketState]) -> None:
        if not states:
            return
        with self._lock:
            dim = self._dim or len(states[0].vector)
            for state in states:
                if len(state.vector) != dim:
                    raise VectorStoreError(
                        f"state {state.id} has a vector of {len(state.vector)} dimensions; "
                        f"this store holds {dim}"
                    )
            if self._dim == 0:
                self._dim = dim
                self._vectors = np.zeros((0, dim), np.float32)
            for state in states:
                row = self._row_of.get(state.id)
                if row is None:
                    row = self._append_row(state.id)
                self._vectors[row] = state.vector
                self._time[row] = state.time_msc
                self._horizon[row] = state.horizon_ms
                self._returns[row] = state.next_return_bps
                self._symbol_code[row] = self._code(state.symbol)
            self._dirty = True
            if self._path is not None and time.monotonic() - self._saved_at >= self._flush_seconds:
                self._save(self._path)

    def nearest(
        self,
        vector: np.ndarray | Sequence[float],
        k: int,
        symbol: str | None = None,
        before_ms: int | None = None,
    ) -> list[Neighbour]:
        if k < 0:
            raise ValueError(f"k must be 0 or more, got {k}")
        query = unit_vector(vector)
        with self._lock:
            n = self._n
            if k == 0 or n == 0:
                return []
            if len(query) != self._dim:
                raise VectorStoreError(
                    f"the query has {len(query)} dimensions; this store holds {self._dim}"
                )
            mask = np.ones(n, bool)
            if symbol is not None:
                code = self._code_of.get(symbol)
                if code is None:
                    return []
                mask &= self._symbol_code[:n] == code
            if before_ms is not None:
                mask &= self._time[:n] + self._horizon[:n] <= before_ms
            # One product over every row (a view, no copy), then the filters. einsum runs
            # in this thread: a multithreaded BLAS matvec was slower on a busy host.
            all_distances = 1.0 - np.einsum("ij,j->i", self._vectors[:n], query)
            candidates = np.flatnonzero(mask)
            distances = all_distances[candidates]
            if len(candidates) > k:
                # The k smallest (ties at the cut-off resolved by the sort below).
                keep = np.argpartition(distances, k - 1)[:k]
                boundary = distances[keep].max()
                keep = np.flatnonzero(distances <= boundary)
                candidates, distances = candidates[keep], distances[keep]
            order = np.lexsort((candidates, distances))[:k]
            return [self._neighbour(int(candidates[i]), float(distances[i])) for i in order]

    def count(self) -> int:
        return self._n

    def close(self) -> None:
        with self._lock:
            if self._path is not None and self._dirty:
                self._save(self._path)

    def flush(self) -> None:
        """Write the file now (file-backed stores; nothing for ``memory://``)."""
        self.close()

    # -- internals --------------------------------------------------------------------

    def _neighbour(self, row: int, distance: float) -> Neighbour:
        state = MarketState.stored(
            self._ids[row],
            self._symbols[int(self._symbol_code[row])],
            int(self._time[row]),
            self._vectors[row],
            float(self._returns[row]),
            int(self._horizon[row]),
        )
        return Neighbour(state, max(0.0, distance))

    def _code(self, symbol: str) -> int:
        code = self._code_of.get(symbol)
        if code is None:
            code = self._code_of[symbol] = len(self._symbols)
            self._symbols.append(symbol)
        return code

    def _append_row(self, state_id: str) -> int:
        if self._n == len(self._time):
            self._grow(max(1024, 2 * self._n))
        row = self._n
        self._n += 1
        self._ids.append(state_id)
        self._row_of[state_id] = row
        return row

    def _grow(self, capacity: int) -> None:
        def grown(array: np.ndarray) -> np.ndarray:
            bigger = np.zeros((capacity, *array.shape[1:]), array.dtype)
            bigger[: self._n] = array[: self._n]
            return bigger

        self._vectors = grown(self._vectors)
        self._time = grown(self._time)
        self._horizon = grown(self._horizon)
        self._returns = grown(self._returns)
        self._symbol_code = grown(self._symbol_code)

    def _save(self, path: Path) -> None:
        n = self._n
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with temporary.open("wb") as file:
            np.savez(
                file,
                format_version=np.array(_FORMAT_VERSION),
                ids=np.array(self._ids, dtype=np.str_),
                symbols=np.array(self._symbols, dtype=np.str_),
                symbol_code=self._symbol_code[:n],
                time_msc=self._time[:n],
                horizon_ms=self._horizon[:n],
                next_return_bps=self._returns[:n],
                vectors=self._vectors[:n],
            )
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        self._dirty = False
        self._saved_at = time.monotonic()

    def _load(self, path: Path) -> None:
        try:
            with np.load(path, allow_pickle=False) as data:
                version = int(data["format_version"])
                if version != _FORMAT_VERSION:
                    raise ValueError(f"format version {version}, expected {_FORMAT_VERSION}")
                ids = [str(i) for i in data["ids"]]
                self._symbols = [str(s) for s in data["symbols"]]
                self._symbol_code = data["symbol_code"].astype(np.int32)
                self._time = data["time_msc"].astype(np.int64)
                self._horizon = data["horizon_ms"].astype(np.int64)
                self._returns = data["next_return_bps"].astype(np.float64)
                self._vectors = np.ascontiguousarray(data["vectors"], np.float32)
                lengths = len(ids), len(self._time), len(self._returns), len(self._vectors)
                if len(set(lengths)) != 1:
                    raise ValueError(f"columns of different lengths {lengths}")
                norms = np.linalg.norm(self._vectors.astype(np.float64), axis=1)
                if len(norms) and not np.allclose(norms, 1.0, atol=1e-4):
                    raise ValueError("vectors that are not unit length")
        except (OSError, KeyError, ValueError) as error:
            raise ValueError(f"{path} is not a vectors store file ({error})") from error
        self._ids = ids
        self._row_of = {state_id: row for row, state_id in enumerate(ids)}
        self._code_of = {symbol: code for code, symbol in enumerate(self._symbols)}
        self._n = len(ids)
        self._dim = self._vectors.shape[1] if self._n else 0
        if not self._n:
            self._vectors = np.zeros((0, 0), np.float32)

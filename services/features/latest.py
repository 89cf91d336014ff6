"""Publish each symbol's latest feature vector to the cache (``QUANTMESH_FEATURES_CACHE_URL``).

The stream must not wait for the cache, and the cache must end up with the newest
vector. So the servicer only *offers* each emitted batch (:meth:`LatestFeaturesPublisher.
offer`, no I/O: it keeps the last row per symbol, newest wins), and a background job
writes what is pending in one call per round, in a worker thread. Offers that arrive
during a write are coalesced into the next one, so at most one write per emitted batch.

When the store is down, the port retries with backoff and raises; the pending vectors
are kept (a newer offer replaces a pending one, which is all "latest" needs) and written
once the store is back. Nothing newer than what the store holds is dropped; at shutdown,
a final write is tried and what it could not write is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import numpy as np

from quantmesh.runtime.logging import get_logger
from quantmesh.services.features.schema import FEATURE_NAMES, FeatureRows
from quantmesh.storage.cache import CachePort, LatestFeatures
from quantmesh.storage.resilience import flush_when_woken
from quantmesh.storage.urls import StoreUnavailableError

_log = get_logger("features")


def last_row_per_symbol(
    symbols: Sequence[str], rows: FeatureRows, names: tuple[str, ...] = FEATURE_NAMES
) -> dict[str, LatestFeatures]:
    """Each symbol's last row in ``rows`` (rows are in stream order), every feature."""
    if not len(rows.time_msc):
        return {}
    reversed_index = rows.symbol_index[::-1]
    present, first_from_end = np.unique(reversed_index, return_index=True)
    last = len(reversed_index) - 1 - first_from_end
    return {
        symbols[int(symbol)]: LatestFeatures(
            time_msc=int(rows.time_msc[row]),
            names=names,
            values=tuple(rows.values[row].tolist()),
        )
        for symbol, row in zip(present, last, strict=True)
    }


class LatestFeaturesPublisher:
    """Keeps the newest offered vector per symbol and writes it to ``cache``.

    Parameters
    ----------
    cache:
        Where the vectors go.
    retry_s:
        Pause before trying again after the store stayed unreachable through the port's
        own retries.
    """

    def __init__(self, cache: CachePort, retry_s: float = 1.0) -> None:
        self.cache = cache
        self._retry_s = retry_s
        self._pending: dict[str, LatestFeatures] = {}
        self._wake = asyncio.Event()
        # The write in a worker thread, if one runs: a cancelled flush leaves it running,
        # and shutdown waits for it before the last write and closing the store.
        self._writing: asyncio.Future[None] | None = None
        self._writing_batch: dict[str, LatestFeatures] = {}

    @property
    def pending(self) -> dict[str, LatestFeatures]:
        """Vectors offered and not yet written."""
        return dict(self._pending)

    def offer(self, symbols: Sequence[str], rows: FeatureRows) -> None:
        """Queue the last row per symbol of an emitted batch (no I/O; call on the loop)."""
        self._merge(last_row_per_symbol(symbols, rows))
        self._wake.set()

    async def run(self, shutdown: asyncio.Event) -> None:
        """Write pending vectors until cancelled (the runtime's background job)."""
        try:
            await flush_when_woken(self._wake, self.flush, self._retry_s)
        finally:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._final_flush())

    async def flush(self) -> bool:
        """Write what is pending; False (keeping it) when the store is unreachable."""
        await self._written()
        if not self._pending:
            return True
        batch, self._pending = self._pending, {}
        self._writing_batch = batch
        self._writing = asyncio.ensure_future(
            asyncio.to_thread(self.cache.put_latest_features, batch)
        )
        try:
            await asyncio.shield(self._writing)
        except StoreUnavailableError as error:
            self._merge(batch)  # newer offers made meanwhile stay ahead of these
            _log.warning(
                "latest features not written yet; kept for the next try",
                symbols=sorted(batch),
                error=str(error),
            )
            return False
        return True

    async def _written(self) -> None:
        """Wait for the write in flight, if any; a failed one's vectors are pending again
        (its own flush may have been cancelled, e.g. at shutdown, and cannot keep them)."""
        if self._writing is None:
            return
        try:
            await self._writing
        except StoreUnavailableError:
            self._merge(self._writing_batch)  # merging twice is harmless: newest wins
        finally:
            self._writing = None

    async def _final_flush(self) -> None:
        await self._written()
        if not await self.flush():
            _log.error("latest features not written at shutdown", symbols=sorted(self._pending))
        self.cache.close()

    def _merge(self, latest: dict[str, LatestFeatures]) -> None:
        pending = self._pending
        for symbol, features in latest.items():
            current = pending.get(symbol)
            if current is None or current.time_msc <= features.time_msc:
                pending[symbol] = features

"""The embedded cache: dictionaries in this process, bounded, with TTLs.

``quantmesh up`` needs no server, and a single process loses nothing by keeping its
cache to itself. Memory cannot grow without bound: each of the three maps holds at most
a fixed number of entries and, when full, drops the least recently used one; an expired
entry goes when it is next read or when its turn to be evicted comes. Dropping a
prediction costs a recomputation, dropping a symbol's latest vector costs nothing a newer
write will not restore, and dropping a live counter lets a key through a limit early; the
bounds are large enough that only a flood of distinct keys gets there.

TTLs run on a monotonic clock, so a wall-clock step never expires (or resurrects) an
entry; counter windows run on the wall clock, aligned to the Unix epoch as in Redis.
Both clocks can be injected, so tests advance time instead of sleeping. One lock guards
everything: inference calls come from the event loop and from worker threads.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

from quantmesh.storage.cache.port import LatestFeatures, check_predictions, window_of

__all__ = ["MemoryCache"]

Clock = Callable[[], float]


class MemoryCache:
    """The in-process :class:`~quantmesh.storage.cache.port.CachePort`.

    Parameters
    ----------
    max_predictions:
        Cached predictions kept; the least recently used go first.
    max_symbols:
        Symbols whose latest feature vector is kept.
    max_counters:
        Counter windows kept; ended windows are dropped as new ones open.
    clock:
        Monotonic seconds, for TTLs.
    wall_clock:
        Unix seconds, for counter windows.
    """

    def __init__(
        self,
        max_predictions: int = 100_000,
        max_symbols: int = 10_000,
        max_counters: int = 100_000,
        *,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        url: str = "memory://",
    ) -> None:
        for name, bound in (
            ("max_predictions", max_predictions),
            ("max_symbols", max_symbols),
            ("max_counters", max_counters),
        ):
            if bound < 1:
                raise ValueError(f"{name} must be 1 or more, got {bound}")
        self.url = url
        self._max_predictions = max_predictions
        self._max_symbols = max_symbols
        self._max_counters = max_counters
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        # Values are (value, expires at on `clock`); insertion order is recency order.
        self._predictions: OrderedDict[tuple[str, int], tuple[float, float]] = OrderedDict()
        self._latest: OrderedDict[str, LatestFeatures] = OrderedDict()
        # (key, window ms, window number) -> (count, window end in Unix seconds)
        self._counters: OrderedDict[tuple[str, int, int], tuple[int, float]] = OrderedDict()

    # -- predictions ---------------------------------------------------------------------

    def get_predictions(self, model_key: str, digests: Sequence[int]) -> list[float | None]:
        now = self._clock()
        found: list[float | None] = []
        entries = self._predictions
        with self._lock:
            for digest in digests:
                key = (model_key, digest)
                entry = entries.get(key)
                if entry is None:
                    found.append(None)
                elif entry[1] <= now:
                    del entries[key]
                    found.append(None)
                else:
                    entries.move_to_end(key)
                    found.append(entry[0])
        return found

    def put_predictions(
        self, model_key: str, digests: Sequence[int], values: Sequence[float], ttl_s: float
    ) -> None:
        check_predictions(digests, values, ttl_s)
        expires = self._clock() + ttl_s
        entries = self._predictions
        with self._lock:
            for digest, value in zip(digests, values, strict=True):
                key = (model_key, digest)
                entries[key] = (float(value), expires)
                entries.move_to_end(key)
            while len(entries) > self._max_predictions:
                entries.popitem(last=False)  # the least recently used

    # -- latest features -----------------------------------------------------------------

    def put_latest_features(self, latest: Mapping[str, LatestFeatures]) -> None:
        with self._lock:
            for symbol, features in latest.items():
                current = self._latest.get(symbol)
                if current is not None and current.time_msc > features.time_msc:
                    continue
                self._latest[symbol] = features
                self._latest.move_to_end(symbol)
            while len(self._latest) > self._max_symbols:
                self._latest.popitem(last=False)

    def latest_features(self, symbol: str) -> LatestFeatures | None:
        with self._lock:
            return self._latest.get(symbol)

    # -- counters ------------------------------------------------------------------------

    def hit(self, key: str, window_s: float, amount: int = 1) -> int:
        if amount < 1:
            raise ValueError(f"amount must be 1 or more, got {amount}")
        now = self._wall_clock()
        window_ms, number, _ = window_of(now, window_s)
        slot = (key, window_ms, number)
        counters = self._counters
        with self._lock:
            count, ends = counters.get(slot, (0, (number + 1) * window_ms / 1000))
            counters[slot] = (count + amount, ends)
            # New windows are appended, so the front holds the oldest: drop those that
            # ended (a cheap sweep, one check per hit) and any beyond the bound.
            while counters and (
                len(counters) > self._max_counters or next(iter(counters.values()))[1] <= now
            ):
                counters.popitem(last=False)
            return count + amount

    def count(self, key: str, window_s: float) -> int:
        window_ms, number, _ = window_of(self._wall_clock(), window_s)
        with self._lock:
            entry = self._counters.get((key, window_ms, number))
        return 0 if entry is None else entry[0]

    def close(self) -> None:
        with self._lock:
            self._predictions.clear()
            self._latest.clear()
            self._counters.clear()

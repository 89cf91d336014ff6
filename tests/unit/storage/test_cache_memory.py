"""The in-process cache's own logic: bounds, eviction order, windows, threads."""

from __future__ import annotations

import threading

import pytest

from quantmesh.storage.cache import LatestFeatures, MemoryCache
from quantmesh.storage.cache.port import window_of


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_predictions_beyond_the_bound_evict_the_least_recently_used() -> None:
    cache = MemoryCache(max_predictions=2)
    cache.put_predictions("m", [1, 2], [0.1, 0.2], ttl_s=60)
    assert cache.get_predictions("m", [1]) == [0.1]  # 1 is now the most recent
    cache.put_predictions("m", [3], [0.3], ttl_s=60)
    assert cache.get_predictions("m", [1, 2, 3]) == [0.1, None, 0.3]


def test_an_expired_prediction_is_dropped_when_read() -> None:
    clock = FakeClock()
    cache = MemoryCache(clock=clock)
    cache.put_predictions("m", [1], [0.5], ttl_s=1)
    clock.now = 0.999
    assert cache.get_predictions("m", [1]) == [0.5]
    clock.now = 1.0
    assert cache.get_predictions("m", [1]) == [None]
    assert len(cache._predictions) == 0


def test_latest_features_beyond_the_bound_evict_the_least_recently_written() -> None:
    cache = MemoryCache(max_symbols=2)
    for time_msc, symbol in enumerate(["EURUSD", "GBPUSD", "USDJPY"]):
        cache.put_latest_features({symbol: LatestFeatures(time_msc, ("a",), (1.0,))})
    assert cache.latest_features("EURUSD") is None
    assert cache.latest_features("USDJPY") is not None


def test_ended_counter_windows_are_swept_as_new_ones_open() -> None:
    wall = FakeClock(120.0)
    cache = MemoryCache(wall_clock=wall)
    cache.hit("a", 1)
    cache.hit("b", 1)
    wall.now = 121.5
    cache.hit("c", 1)
    assert list(cache._counters) == [("c", 1000, 121)]


def test_counters_beyond_the_bound_drop_the_oldest_window() -> None:
    cache = MemoryCache(max_counters=2, wall_clock=FakeClock(0.0))
    for key in "abc":
        cache.hit(key, 60)
    assert (cache.count("a", 60), cache.count("b", 60), cache.count("c", 60)) == (0, 1, 1)


def test_hits_from_many_threads_are_all_counted() -> None:
    cache = MemoryCache(wall_clock=FakeClock(0.0))

    def hammer() -> None:
        for _ in range(2_000):
            cache.hit("k", 3_600)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cache.count("k", 3_600) == 16_000


@pytest.mark.parametrize(
    ("now_s", "window_s", "expected"),
    [
        (120.0, 60, (60_000, 2, 60_000)),
        (179.999, 60, (60_000, 2, 1)),
        (180.0, 60, (60_000, 3, 60_000)),
        (10.25, 0.5, (500, 20, 250)),
    ],
)
def test_windows_are_aligned_to_the_epoch_in_milliseconds(
    now_s: float, window_s: float, expected: tuple[int, int, int]
) -> None:
    assert window_of(now_s, window_s) == expected


@pytest.mark.parametrize("field", ["max_predictions", "max_symbols", "max_counters"])
def test_bounds_must_be_positive(field: str) -> None:
    with pytest.raises(ValueError, match=f"{field} must be 1 or more"):
        MemoryCache(**{field: 0})  # type: ignore[arg-type]

"""The cache port's contract, run on the in-process cache and on a real redis-server.

Both adapters get the same fake clock for counter windows; the in-process cache also
takes it for TTLs, while the server expires keys on its own clock, so ``elapse`` both
moves the fake clock and, for the server, really waits (TTLs here are tens of ms).
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import redis

from quantmesh.storage.cache import (
    DEFAULT_URL,
    CachePort,
    LatestFeatures,
    MemoryCache,
    RedisCache,
    open_cache,
)
from quantmesh.storage.local_servers import LocalRedis
from quantmesh.storage.resilience import Backoff
from quantmesh.storage.urls import StoreConfigError, StoreUnavailableError, parse_store_url

SETTING = "QUANTMESH_CACHE_URL"
# A few quick retries: the outage tests wait for them to run out.
QUICK = Backoff(attempts=3, first_delay=0.01, max_delay=0.02)
START = 1_700_000_040.0  # a whole minute in Unix seconds, so windows start here


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    cache: CachePort
    clock: FakeClock
    elapse: Callable[[float], None]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[LocalRedis]:
    with LocalRedis() as server:
        yield server


@pytest.fixture
def raw_redis(redis_server: LocalRedis) -> Iterator[redis.Redis]:
    """A plain client, to look at keys the adapter wrote; the db starts empty."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushdb()
    yield client
    client.close()


def _redis_cache(server: LocalRedis, clock: FakeClock) -> RedisCache:
    return RedisCache.connect(
        parse_store_url(SETTING, server.url, {"redis": ""}), backoff=QUICK, wall_clock=clock
    )


@pytest.fixture(params=["memory", "redis"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    clock = FakeClock()
    if request.param == "memory":
        cache: CachePort = MemoryCache(clock=clock, wall_clock=clock)

        def elapse(seconds: float) -> None:
            clock.now += seconds

    else:
        request.getfixturevalue("raw_redis")  # flushes the db
        cache = _redis_cache(request.getfixturevalue("redis_server"), clock)

        def elapse(seconds: float) -> None:
            clock.now += seconds
            time.sleep(seconds)

    yield Harness(cache, clock, elapse)
    cache.close()


# -- predictions ---------------------------------------------------------------------------


def test_predictions_round_trip_with_misses_and_partial_hits(harness: Harness) -> None:
    cache = harness.cache
    assert cache.get_predictions("model-a", [1, 2, 3]) == [None, None, None]
    cache.put_predictions("model-a", [1, 3, 2**64 - 1], [0.25, 0.875, 1 / 3], ttl_s=60)
    assert cache.get_predictions("model-a", [1, 2, 3, 2**64 - 1]) == [0.25, None, 0.875, 1 / 3]
    assert cache.get_predictions("model-a", []) == []


def test_a_put_replaces_the_value_of_a_digest(harness: Harness) -> None:
    harness.cache.put_predictions("m", [7], [0.1], ttl_s=60)
    harness.cache.put_predictions("m", [7, 8], [0.2, 0.3], ttl_s=60)
    assert harness.cache.get_predictions("m", [7, 8]) == [0.2, 0.3]


def test_two_model_keys_never_read_each_others_predictions(harness: Harness) -> None:
    cache = harness.cache
    cache.put_predictions("sha-a", [5], [0.1], ttl_s=60)
    cache.put_predictions("eurusd@3", [5], [0.9], ttl_s=60)
    assert cache.get_predictions("sha-a", [5]) == [0.1]
    assert cache.get_predictions("eurusd@3", [5]) == [0.9]
    assert cache.get_predictions("sha-b", [5]) == [None]


def test_predictions_expire_after_their_ttl(harness: Harness) -> None:
    cache = harness.cache
    cache.put_predictions("m", [1], [0.5], ttl_s=0.05)
    cache.put_predictions("m", [2], [0.6], ttl_s=60)
    assert cache.get_predictions("m", [1, 2]) == [0.5, 0.6]
    harness.elapse(0.1)
    assert cache.get_predictions("m", [1, 2]) == [None, 0.6]


@pytest.mark.parametrize(
    ("digests", "values", "ttl_s", "message"),
    [
        ([1, 2], [0.5], 60.0, "2 digests but 1 values"),
        ([1], [0.5], 0.0, "ttl_s must be a positive"),
        ([1], [0.5], math.inf, "ttl_s must be a positive"),
    ],
)
def test_put_predictions_refuses_what_it_cannot_store(
    harness: Harness, digests: list[int], values: list[float], ttl_s: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        harness.cache.put_predictions("m", digests, values, ttl_s)
    assert harness.cache.get_predictions("m", digests) == [None] * len(digests)


# -- latest features -----------------------------------------------------------------------


def test_latest_features_are_overwritten_by_newer_vectors_only(harness: Harness) -> None:
    cache = harness.cache
    assert cache.latest_features("EURUSD") is None
    first = LatestFeatures(1_000, ("ret_1", "rsi_14"), (0.001, math.nan))
    cache.put_latest_features({"EURUSD": first, "GBPUSD": LatestFeatures(1_000, ("a",), (1.0,))})
    stored = cache.latest_features("EURUSD")
    assert stored is not None
    assert (stored.time_msc, stored.names, stored.values[0]) == (1_000, first.names, 0.001)
    assert math.isnan(stored.values[1])  # warm-up NaN survives the round trip

    newer = LatestFeatures(2_000, ("ret_1", "rsi_14"), (-0.002, 55.5))
    cache.put_latest_features({"EURUSD": newer})
    assert cache.latest_features("EURUSD") == newer
    # A replayed (older) row does not move "latest" back in time; an equal time replaces.
    cache.put_latest_features({"EURUSD": LatestFeatures(1_500, ("ret_1",), (9.0,))})
    assert cache.latest_features("EURUSD") == newer
    same_time = LatestFeatures(2_000, ("ret_1", "rsi_14"), (-0.002, 56.0))
    cache.put_latest_features({"EURUSD": same_time})
    assert cache.latest_features("EURUSD") == same_time
    assert cache.latest_features("GBPUSD") == LatestFeatures(1_000, ("a",), (1.0,))


def test_latest_features_need_a_name_per_value() -> None:
    with pytest.raises(ValueError, match="2 feature names but 1 values"):
        LatestFeatures(1, ("a", "b"), (1.0,))


# -- counters ------------------------------------------------------------------------------


def test_counters_count_within_a_window_and_restart_in_the_next(harness: Harness) -> None:
    cache, clock = harness.cache, harness.clock
    assert cache.count("tenant:acme", 60) == 0
    assert cache.hit("tenant:acme", 60) == 1
    assert cache.hit("tenant:acme", 60, amount=4) == 5
    assert cache.hit("tenant:other", 60) == 1
    clock.now += 59.9  # still the same minute
    assert cache.count("tenant:acme", 60) == 5
    assert cache.hit("tenant:acme", 60) == 6
    clock.now += 0.1  # the next minute
    assert cache.count("tenant:acme", 60) == 0
    assert cache.hit("tenant:acme", 60) == 1
    assert cache.count("tenant:other", 60) == 0


def test_counters_of_different_window_lengths_are_separate(harness: Harness) -> None:
    harness.cache.hit("k", 1, amount=2)
    harness.cache.hit("k", 60, amount=5)
    assert (harness.cache.count("k", 1), harness.cache.count("k", 60)) == (2, 5)


def test_counters_refuse_nonsense(harness: Harness) -> None:
    with pytest.raises(ValueError, match="amount must be 1 or more"):
        harness.cache.hit("k", 60, amount=0)
    with pytest.raises(ValueError, match="window_s must be at least"):
        harness.cache.hit("k", 0)


# -- Redis only: key layout, expiry on the server, outages ---------------------------------


def test_redis_keys_are_namespaced_and_expire(
    redis_server: LocalRedis, raw_redis: redis.Redis
) -> None:
    clock = FakeClock(START + 15)  # 45 s left in the minute
    cache = _redis_cache(redis_server, clock)
    cache.put_predictions("sha-a", [255], [0.5], ttl_s=30)
    cache.put_latest_features({"EURUSD": LatestFeatures(1, ("a",), (1.0,))})
    cache.hit("tenant:acme", 60)
    window = int(START // 60)
    assert sorted(raw_redis.keys("*")) == [
        f"quantmesh:count:tenant:acme:60000:{window}",
        "quantmesh:features:latest:EURUSD",
        "quantmesh:prediction:sha-a:00000000000000ff",
    ]
    assert 29_000 < raw_redis.pttl("quantmesh:prediction:sha-a:00000000000000ff") <= 30_000
    # The counter lives until its window ends, not a whole window from the last hit.
    assert 44_000 < raw_redis.pttl(f"quantmesh:count:tenant:acme:60000:{window}") <= 45_000
    assert raw_redis.ttl("quantmesh:features:latest:EURUSD") == -1  # kept until replaced
    cache.close()


def test_a_killed_server_raises_after_the_retries_and_serves_again_once_back(
    redis_server: LocalRedis, raw_redis: redis.Redis
) -> None:
    cache = _redis_cache(redis_server, FakeClock())
    cache.put_predictions("m", [1], [0.5], ttl_s=60)
    redis_server.kill()
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError) as raised:
            cache.get_predictions("m", [1])
        message = str(raised.value)
        assert SETTING in message
        assert f"get_predictions failed {QUICK.attempts} times" in message
        assert "ConnectionError" in message
        assert time.monotonic() - started < 2  # the retries' budget, not a hang
        with pytest.raises(StoreUnavailableError, match="hit failed"):
            cache.hit("k", 60)
    finally:
        redis_server.start()
    # The same cache object reconnects; the server came back empty (no persistence).
    assert cache.get_predictions("m", [1]) == [None]
    cache.put_predictions("m", [1], [0.75], ttl_s=60)
    assert cache.get_predictions("m", [1]) == [0.75]
    assert cache.hit("k", 60) == 1
    cache.close()


def test_a_call_during_a_short_outage_succeeds_once_the_server_is_back(
    redis_server: LocalRedis, raw_redis: redis.Redis
) -> None:
    cache = RedisCache.connect(
        parse_store_url(SETTING, redis_server.url, {"redis": ""}),
        backoff=Backoff(attempts=40, first_delay=0.05, max_delay=0.05),
    )
    redis_server.kill()
    restart = _in_thread(redis_server.start, after_s=0.3)
    try:
        cache.put_predictions("m", [3], [0.125], ttl_s=60)  # retried until the server is back
    finally:
        restart.join()
    assert cache.get_predictions("m", [3]) == [0.125]
    cache.close()


def _in_thread(action: Callable[[], object], after_s: float) -> threading.Thread:
    def run() -> None:
        time.sleep(after_s)
        action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


# -- opening: URLs and settings ------------------------------------------------------------


def test_the_default_url_is_the_in_process_cache() -> None:
    cache = open_cache(DEFAULT_URL)
    assert isinstance(cache, MemoryCache)
    assert cache.url == "memory://"


def test_a_redis_url_opens_the_redis_adapter(redis_server: LocalRedis) -> None:
    cache = open_cache(redis_server.url, setting="QUANTMESH_INFERENCE_CACHE_URL")
    assert isinstance(cache, RedisCache)
    assert cache.url == redis_server.url
    cache.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "QUANTMESH_X_URL is empty"),
        ("memcached://host:11211", "QUANTMESH_X_URL='memcached://host:11211' has scheme"),
        ("memory://somewhere", "the in-process cache takes no host or path"),
        ("redis://127.0.0.1:6379/zero", "the path must be a database number"),
        ("redis://127.0.0.1:99999/0", "not a valid URL"),
    ],
)
def test_a_bad_url_fails_naming_the_setting(url: str, message: str) -> None:
    with pytest.raises(StoreConfigError, match=message):
        open_cache(url, setting="QUANTMESH_X_URL")


def test_a_database_the_server_does_not_have_fails_naming_the_setting(
    redis_server: LocalRedis,
) -> None:
    url = redis_server.url.removesuffix("/0") + "/999"
    with pytest.raises(StoreConfigError, match=r"QUANTMESH_X_URL=.*DB index is out of range"):
        open_cache(url, setting="QUANTMESH_X_URL")


def test_an_unreachable_server_fails_at_open_naming_the_setting() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    with pytest.raises(StoreUnavailableError) as raised:
        open_cache(url, setting="QUANTMESH_X_URL", connect_backoff=QUICK)
    message = str(raised.value)
    assert message.startswith(f"QUANTMESH_X_URL={url!r}: cannot reach Redis/Dragonfly")
    assert "after 3 attempts" in message

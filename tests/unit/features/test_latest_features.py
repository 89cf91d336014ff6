"""Latest feature vectors: picked per batch, written off the stream's path, kept while the
cache is down, and written by the real service (QUANTMESH_FEATURES_CACHE_URL)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import redis

from quantmesh.runtime.server import ServiceRuntime
from quantmesh.services.features.client import FeatureSubscriber
from quantmesh.services.features.config import FeaturesSettings
from quantmesh.services.features.latest import LatestFeaturesPublisher, last_row_per_symbol
from quantmesh.services.features.schema import FEATURE_NAMES, FeatureRows
from quantmesh.services.features.service import build_runtime
from quantmesh.storage.cache import LatestFeatures, MemoryCache, RedisCache, open_cache
from quantmesh.storage.local_servers import LocalRedis
from quantmesh.storage.resilience import Backoff

K = len(FEATURE_NAMES)


def _rows(symbol_index: list[int], time_msc: list[int]) -> FeatureRows:
    n = len(symbol_index)
    values = np.arange(n * K, dtype=np.float64).reshape(n, K)
    values[:, 0] = np.nan  # a feature still warming up
    ints = np.zeros(n, np.int64)
    return FeatureRows(
        symbol_index=np.array(symbol_index, np.uint32),
        time_msc=np.array(time_msc, np.int64),
        bar_open_ms=np.array(time_msc, np.int64) - 3_600_000,
        values=values,
        session_mask=np.zeros(n, np.uint32),
        regime=np.zeros(n, np.uint8),
        tick_seq_first=ints,
        tick_seq_last=ints,
    )


def _same(stored: LatestFeatures | None, time_msc: int, values: np.ndarray) -> bool:
    assert stored is not None
    return (
        stored.time_msc == time_msc
        and stored.names == FEATURE_NAMES
        and np.array_equal(np.array(stored.values), values, equal_nan=True)
    )


def test_the_last_row_of_each_symbol_in_a_batch_is_its_latest() -> None:
    rows = _rows([0, 1, 0, 1, 0], [10, 10, 20, 20, 30])
    latest = last_row_per_symbol(["EURUSD", "GBPUSD", "USDJPY"], rows)
    assert sorted(latest) == ["EURUSD", "GBPUSD"]  # USDJPY had no row
    assert _same(latest["EURUSD"], 30, rows.values[4])
    assert _same(latest["GBPUSD"], 20, rows.values[3])
    assert math.isnan(latest["EURUSD"].values[0])
    assert last_row_per_symbol(["EURUSD"], _rows([], [])) == {}


async def test_offers_are_coalesced_and_an_older_offer_never_wins() -> None:
    cache = MemoryCache()
    publisher = LatestFeaturesPublisher(cache)
    first, second = _rows([0, 1], [10, 10]), _rows([0], [20])
    publisher.offer(["EURUSD", "GBPUSD"], first)
    publisher.offer(["EURUSD", "GBPUSD"], second)
    publisher.offer(["EURUSD"], _rows([0], [15]))  # e.g. another subscriber, behind
    assert await publisher.flush()
    assert publisher.pending == {}
    assert _same(cache.latest_features("EURUSD"), 20, second.values[0])
    assert _same(cache.latest_features("GBPUSD"), 10, first.values[1])


@pytest.fixture(scope="module")
def redis_server() -> Iterator[LocalRedis]:
    with LocalRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: LocalRedis) -> str:
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushdb()
    return redis_server.url


async def test_vectors_offered_while_redis_is_down_are_written_once_it_is_back(
    redis_server: LocalRedis, redis_url: str
) -> None:
    cache = open_cache(redis_url, backoff=Backoff(attempts=2, first_delay=0.01))
    publisher = LatestFeaturesPublisher(cache, retry_s=0.05)
    shutdown = asyncio.Event()
    job = asyncio.create_task(publisher.run(shutdown))
    rows = _rows([0], [10])
    redis_server.kill()
    try:
        publisher.offer(["EURUSD"], rows)
        await asyncio.sleep(0.1)  # at least one failed write
        assert sorted(publisher.pending) == ["EURUSD"]
        newer = _rows([0], [20])
        publisher.offer(["EURUSD"], newer)
    finally:
        redis_server.start()
    for _ in range(250):  # the job retries every retry_s until the write lands
        if not publisher.pending:
            break
        await asyncio.sleep(0.02)
    assert publisher.pending == {}
    job.cancel()
    await asyncio.gather(job, return_exceptions=True)
    reader = open_cache(redis_url)
    assert _same(reader.latest_features("EURUSD"), 20, newer.values[0])
    reader.close()


async def test_the_service_writes_the_last_row_of_each_symbol_it_streamed(
    marketdata: ServiceRuntime, redis_url: str
) -> None:
    settings = FeaturesSettings(
        port=0, marketdata_address=f"127.0.0.1:{marketdata.port}", cache_url=redis_url
    )
    rows: list[tuple[str, int, np.ndarray]] = []
    async with (
        build_runtime(settings) as features,
        grpc.aio.insecure_channel(f"127.0.0.1:{features.port}") as channel,
    ):
        async for batch in FeatureSubscriber(channel).batches():
            values = np.array(batch.values).reshape(len(batch.time_msc), -1)
            for i, (symbol, time_msc) in enumerate(
                zip(batch.symbol_index, batch.time_msc, strict=True)
            ):
                rows.append((batch.symbols[symbol], time_msc, values[i]))
    # The runtime stopped: its publisher wrote what was pending before closing.
    last = {symbol: (time_msc, values) for symbol, time_msc, values in rows}
    assert last
    cache = open_cache(redis_url)
    assert isinstance(cache, RedisCache)
    for name, (time_msc, values) in last.items():
        assert _same(cache.latest_features(name), time_msc, values)
    cache.close()

"""The prediction cache shared through a real redis-server (QUANTMESH_INFERENCE_CACHE_URL)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import numpy as np
import pytest
import redis
from pydantic import ValidationError

from quantmesh.services.inference import service
from quantmesh.services.inference.cache import PredictionCache
from quantmesh.services.inference.config import InferenceSettings
from quantmesh.services.inference.core import LoadedModel, ModelServer
from quantmesh.services.inference.service import build_model_server, build_prediction_cache
from quantmesh.services.inference.testing import MODEL_NAME
from quantmesh.services.registry.core import ModelRegistry
from quantmesh.storage.cache import RedisCache, open_cache
from quantmesh.storage.local_servers import LocalRedis
from quantmesh.storage.resilience import Backoff
from quantmesh.storage.urls import StoreUnavailableError

QUICK = Backoff(attempts=2, first_delay=0.01, max_delay=0.01)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[LocalRedis]:
    with LocalRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: LocalRedis) -> str:
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushdb()
    return redis_server.url


def _server(registry: ModelRegistry, url: str, local_entries: int = 0) -> ModelServer:
    cache = PredictionCache(local_entries, open_cache(url, backoff=QUICK), ttl_s=60)
    server = ModelServer(registry, cache=cache)
    server.serve(f"{MODEL_NAME}@champion")
    return server


def test_predictions_through_redis_are_identical_and_hit_on_the_second_pass(
    registry: ModelRegistry, features: np.ndarray, redis_url: str
) -> None:
    uncached = ModelServer(registry, cache_size=0)
    uncached.serve(f"{MODEL_NAME}@champion")
    expected = uncached.predict(MODEL_NAME, features[:64]).probability_up

    server = _server(registry, redis_url)  # no in-process tier: every hit is Redis's
    first = server.predict(MODEL_NAME, features[:64])
    second = server.predict(MODEL_NAME, features[:64])
    single = server.predict(MODEL_NAME, features[5:6])  # the batch-1 path
    np.testing.assert_array_equal(first.probability_up, expected)
    np.testing.assert_array_equal(second.probability_up, expected)
    np.testing.assert_array_equal(single.probability_up, expected[5:6])
    assert (first.cache_hits, second.cache_hits, single.cache_hits) == (0, 64, 1)
    assert second.cached.all()
    stats = server.cache.stats()
    assert (stats.hits, stats.misses, stats.size) == (65, 64, 0)
    with redis.Redis.from_url(redis_url) as client:
        sha = server.model(MODEL_NAME).record.sha256
        assert len(client.keys(f"quantmesh:prediction:{sha}:*")) == 64


def test_a_second_replica_reads_what_the_first_predicted(
    registry: ModelRegistry, features: np.ndarray, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _server(registry, redis_url, local_entries=1_000)
    replica = _server(registry, redis_url, local_entries=1_000)
    ran: list[int] = []
    original = LoadedModel.predict

    def counting(self: LoadedModel, rows: np.ndarray) -> np.ndarray:
        ran.append(len(rows))
        return original(self, rows)

    monkeypatch.setattr(LoadedModel, "predict", counting)
    written = first.predict(MODEL_NAME, features[:16])
    read = replica.predict(MODEL_NAME, features[8:24])  # rows 8..15 are in Redis
    again = replica.predict(MODEL_NAME, features[8:24])  # now all in its own process
    assert ran == [16, 8]
    assert read.cached.tolist() == [True] * 8 + [False] * 8
    np.testing.assert_array_equal(read.probability_up[:8], written.probability_up[8:])
    assert again.cache_hits == 16
    assert replica.cache.stats().size == 16  # Redis's hits were kept in process too


def test_predictions_go_on_while_redis_is_down_and_share_again_once_back(
    registry: ModelRegistry, features: np.ndarray, redis_server: LocalRedis, redis_url: str
) -> None:
    cache = PredictionCache(0, open_cache(redis_url, backoff=QUICK), ttl_s=60, retry_after_s=0)
    server = ModelServer(registry, cache=cache)
    server.serve(f"{MODEL_NAME}@champion")
    expected = server.predict(MODEL_NAME, features[:8]).probability_up
    redis_server.kill()
    try:
        during = server.predict(MODEL_NAME, features[:8])
        one = server.predict(MODEL_NAME, features[:1])
    finally:
        redis_server.start()
    np.testing.assert_array_equal(during.probability_up, expected)
    np.testing.assert_array_equal(one.probability_up, expected[:1])
    assert (during.cache_hits, one.cache_hits) == (0, 0)
    server.predict(MODEL_NAME, features[:8])  # the restarted server is empty: refilled
    assert server.predict(MODEL_NAME, features[:8]).cache_hits == 8


def test_the_service_opens_the_shared_cache_its_setting_names(
    registry: ModelRegistry, redis_url: str
) -> None:
    settings = InferenceSettings(
        cache_url=redis_url, cache_size=10, cache_ttl_seconds=30, model_refs="missing"
    )
    server = build_model_server(settings, registry)
    assert isinstance(server.cache.shared, RedisCache)
    assert server.cache.max_entries == 10
    server.cache.close()
    assert build_prediction_cache(InferenceSettings()).shared is None  # the default


def test_an_unreachable_shared_cache_fails_the_start_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(service, "SHARED_CACHE_CONNECT_BACKOFF", QUICK)  # fail fast
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    settings = InferenceSettings(cache_url=url)
    with pytest.raises(StoreUnavailableError, match="QUANTMESH_INFERENCE_CACHE_URL="):
        build_prediction_cache(settings)


def test_the_shared_cache_settings_default_to_none_and_refuse_a_zero_ttl(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert InferenceSettings().cache_url == ""
    monkeypatch.setenv("QUANTMESH_INFERENCE_CACHE_URL", "redis://cache:6379/0")
    monkeypatch.setenv("QUANTMESH_INFERENCE_CACHE_TTL_SECONDS", "600")
    settings = InferenceSettings()
    assert (settings.cache_url, settings.cache_ttl_seconds) == ("redis://cache:6379/0", 600)
    with pytest.raises(ValidationError):
        InferenceSettings(cache_ttl_seconds=0)

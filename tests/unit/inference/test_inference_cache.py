"""Feature digests (the contract's definition) and the prediction cache."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from quantmesh.services.inference.cache import PredictionCache, feature_digests, row_digest
from quantmesh.services.inference.core import LoadedModel, ModelServer
from quantmesh.services.inference.testing import MODEL_NAME


def test_digest_is_the_first_8_bytes_big_endian_of_sha256_of_float64_le() -> None:
    row = np.array([1.5, -2.25, 3e-4], np.float64)
    by_hand = int.from_bytes(hashlib.sha256(row.astype("<f8").tobytes()).digest()[:8], "big")
    assert feature_digests(row[None, :]).tolist() == [by_hand]
    assert row_digest(row) == by_hand


def test_digest_of_fp32_row_equals_digest_of_its_float64_values(features: np.ndarray) -> None:
    rows32 = features[:10]
    np.testing.assert_array_equal(
        feature_digests(rows32), feature_digests(rows32.astype(np.float64))
    )
    assert len(set(feature_digests(rows32).tolist())) == 10
    assert feature_digests(rows32).dtype == np.uint64


def test_cache_evicts_least_recently_used_and_counts() -> None:
    cache = PredictionCache(max_entries=2)
    cache.store("m", np.array([1, 2], np.uint64), np.array([0.1, 0.2], np.float32))
    assert cache.get("m", 1) == pytest.approx(0.1)  # 1 is now the most recent
    cache.store("m", np.array([3], np.uint64), np.array([0.3], np.float32))
    found, missing = cache.lookup("m", np.array([1, 2, 3], np.uint64))
    assert missing.tolist() == [False, True, False]
    assert found[[0, 2]].tolist() == pytest.approx([0.1, 0.3])
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.size) == (3, 1, 2)
    assert stats.hit_ratio == pytest.approx(0.75)


def test_cache_keys_on_the_model_artifact_too() -> None:
    cache = PredictionCache(10)
    cache.store("model-a", np.array([7], np.uint64), np.array([0.9], np.float32))
    assert cache.get("model-b", 7) is None
    assert cache.get("model-a", 7) == pytest.approx(0.9)


def test_cache_of_size_zero_is_disabled_and_counts_misses() -> None:
    cache = PredictionCache(0)
    cache.store("m", np.array([1], np.uint64), np.array([0.5], np.float32))
    assert cache.get("m", 1) is None
    assert cache.stats().misses == 1
    with pytest.raises(ValueError, match="0 or more"):
        PredictionCache(-1)


def test_predict_runs_the_session_once_for_the_misses_only(
    server: ModelServer, features: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = LoadedModel.predict

    def counting(self: LoadedModel, rows: np.ndarray) -> np.ndarray:
        calls.append(len(rows))
        return original(self, rows)

    monkeypatch.setattr(LoadedModel, "predict", counting)
    first = server.predict(MODEL_NAME, features[:8])
    again = server.predict(MODEL_NAME, features[4:12])  # rows 4..7 are cached
    single = server.predict(MODEL_NAME, features[3:4])  # cached, batch-1 path
    assert calls == [8, 4]
    assert (first.cache_hits, again.cache_hits, single.cache_hits) == (0, 4, 1)
    np.testing.assert_array_equal(again.probability_up[:4], first.probability_up[4:])
    np.testing.assert_array_equal(single.probability_up, first.probability_up[3:4])


def test_a_switched_model_never_reads_the_previous_models_entries(
    server: ModelServer, features: np.ndarray
) -> None:
    before = server.predict(MODEL_NAME, features[:1])
    server.switch(MODEL_NAME, alias="challenger")
    after = server.predict(MODEL_NAME, features[:1])
    assert after.cache_hits == 0
    assert after.probability_up[0] != before.probability_up[0]

"""Model registry core: versions, aliases, lookups, refs, errors, integrity, concurrency."""

from __future__ import annotations

import hashlib
import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from quantmesh.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from quantmesh.services.registry.core import ModelRegistry, ModelVersion

FEATURES = ("ret_1", "ret_4", "vol_24")


def register(registry: ModelRegistry, name: str, payload: bytes, **kw: Any) -> ModelVersion:
    args: dict[str, Any] = {
        "feature_names": FEATURES,
        "metrics": {"accuracy": 0.51, "log_loss": 0.69},
        "data_from_ms": 1_483_308_000_000,
        "data_to_ms": 1_514_581_200_000,
    }
    return registry.register(name, payload, **(args | kw))


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry", clock=lambda: 1_700_000_000_000)


def test_versions_count_from_one_per_model_name(registry: ModelRegistry) -> None:
    assert register(registry, "eurusd-direction", b"a").version == 1
    assert register(registry, "eurusd-direction", b"b").version == 2
    assert register(registry, "gbpusd-direction", b"c").version == 1
    assert register(registry, "eurusd-direction", b"d").version == 3
    assert registry.list_models() == ["eurusd-direction", "gbpusd-direction"]
    assert [v.version for v in registry.list_versions("eurusd-direction")] == [1, 2, 3]


def test_a_version_keeps_everything_it_was_registered_with(registry: ModelRegistry) -> None:
    mv = register(
        registry,
        "eurusd-direction",
        b"onnx-bytes",
        description="mlp 32x16",
        params={"horizon_bars": "1", "seed": "7"},
        aliases=["champion"],
    )
    again = registry.get("eurusd-direction", 1)
    assert again == mv
    assert mv.sha256 == hashlib.sha256(b"onnx-bytes").hexdigest()
    assert mv.artifact_path == registry.root / "artifacts" / f"{mv.sha256}.onnx"
    assert mv.feature_names == FEATURES
    assert dict(mv.metrics) == {"accuracy": 0.51, "log_loss": 0.69}
    assert dict(mv.params) == {"horizon_bars": "1", "seed": "7"}
    assert (mv.data_from_ms, mv.data_to_ms) == (1_483_308_000_000, 1_514_581_200_000)
    assert mv.created_ms == 1_700_000_000_000
    assert mv.description == "mlp 32x16"
    assert mv.aliases == ("champion",)
    assert registry.read_artifact(mv) == b"onnx-bytes"


def test_registering_the_same_bytes_again_returns_the_existing_version(
    registry: ModelRegistry,
) -> None:
    first = register(registry, "eurusd-direction", b"same")
    again, existing = registry.register_or_get(
        "eurusd-direction",
        b"same",
        feature_names=FEATURES,
        metrics={},
        data_from_ms=0,
        data_to_ms=1,
    )
    assert existing
    assert again.version == first.version == 1
    assert dict(again.metrics) == dict(first.metrics)
    # Another model may hold the same bytes as its own version; the file is shared.
    other = register(registry, "other-model", b"same")
    assert other.version == 1
    assert other.artifact_path == first.artifact_path


def test_get_without_selector_returns_the_latest_version(registry: ModelRegistry) -> None:
    register(registry, "m", b"1")
    register(registry, "m", b"2")
    assert registry.get("m").version == 2


def test_aliases_are_set_moved_and_deleted(registry: ModelRegistry) -> None:
    register(registry, "m", b"1", aliases=["champion"])
    register(registry, "m", b"2")
    assert registry.get("m", alias="champion").version == 1

    moved = registry.set_alias("m", "champion", 2)
    assert moved.version == 2
    assert moved.aliases == ("champion",)
    assert registry.get("m", 1).aliases == ()
    assert registry.get("m", alias="champion").version == 2

    registry.set_alias("m", "challenger", 1)
    assert registry.get("m", 1).aliases == ("challenger",)
    registry.delete_alias("m", "challenger")
    assert registry.get("m", 1).aliases == ()
    with pytest.raises(NotFound, match="no alias 'challenger'; its aliases: champion -> 2"):
        registry.get("m", alias="challenger")


def test_resolve_accepts_name_alias_and_version_refs(registry: ModelRegistry) -> None:
    register(registry, "eurusd-direction", b"1", aliases=["champion"])
    register(registry, "eurusd-direction", b"2")
    register(registry, "eurusd-direction", b"3", aliases=["challenger"])
    assert registry.resolve("eurusd-direction").version == 3
    assert registry.resolve("eurusd-direction@champion").version == 1
    assert registry.resolve("eurusd-direction@challenger").version == 3
    assert registry.resolve("eurusd-direction:2").version == 2
    assert registry.resolve("eurusd-direction:2").ref == "eurusd-direction:2"


@pytest.mark.parametrize(
    "ref",
    ["", "m@", "m:", "@champion", ":1", "m:0", "m:x", "m:-1", "m@a:1", "m::1", "M", "m@Champ"],
)
def test_resolve_rejects_malformed_refs(registry: ModelRegistry, ref: str) -> None:
    register(registry, "m", b"1")
    with pytest.raises(InvalidArgument):
        registry.resolve(ref)


def test_not_found_names_what_exists(registry: ModelRegistry) -> None:
    with pytest.raises(NotFound, match="holds no model yet"):
        registry.get("eurusd-direction")
    register(registry, "eurusd-direction", b"1")
    register(registry, "eurusd-direction", b"2")
    register(registry, "gbpusd-direction", b"3")
    with pytest.raises(NotFound, match="models: eurusd-direction, gbpusd-direction"):
        registry.get("usdjpy-direction")
    with pytest.raises(NotFound, match="has no version 9; it has versions 1 to 2"):
        registry.get("eurusd-direction", 9)
    with pytest.raises(NotFound, match="has no alias 'champion'; it has no aliases"):
        registry.resolve("eurusd-direction@champion")
    with pytest.raises(NotFound, match="no model named 'usdjpy-direction'"):
        registry.list_versions("usdjpy-direction")
    with pytest.raises(NotFound, match="no version 3"):
        registry.set_alias("gbpusd-direction", "champion", 3)
    with pytest.raises(NotFound, match="no alias 'champion'"):
        registry.delete_alias("gbpusd-direction", "champion")


@pytest.mark.parametrize("name", ["", "Upper", "1model", "has_underscore", "a" * 65, "a b"])
def test_invalid_model_names_are_rejected(registry: ModelRegistry, name: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid model name"):
        register(registry, name, b"x")


@pytest.mark.parametrize("alias", ["", "Champion", "1st", "a" * 33, "with space", "x@y"])
def test_invalid_aliases_are_rejected(registry: ModelRegistry, alias: str) -> None:
    register(registry, "m", b"x")
    with pytest.raises(InvalidArgument, match="invalid alias"):
        registry.set_alias("m", alias, 1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"feature_names": ()}, "feature_names is empty"),
        ({"feature_names": ("a", "a")}, "distinct"),
        ({"metrics": {"accuracy": "high"}}, "must be a number"),
        ({"data_from_ms": 10, "data_to_ms": 10}, "range"),
        ({"params": {"seed": 7}}, "params"),
    ],
)
def test_bad_registrations_are_rejected_and_leave_nothing(
    registry: ModelRegistry, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        register(registry, "m", b"x", **change)
    assert registry.list_models() == []


def test_a_failed_artifact_write_leaves_no_version(
    registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_disk(sha256: str, data: bytes) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(registry, "_store_artifact", broken_disk)
    with pytest.raises(OSError, match="disk full"):
        register(registry, "m", b"x", aliases=["champion"])
    monkeypatch.undo()
    assert registry.list_models() == []
    assert register(registry, "m", b"y").version == 1


def test_a_tampered_artifact_fails_its_integrity_check(registry: ModelRegistry) -> None:
    mv = register(registry, "m", b"genuine model")
    mv.artifact_path.write_bytes(b"evil model")
    with pytest.raises(FailedPrecondition, match="integrity check"):
        registry.read_artifact(mv)
    mv.artifact_path.unlink()
    with pytest.raises(FailedPrecondition, match="missing"):
        registry.read_artifact(mv)
    # Registering the genuine bytes again repairs the file.
    register(registry, "m", b"genuine model")
    assert registry.read_artifact(mv) == b"genuine model"


def test_two_registries_on_one_root_see_each_others_writes(tmp_path: Path) -> None:
    a = ModelRegistry(tmp_path)
    b = ModelRegistry(tmp_path)
    register(a, "m", b"1")
    assert b.get("m").version == 1
    assert register(b, "m", b"2").version == 2
    b.set_alias("m", "champion", 2)
    assert a.resolve("m@champion").version == 2
    a.delete_alias("m", "champion")
    with pytest.raises(NotFound):
        b.resolve("m@champion")
    assert (tmp_path / "registry.sqlite3").exists()


def _register_many(root: str, worker: int, count: int) -> list[int]:
    registry = ModelRegistry(Path(root))
    return [register(registry, "m", f"{worker}-{i}".encode()).version for i in range(count)]


def test_processes_registering_at_once_get_distinct_consecutive_versions(
    tmp_path: Path,
) -> None:
    ModelRegistry(tmp_path)  # create the schema once; workers also race on opening
    context = multiprocessing.get_context("fork")
    with context.Pool(3) as pool:
        results = pool.starmap(_register_many, [(str(tmp_path), w, 8) for w in range(3)])
    versions = sorted(v for result in results for v in result)
    assert versions == list(range(1, 25))
    assert len({v.sha256 for v in ModelRegistry(tmp_path).list_versions("m")}) == 24

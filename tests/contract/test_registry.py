"""The model registry's metadata on both relational adapters: SQLite and PostgreSQL.

Versions count from one per model without gaps however many registries write at once,
aliases move atomically, and a registry written before the tables were renamed (schema
version 1) is migrated with its data.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from quantmesh.runtime.errors import NotFound
from quantmesh.services.registry.core import MIGRATIONS, ModelRegistry
from quantmesh.storage.relational.migrations import applied_versions

FEATURES = ["ret_1", "atr_14_rel"]


def register(registry: ModelRegistry, name: str, payload: bytes) -> int:
    return registry.register(
        name,
        payload,
        feature_names=FEATURES,
        metrics={"accuracy": 0.51},
        data_from_ms=0,
        data_to_ms=1,
    ).version


def test_concurrent_registries_number_versions_without_gaps(
    database_url: str, tmp_path: Path
) -> None:
    registries = [ModelRegistry(tmp_path / "models", database=database_url) for _ in range(3)]
    numbers: list[int] = []
    lock = threading.Lock()

    def work(registry: ModelRegistry, worker: int) -> None:
        for i in range(5):
            version = register(registry, "eurusd-direction", f"{worker}-{i}".encode())
            with lock:
                numbers.append(version)

    threads = [threading.Thread(target=work, args=(r, n)) for n, r in enumerate(registries)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(numbers) == list(range(1, 16))
    versions = registries[0].list_versions("eurusd-direction")
    assert [v.version for v in versions] == list(range(1, 16))
    for registry in registries:
        registry.close()


def test_aliases_move_and_unknown_names_say_what_exists(database_url: str, tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models", database=database_url)
    register(registry, "eurusd-direction", b"one")
    register(registry, "eurusd-direction", b"two")
    registry.set_alias("eurusd-direction", "champion", 1)
    registry.set_alias("eurusd-direction", "champion", 2)
    assert registry.get("eurusd-direction", alias="champion").version == 2
    assert registry.get("eurusd-direction", version=1).aliases == ()
    registry.delete_alias("eurusd-direction", "champion")
    with pytest.raises(NotFound, match="no alias 'champion'"):
        registry.get("eurusd-direction", alias="champion")
    with pytest.raises(NotFound, match="models: eurusd-direction"):
        registry.get("gbpusd-direction")
    # The artifact round-trips, verified against its recorded hash.
    assert registry.read_artifact(registry.get("eurusd-direction")) == b"two"
    registry.close()


def test_a_version_1_registry_is_migrated_with_its_data(tmp_path: Path) -> None:
    root = tmp_path / "old-registry"
    root.mkdir()
    with sqlite3.connect(root / "registry.sqlite3") as old:  # as the registry used to write it
        old.executescript(MIGRATIONS[0].sqlite)
        old.execute(
            "INSERT INTO versions VALUES ('eurusd-direction', 1, ?, '[\"ret_1\"]', '{}', '{}', "
            "0, 1, 5, 'kept')",
            ("a" * 64,),
        )
        old.execute("INSERT INTO aliases VALUES ('eurusd-direction', 'champion', 1, 5)")
    registry = ModelRegistry(root)
    kept = registry.get("eurusd-direction", alias="champion")
    assert (kept.version, kept.description, kept.sha256) == (1, "kept", "a" * 64)
    assert applied_versions(registry._db, "registry") == [1, 2]
    registry.close()

"""Model registry core: versioned ONNX models: metadata on the relational port, artifacts
content-addressed on disk.

- Metadata: table ``model_versions`` holds one row per ``(name, version)`` with the
  artifact's SHA-256, feature names, metrics, data range, description and params;
  ``model_aliases`` maps ``(name, alias)`` to a version (``migrations/``). They live in
  ``<root>/registry.sqlite3`` by default, or in the database ``QUANTMESH_DATABASE_URL``
  (or the ``database`` argument) names, e.g. PostgreSQL shared by every service.
- ``<root>/artifacts/<sha256>.onnx``: the ONNX bytes, named by their SHA-256, so two
  versions (of any models) with identical bytes share one file.

Every write is one transaction under the model's lock, so registries in several
processes assign versions 1, 2, 3, … per name without gaps or duplicates, and readers
always see a consistent snapshot. Registering is idempotent on content, as the
``RegisterModel`` contract asks: bytes whose SHA-256 is already a version of the same
model return that version instead of a new one. Nothing here imports grpc; errors are
:mod:`quantmesh.runtime.errors`.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from quantmesh.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from quantmesh.storage.relational import Database, Transaction, open_database
from quantmesh.storage.relational.database import SqliteDatabase
from quantmesh.storage.relational.migrations import load_migrations, migrate

__all__ = ["ModelRegistry", "ModelVersion", "validate_alias", "validate_name"]

# Names as the registry contract defines them; '@' and ':' can never occur, so refs parse.
_NAME = re.compile(r"[a-z][a-z0-9-]{0,63}")
_ALIAS = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_REF = re.compile(r"(?P<name>[^@:]+)(?:@(?P<alias>[^@:]+)|:(?P<version>[^@:]+))?")
_VERSION = re.compile(r"[1-9][0-9]{0,17}")
_BUSY_TIMEOUT_S = 30.0  # how long a writer waits for another process's transaction

MIGRATIONS = load_migrations("quantmesh.services.registry")
# Spelled out, not formatted: queries stay literal strings.
_INSERT_VERSION = (
    "INSERT INTO model_versions (name, version, sha256, feature_names, metrics, params, "
    "data_from_ms, data_to_ms, created_ms, description) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT_VERSION = (
    "SELECT name, version, sha256, feature_names, metrics, params, data_from_ms, "
    "data_to_ms, created_ms, description FROM model_versions WHERE name = ? AND version = ?"
)
_SELECT_VERSIONS = (
    "SELECT name, version, sha256, feature_names, metrics, params, data_from_ms, "
    "data_to_ms, created_ms, description FROM model_versions WHERE name = ? ORDER BY version"
)


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model, as stored (immutable; aliases as of the read).

    Attributes
    ----------
    name, version:
        Model name and its version, 1 for the first.
    sha256:
        SHA-256 of the ONNX artifact, 64 lowercase hex digits.
    artifact_path:
        Where the artifact lies; read it with :meth:`ModelRegistry.read_artifact`, which
        verifies the hash.
    feature_names:
        The model's inputs, in column order.
    metrics:
        Out-of-sample evaluation metrics, e.g. ``accuracy``, ``log_loss``.
    data_from_ms, data_to_ms:
        Training and evaluation data range, UTC epoch ms, ``[from, to)``.
    created_ms:
        Registration time, UTC epoch ms.
    description:
        Free text.
    aliases:
        Aliases pointing at this version, sorted.
    params:
        Free string parameters (horizon, seed, hyperparameters, …).
    """

    name: str
    version: int
    sha256: str
    artifact_path: Path
    feature_names: tuple[str, ...]
    metrics: Mapping[str, float]
    data_from_ms: int
    data_to_ms: int
    created_ms: int
    description: str
    aliases: tuple[str, ...]
    params: Mapping[str, str]

    @property
    def ref(self) -> str:
        """``name:version``, a reference :meth:`ModelRegistry.resolve` accepts."""
        return f"{self.name}:{self.version}"


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid model name, else raise InvalidArgument."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"invalid model name {name!r}: use 1 to 64 characters of a-z, 0-9 and '-', "
            "starting with a letter, e.g. 'eurusd-h1-direction'"
        )
    return name


def validate_alias(alias: str) -> str:
    """Return ``alias`` if it is a valid alias name, else raise InvalidArgument."""
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias):
        raise InvalidArgument(
            f"invalid alias {alias!r}: use 1 to 32 characters of a-z, 0-9, '_' and '-', "
            "starting with a letter, e.g. 'champion' or 'challenger'"
        )
    return alias


def _validate_version(version: int) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidArgument(f"invalid version {version!r}: versions are integers from 1")
    return version


class ModelRegistry:
    """Versioned model store on one directory; safe to share between processes.

    Parameters
    ----------
    root:
        Directory of the registry; created if missing.
    clock:
        Returns the current UTC epoch ms (injectable for tests).
    """

    def __init__(
        self,
        root: Path,
        *,
        clock: Callable[[], int] | None = None,
        database: Database | str | None = None,
    ) -> None:
        self.root = Path(root)
        self._artifacts = self.root / "artifacts"
        self._artifacts.mkdir(parents=True, exist_ok=True)
        self._clock = clock or (lambda: time.time_ns() // 1_000_000)
        if database is None:
            database = os.environ.get("QUANTMESH_DATABASE_URL") or ""
        if isinstance(database, str):
            self._db: Database = (
                open_database(database)
                if database
                else SqliteDatabase(self.root / "registry.sqlite3")
            )
        else:
            self._db = database
        migrate(self._db, "registry", MIGRATIONS)

    def close(self) -> None:
        """Close the metadata database (a registry left open closes with the process)."""
        self._db.close()

    # --- writes -------------------------------------------------------------------

    def register(
        self,
        name: str,
        onnx_bytes: bytes,
        *,
        feature_names: Sequence[str],
        metrics: Mapping[str, float],
        data_from_ms: int,
        data_to_ms: int,
        description: str = "",
        params: Mapping[str, str] | None = None,
        aliases: Iterable[str] = (),
    ) -> ModelVersion:
        """Register ``onnx_bytes`` as the next version of ``name`` and return it.

        See :meth:`register_or_get`, which also tells whether the version already
        existed.
        """
        return self.register_or_get(
            name,
            onnx_bytes,
            feature_names=feature_names,
            metrics=metrics,
            data_from_ms=data_from_ms,
            data_to_ms=data_to_ms,
            description=description,
            params=params,
            aliases=aliases,
        )[0]

    def register_or_get(
        self,
        name: str,
        onnx_bytes: bytes,
        *,
        feature_names: Sequence[str],
        metrics: Mapping[str, float],
        data_from_ms: int,
        data_to_ms: int,
        description: str = "",
        params: Mapping[str, str] | None = None,
        aliases: Iterable[str] = (),
    ) -> tuple[ModelVersion, bool]:
        """Register a version atomically; idempotent on the artifact's content.

        Parameters
        ----------
        name:
            Model name, ``[a-z][a-z0-9-]{0,63}``.
        onnx_bytes:
            The ONNX artifact.
        feature_names:
            The model's input features in column order; non-empty and distinct.
        metrics:
            Evaluation metrics (numbers; NaN allowed for "not defined").
        data_from_ms, data_to_ms:
            Data range ``[from, to)`` in UTC epoch ms; ``to > from``.
        description, params:
            Free text and string parameters.
        aliases:
            Aliases to point at the version (moved if they point elsewhere).

        Returns
        -------
        tuple[ModelVersion, bool]
            The version, and True if these bytes were already a version of ``name``
            (that version is returned unchanged, apart from ``aliases`` being applied).

        Raises
        ------
        InvalidArgument
            For a bad name, alias, feature list, metric, param or data range.
        """
        validate_name(name)
        if not isinstance(onnx_bytes, bytes | bytearray) or not onnx_bytes:
            raise InvalidArgument("the ONNX artifact is empty")
        features = _check_features(feature_names)
        metric_values = _check_metrics(metrics)
        param_values = _check_params(params or {})
        if not data_from_ms < data_to_ms:
            raise InvalidArgument(
                f"data range [{data_from_ms}, {data_to_ms}) is empty: data_to_ms must be "
                "after data_from_ms"
            )
        alias_list = sorted({validate_alias(a) for a in aliases})
        sha = hashlib.sha256(onnx_bytes).hexdigest()
        now = self._clock()
        with self._write(name) as conn:
            row = conn.fetchone(
                "SELECT version FROM model_versions WHERE name = ? AND sha256 = ?", name, sha
            )
            existing = row is not None
            if row is not None:
                version = int(row[0])
            else:
                latest = conn.fetchone(
                    "SELECT coalesce(max(version), 0) FROM model_versions WHERE name = ?", name
                )
                version = int(latest[0] if latest else 0) + 1
                conn.execute(
                    _INSERT_VERSION,
                    name,
                    version,
                    sha,
                    json.dumps(features),
                    json.dumps(metric_values),
                    json.dumps(param_values),
                    int(data_from_ms),
                    int(data_to_ms),
                    now,
                    str(description),
                )
            for alias in alias_list:
                _upsert_alias(conn, name, alias, version, now)
            # Written inside the transaction: if the write fails, the row rolls back, and
            # a row never commits without its artifact on disk.
            self._store_artifact(sha, bytes(onnx_bytes))
            return self._load(conn, name, version), existing

    def set_alias(self, name: str, alias: str, version: int) -> ModelVersion:
        """Point ``alias`` of ``name`` at ``version`` (moving it if set) and return it.

        Raises
        ------
        InvalidArgument
            For a bad name, alias or version number.
        NotFound
            For an unknown model or version.
        """
        validate_name(name)
        validate_alias(alias)
        _validate_version(version)
        with self._write(name) as conn:
            self._load(conn, name, version)  # NotFound before any change
            _upsert_alias(conn, name, alias, version, self._clock())
            return self._load(conn, name, version)

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove ``alias`` of ``name``; NotFound if the model has no such alias."""
        validate_name(name)
        validate_alias(alias)
        with self._write(name) as conn:
            deleted = conn.execute(
                "DELETE FROM model_aliases WHERE name = ? AND alias = ?", name, alias
            )
            if not deleted:
                raise NotFound(self._no_alias(conn, name, alias))

    # --- reads --------------------------------------------------------------------

    def get(self, name: str, version: int | None = None, alias: str | None = None) -> ModelVersion:
        """One version of ``name``: by ``version``, by ``alias``, or the latest.

        Raises
        ------
        InvalidArgument
            For a bad name, alias or version, or both a version and an alias.
        NotFound
            For an unknown model, version or alias; the message lists what exists.
        """
        validate_name(name)
        if version is not None and alias is not None:
            raise InvalidArgument("give a version or an alias, not both")
        with self._read() as conn:
            if alias is not None:
                validate_alias(alias)
                row = conn.fetchone(
                    "SELECT version FROM model_aliases WHERE name = ? AND alias = ?", name, alias
                )
                if row is None:
                    raise NotFound(self._no_alias(conn, name, alias))
                return self._load(conn, name, int(row[0]))
            if version is None:
                found = conn.fetchone(
                    "SELECT max(version) FROM model_versions WHERE name = ?", name
                )
                latest = found[0] if found else None
                if latest is None:
                    raise NotFound(self._no_model(conn, name))
                return self._load(conn, name, int(latest))
            return self._load(conn, name, _validate_version(version))

    def resolve(self, ref: str) -> ModelVersion:
        """Look up a reference: ``name`` (latest), ``name@alias`` or ``name:version``.

        Raises
        ------
        InvalidArgument
            For a malformed reference.
        NotFound
            As :meth:`get`.
        """
        match = _REF.fullmatch(ref) if isinstance(ref, str) else None
        if match is None:
            raise InvalidArgument(
                f"malformed model reference {ref!r}: expected NAME, NAME@ALIAS or "
                "NAME:VERSION, e.g. 'eurusd-h1-direction@champion' or 'eurusd-h1-direction:3'"
            )
        name, alias, version = match.group("name", "alias", "version")
        if version is not None and not _VERSION.fullmatch(version):
            raise InvalidArgument(
                f"malformed model reference {ref!r}: the version after ':' must be a "
                "positive integer"
            )
        return self.get(name, int(version) if version else None, alias)

    def list_models(self) -> list[str]:
        """Names of all models with at least one version, sorted."""
        with self._read() as conn:
            return [r[0] for r in conn.fetch("SELECT DISTINCT name FROM model_versions ORDER BY 1")]

    def list_versions(self, name: str) -> list[ModelVersion]:
        """All versions of ``name``, oldest first; NotFound for an unknown model."""
        validate_name(name)
        with self._read() as conn:
            rows = conn.fetch(_SELECT_VERSIONS, name)
            if not rows:
                raise NotFound(self._no_model(conn, name))
            aliases = _aliases_by_version(conn, name)
            return [self._version(row, aliases.get(row[1], ())) for row in rows]

    def read_artifact(self, mv: ModelVersion) -> bytes:
        """The artifact of ``mv``, verified against the SHA-256 recorded at registration.

        Raises
        ------
        NotFound
            If ``mv`` is not (or no longer) a registered version.
        FailedPrecondition
            If the file is missing or its bytes no longer match the recorded hash.
        """
        recorded = self.get(mv.name, mv.version)
        if recorded.sha256 != mv.sha256:
            raise FailedPrecondition(
                f"{mv.ref} is registered with SHA-256 {recorded.sha256}, not {mv.sha256}"
            )
        path = self._artifact_path(recorded.sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FailedPrecondition(f"artifact of {mv.ref} is missing: {path}") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != recorded.sha256:
            raise FailedPrecondition(
                f"artifact of {mv.ref} at {path} fails its integrity check: SHA-256 is "
                f"{actual}, registered {recorded.sha256}; it was modified after registration"
            )
        return data

    # --- internals ----------------------------------------------------------------

    def _write(self, name: str) -> AbstractContextManager[Transaction]:
        # Under the model's lock, so max(version) + 1 cannot race another process.
        return self._db.transaction(lock=f"registry:{name}")

    def _read(self) -> AbstractContextManager[Transaction]:
        # A read transaction gives several SELECTs one snapshot (a version and its aliases).
        return self._db.read()

    def _artifact_path(self, sha256: str) -> Path:
        return self._artifacts / f"{sha256}.onnx"

    def _store_artifact(self, sha256: str, data: bytes) -> None:
        path = self._artifact_path(sha256)
        if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256:
            return  # content-addressed: the same bytes are already there
        # Write aside and rename, so a reader never sees a half-written artifact.
        fd, tmp = tempfile.mkstemp(dir=self._artifacts, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _load(self, conn: Transaction, name: str, version: int) -> ModelVersion:
        row = conn.fetchone(_SELECT_VERSION, name, version)
        if row is None:
            versions = [
                r[0]
                for r in conn.fetch(
                    "SELECT version FROM model_versions WHERE name = ? ORDER BY version", name
                )
            ]
            if not versions:
                raise NotFound(self._no_model(conn, name))
            raise NotFound(
                f"model {name!r} has no version {version}; it has {_versions_text(versions)}"
            )
        return self._version(row, _aliases_by_version(conn, name).get(version, ()))

    def _version(self, row: tuple[object, ...], aliases: tuple[str, ...]) -> ModelVersion:
        name, version, sha, features, metrics, params, d_from, d_to, created, desc = row
        return ModelVersion(
            name=str(name),
            version=int(str(version)),
            sha256=str(sha),
            artifact_path=self._artifact_path(str(sha)),
            feature_names=tuple(json.loads(str(features))),
            metrics=MappingProxyType(json.loads(str(metrics))),
            data_from_ms=int(str(d_from)),
            data_to_ms=int(str(d_to)),
            created_ms=int(str(created)),
            description=str(desc),
            aliases=aliases,
            params=MappingProxyType(json.loads(str(params))),
        )

    def _no_model(self, conn: Transaction, name: str) -> str:
        names = [r[0] for r in conn.fetch("SELECT DISTINCT name FROM model_versions ORDER BY 1")]
        if not names:
            return f"no model named {name!r}: the registry at {self.root} holds no model yet"
        return f"no model named {name!r} in the registry at {self.root}; models: " + ", ".join(
            names
        )

    def _no_alias(self, conn: Transaction, name: str, alias: str) -> str:
        rows = conn.fetch(
            "SELECT alias, version FROM model_aliases WHERE name = ? ORDER BY alias", name
        )
        if not rows:
            exists = conn.fetchone("SELECT 1 FROM model_versions WHERE name = ?", name)
            if exists is None:
                return self._no_model(conn, name)
            return f"model {name!r} has no alias {alias!r}; it has no aliases"
        listing = ", ".join(f"{a} -> {v}" for a, v in rows)
        return f"model {name!r} has no alias {alias!r}; its aliases: {listing}"


def _upsert_alias(conn: Transaction, name: str, alias: str, version: int, now: int) -> None:
    conn.execute(
        "INSERT INTO model_aliases (name, alias, version, updated_ms) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version, "
        "updated_ms = excluded.updated_ms",
        name,
        alias,
        version,
        now,
    )


def _aliases_by_version(conn: Transaction, name: str) -> dict[int, tuple[str, ...]]:
    out: dict[int, list[str]] = {}
    for alias, version in conn.fetch(
        "SELECT alias, version FROM model_aliases WHERE name = ? ORDER BY alias", name
    ):
        out.setdefault(int(version), []).append(str(alias))
    return {version: tuple(names) for version, names in out.items()}


def _versions_text(versions: list[int]) -> str:
    if len(versions) == 1:
        return f"only version {versions[0]}"
    if versions == list(range(versions[0], versions[-1] + 1)):
        return f"versions {versions[0]} to {versions[-1]}"
    return "versions " + ", ".join(map(str, versions))


def _check_features(feature_names: Sequence[str]) -> list[str]:
    if isinstance(feature_names, str):
        raise InvalidArgument("feature_names must be a sequence of names, not one string")
    features = list(feature_names)
    if not features:
        raise InvalidArgument("feature_names is empty: a model needs its feature schema")
    if any(not isinstance(f, str) or not f for f in features):
        raise InvalidArgument("feature names must be non-empty strings")
    if len(set(features)) != len(features):
        raise InvalidArgument("feature names must be distinct")
    return features


def _check_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key:
            raise InvalidArgument(f"metric names must be non-empty strings, got {key!r}")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InvalidArgument(f"metric {key!r} must be a number, got {value!r}")
        number = float(value)
        if math.isinf(number):
            raise InvalidArgument(f"metric {key!r} is infinite")
        out[key] = number
    return out


def _check_params(params: Mapping[str, str]) -> dict[str, str]:
    for key, value in params.items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise InvalidArgument(f"params must map non-empty strings to strings, got {key!r}")
    return dict(params)

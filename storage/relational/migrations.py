"""Versioned, forward-only schema migrations, per component, for SQLite and PostgreSQL.

Each component that keeps relational state (the audit log, tenancy, …) owns a folder
of numbered SQL files next to its code, one per version and engine::

    migrations/0001_records.sqlite.sql
    migrations/0001_records.postgresql.sql
    migrations/0002_by_producer.sqlite.sql
    …

:func:`migrate` applies the versions a database lacks, in order, each in its own
transaction together with its row in ``schema_migrations`` — a failed migration leaves
the schema at the version before it. Versions only move forward: a released migration
is never edited (a test pins their digests) and there are no down-migrations; a
database at a version this code does not know (a newer quantmesh wrote it) is refused
rather than used.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from quantmesh.storage.relational.database import Database, DatabaseError, Dialect

__all__ = [
    "Migration",
    "MigrationError",
    "applied_versions",
    "current_version",
    "load_migrations",
    "migrate",
]

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(sqlite|postgresql)\.sql$")

_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
  component     TEXT    NOT NULL,
  version       INTEGER NOT NULL,
  name          TEXT    NOT NULL,
  digest        TEXT    NOT NULL,
  applied_at_ms BIGINT  NOT NULL,
  PRIMARY KEY (component, version)
)
"""


class MigrationError(DatabaseError):
    """The migrations or the database's schema history are not what this code expects."""


@dataclass(frozen=True)
class Migration:
    """One version of a component's schema: its SQL for each engine."""

    version: int
    name: str
    sqlite: str
    postgresql: str

    def sql(self, dialect: Dialect) -> str:
        return self.sqlite if dialect == "sqlite" else self.postgresql

    def digest(self, dialect: Dialect) -> str:
        return hashlib.sha256(self.sql(dialect).encode()).hexdigest()


def load_migrations(package: str, folder: str = "migrations") -> list[Migration]:
    """The migrations in ``package``'s ``folder``: versions 1..n, each for both engines."""
    texts: dict[tuple[int, str], dict[str, str]] = {}
    for entry in resources.files(package).joinpath(folder).iterdir():
        match = _FILE.match(entry.name)
        if match is None:
            continue
        version, name, dialect = int(match.group(1)), match.group(2), match.group(3)
        texts.setdefault((version, name), {})[dialect] = entry.read_text(encoding="utf-8")
    migrations = []
    for (version, name), sql in sorted(texts.items()):
        missing = {"sqlite", "postgresql"} - set(sql)
        if missing:
            raise MigrationError(f"{package} migration {version:04d}_{name} has no {missing} file")
        migrations.append(Migration(version, name, sql["sqlite"], sql["postgresql"]))
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise MigrationError(f"{package} migrations must be numbered 1, 2, 3, …; found {versions}")
    return migrations


def applied_versions(db: Database, component: str) -> list[int]:
    """Versions of ``component`` already applied to ``db``, in order."""
    # Under a lock: PostgreSQL's CREATE TABLE IF NOT EXISTS races with itself.
    with db.transaction(lock="schema_migrations") as tx:
        tx.execute_script(_LEDGER)
    rows = db.fetch(
        "SELECT version FROM schema_migrations WHERE component = ? ORDER BY version", component
    )
    return [int(row[0]) for row in rows]


def current_version(db: Database, component: str) -> int:
    """The version of ``component``'s schema in ``db``; 0 if it has none (nothing created)."""
    try:
        rows = db.fetch("SELECT max(version) FROM schema_migrations WHERE component = ?", component)
    except DatabaseError:  # no ledger: nothing was ever migrated here
        return 0
    return int(rows[0][0] or 0)


def migrate(
    db: Database, component: str, migrations: Sequence[Migration], to_version: int | None = None
) -> list[int]:
    """Bring ``component``'s schema up to ``to_version`` (default: the latest).

    Returns the versions applied now. Safe against concurrent callers: each version is
    applied under the component's lock and skipped if another process got there first.
    """
    target = len(migrations) if to_version is None else to_version
    known = {m.version: m for m in migrations}
    applied_versions(db, component)  # creates the ledger if this database has none
    # One read of the ledger: what is applied, and with which digests.
    stored = {
        int(version): str(digest)
        for version, digest in db.fetch(
            "SELECT version, digest FROM schema_migrations WHERE component = ?", component
        )
    }
    newest = max(stored, default=0)
    if newest > len(migrations):
        raise MigrationError(
            f"the {component} schema in {db.url} is at version {newest}, but this quantmesh "
            f"knows versions up to {len(migrations)}: it was written by a newer release"
        )
    for version, digest in stored.items():
        migration = known[version]
        if digest != migration.digest(db.dialect):
            raise MigrationError(
                f"{component} migration {version:04d}_{migration.name} differs from the one "
                f"applied to {db.url}: a released migration must never change; add a new one"
            )
    applied = []
    for version in range(1, target + 1):
        if version in stored:
            continue  # no transaction for what the ledger already has
        migration = known[version]
        with db.transaction(lock=f"migrate:{component}") as tx:
            if tx.fetchone(
                "SELECT 1 FROM schema_migrations WHERE component = ? AND version = ?",
                component,
                version,
            ):
                continue
            tx.execute_script(migration.sql(db.dialect))
            tx.execute(
                "INSERT INTO schema_migrations "
                "(component, version, name, digest, applied_at_ms) VALUES (?, ?, ?, ?, ?)",
                component,
                version,
                migration.name,
                migration.digest(db.dialect),
                int(time.time() * 1000),
            )
        applied.append(version)
    return applied

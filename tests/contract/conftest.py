"""Real servers for the contract suites: each starts once per session, on a free port.

``database_url`` and ``database`` run a test once on each relational adapter: an SQLite
file, and a fresh database on a real PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from quantmesh.storage.local_servers import LocalPostgres
from quantmesh.storage.relational import Database, open_database


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """A PostgreSQL cluster (the machine's own binaries, as the postgres user)."""
    with LocalPostgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, postgres: LocalPostgres) -> str:
    """The URL of an empty database: an SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'quantmesh.sqlite3'}"
    return postgres.create_database()


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """That database, open."""
    db = open_database(database_url)
    yield db
    db.close()

"""The relational port's contract: SQLite and a real PostgreSQL 15 behave the same.

Every test runs against both adapters: the embedded SQLite file and a PostgreSQL cluster
started for the session (initdb/pg_ctl as the ``postgres`` user), one fresh database per
test. Nothing is mocked.
"""

from __future__ import annotations

import threading

import pytest

from quantmesh.storage.local_servers import LocalPostgres
from quantmesh.storage.relational import Database, IntegrityError, open_database
from quantmesh.storage.relational.database import sqlite_statements
from quantmesh.storage.relational.migrations import (
    Migration,
    MigrationError,
    applied_versions,
    migrate,
)
from quantmesh.storage.urls import StoreConfigError, StoreUnavailableError

TABLES = [
    Migration(
        1,
        "notes",
        sqlite="CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL UNIQUE);",
        postgresql="CREATE TABLE notes (id BIGINT PRIMARY KEY, body TEXT NOT NULL UNIQUE);",
    ),
    Migration(
        2,
        "note_authors",
        sqlite="ALTER TABLE notes ADD COLUMN author TEXT NOT NULL DEFAULT 'unknown';",
        postgresql="ALTER TABLE notes ADD COLUMN author TEXT NOT NULL DEFAULT 'unknown';",
    ),
]


def test_a_transaction_commits_all_or_nothing(database: Database) -> None:
    migrate(database, "notes", TABLES)
    with database.transaction() as tx:
        tx.execute("INSERT INTO notes (id, body) VALUES (?, ?)", 1, "first")
        tx.executemany("INSERT INTO notes (id, body) VALUES (?, ?)", [(2, "b"), (3, "c")])

    def insert_a_duplicate() -> None:
        with database.transaction() as tx:
            tx.execute("INSERT INTO notes (id, body) VALUES (?, ?)", 4, "kept?")
            tx.execute("INSERT INTO notes (id, body) VALUES (?, ?)", 5, "first")  # duplicate

    with pytest.raises(IntegrityError):
        insert_a_duplicate()
    rows = database.fetch("SELECT id, body, author FROM notes ORDER BY id")
    assert rows == [(1, "first", "unknown"), (2, "b", "unknown"), (3, "c", "unknown")]


def test_an_error_in_the_block_rolls_back(database: Database) -> None:
    migrate(database, "notes", TABLES)

    def change_its_mind() -> None:
        with database.transaction() as tx:
            tx.execute("INSERT INTO notes (id, body) VALUES (?, ?)", 1, "lost")
            raise RuntimeError("the caller changed its mind")

    with pytest.raises(RuntimeError):
        change_its_mind()
    assert database.fetch("SELECT count(*) FROM notes") == [(0,)]


def test_migrations_from_empty_apply_every_version_once(database: Database) -> None:
    assert migrate(database, "notes", TABLES) == [1, 2]
    assert migrate(database, "notes", TABLES) == []
    assert applied_versions(database, "notes") == [1, 2]
    # Components keep separate histories in one database.
    assert applied_versions(database, "other") == []


def test_migrating_from_the_previous_version_keeps_the_data(database: Database) -> None:
    assert migrate(database, "notes", TABLES, to_version=1) == [1]
    with database.transaction() as tx:
        tx.execute("INSERT INTO notes (id, body) VALUES (?, ?)", 7, "written by version 1")
    assert migrate(database, "notes", TABLES) == [2]
    assert database.fetch("SELECT id, body, author FROM notes") == [
        (7, "written by version 1", "unknown")
    ]


def test_a_failed_migration_leaves_the_previous_version(database: Database) -> None:
    broken = [*TABLES, Migration(3, "broken", "CREATE TABLE x (;", "CREATE TABLE x (;")]
    with pytest.raises(Exception, match=r"(?i)syntax"):
        migrate(database, "notes", broken)
    assert applied_versions(database, "notes") == [1, 2]


def test_a_changed_released_migration_is_refused(database: Database) -> None:
    migrate(database, "notes", TABLES)
    edited = [TABLES[0], Migration(2, "note_authors", "SELECT 1;", "SELECT 1;")]
    with pytest.raises(MigrationError, match="must never change"):
        migrate(database, "notes", edited)


def test_a_schema_from_a_newer_release_is_refused(database: Database) -> None:
    migrate(database, "notes", TABLES)
    with pytest.raises(MigrationError, match="newer release"):
        migrate(database, "notes", TABLES[:1])


def test_concurrent_migrators_apply_each_version_once(database: Database) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrate(database, "notes", TABLES)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert applied_versions(database, "notes") == [1, 2]


def test_a_bad_url_names_its_setting() -> None:
    with pytest.raises(StoreConfigError, match=r"QUANTMESH_DATABASE_URL.*mysql"):
        open_database("mysql://db/quantmesh")
    with pytest.raises(StoreConfigError, match="three slashes"):
        open_database("sqlite://var/x.db")


def test_an_unreachable_server_fails_at_startup_naming_its_setting(
    postgres: LocalPostgres,
) -> None:
    dead = f"postgresql://quantmesh@127.0.0.1:{_closed_port()}/nothing"
    with pytest.raises(StoreUnavailableError, match="QUANTMESH_DATABASE_URL"):
        open_database(dead)


def test_sqlite_scripts_split_into_whole_statements() -> None:
    script = """
    CREATE TABLE a (x INTEGER);
    CREATE TRIGGER t BEFORE DELETE ON a
    BEGIN
      SELECT RAISE(ABORT, 'no; never');
    END;
    """
    statements = sqlite_statements(script)
    assert len(statements) == 2
    assert statements[1].endswith("END;")


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port

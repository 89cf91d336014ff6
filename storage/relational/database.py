"""One interface over SQLite and PostgreSQL: transactions of portable SQL.

quantmesh's relational stores (the audit log, tenants and accounts, …) write their SQL
once, in the subset both engines share, with ``?`` placeholders; the PostgreSQL adapter
numbers them (``$1``, ``$2``, …) for asyncpg. Where the dialects differ (DDL, triggers),
a migration gives each engine its own text (:mod:`.migrations`).

The interface is synchronous, because the stores run their transactions in worker
threads already (the event loop never waits on a disk or a socket). The PostgreSQL
adapter keeps an asyncpg pool on an event loop of its own, in a daemon thread, and each
call waits for its result there.

Both adapters raise :class:`IntegrityError` for a broken constraint or a refused write
(e.g. the audit log's append-only trigger) and :class:`DatabaseError` for the rest, so
stores handle one set of errors whichever engine runs.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
from collections.abc import Awaitable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from quantmesh.runtime.sqlite import connect
from quantmesh.storage.urls import StoreUnavailableError, StoreUrl, parse_store_url

__all__ = [
    "Database",
    "DatabaseError",
    "IntegrityError",
    "PostgresDatabase",
    "SqliteDatabase",
    "Transaction",
    "open_database",
]

T = TypeVar("T")
Row = tuple[Any, ...]
Dialect = Literal["sqlite", "postgresql"]

# Wait this long for another writer's transaction (another process on the same file).
BUSY_TIMEOUT_MS = 30_000

SCHEMES = {
    "sqlite": "sqlite:///var/quantmesh.sqlite3",
    "postgresql": "postgresql://user:password@host:5432/quantmesh",
    "postgres": "postgres://user@host/quantmesh",
}


class DatabaseError(RuntimeError):
    """A statement failed; the message has the engine's own words."""


class IntegrityError(DatabaseError):
    """A constraint or trigger refused the write; nothing of the transaction was kept."""


class Transaction(Protocol):
    """Statements inside one transaction; it commits when its block ends without error."""

    def execute(self, sql: str, *params: Any) -> int:
        """Run one statement; return how many rows it changed (0 for DDL)."""
        ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    def fetch(self, sql: str, *params: Any) -> list[Row]: ...

    def fetchone(self, sql: str, *params: Any) -> Row | None: ...

    def execute_script(self, sql: str) -> None:
        """Several statements (DDL, triggers), inside this transaction."""
        ...


class Database(Protocol):
    """A relational store: SQLite or PostgreSQL."""

    dialect: Dialect
    url: str  # as configured, password hidden

    def transaction(
        self, lock: str | None = None, durable: bool = True
    ) -> AbstractContextManager[Transaction]:
        """A read-write transaction, atomic. With ``lock``, serialised with every other
        transaction naming the same lock, in any process (SQLite serialises all writers).

        A ``durable`` commit is on disk when it returns. ``durable=False`` is for writes
        that can be derived again from a durable record: they survive a process crash
        and reach the disk with the next durable commit, so only a power loss can drop
        them (SQLite ``synchronous = NORMAL``, PostgreSQL ``synchronous_commit = off``).
        """
        ...

    def fetch(self, sql: str, *params: Any) -> list[Row]:
        """Rows of a read, outside any write transaction."""
        ...

    def read(self) -> AbstractContextManager[Transaction]:
        """A read-only transaction on one consistent snapshot, which writers do not wait
        for (long reads: verifying or exporting a whole log)."""
        ...

    def execute_script(self, sql: str) -> None:
        """Run several statements (DDL) in one transaction."""
        ...

    def close(self) -> None: ...


def open_database(url: str, setting: str = "QUANTMESH_DATABASE_URL") -> Database:
    """The database ``url`` names; StoreConfigError/StoreUnavailableError name ``setting``."""
    parsed = parse_store_url(setting, url, SCHEMES)
    if parsed.scheme == "sqlite":
        return SqliteDatabase(parsed.file, url=parsed.redacted())
    return PostgresDatabase(parsed)


# -- SQLite ---------------------------------------------------------------------------------


class _SqliteTransaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, *params: Any) -> int:
        with _sqlite_errors():
            return max(0, self._db.execute(sql, params).rowcount)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with _sqlite_errors():
            self._db.executemany(sql, rows)

    def fetch(self, sql: str, *params: Any) -> list[Row]:
        with _sqlite_errors():
            return list(self._db.execute(sql, params).fetchall())

    def fetchone(self, sql: str, *params: Any) -> Row | None:
        with _sqlite_errors():
            row: Row | None = self._db.execute(sql, params).fetchone()
            return row

    def execute_script(self, sql: str) -> None:
        # executescript() would commit first; run the statements one by one instead.
        for statement in sqlite_statements(sql):
            self.execute(statement)


def sqlite_statements(script: str) -> list[str]:
    """Split a script into complete statements (a trigger's body stays whole)."""
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            if pending.strip().strip(";").strip():
                statements.append(pending.strip())
            pending = ""
    if pending.strip() and sqlite3.complete_statement(pending + ";"):
        statements.append(pending.strip())  # the last statement may omit its semicolon
    elif pending.strip():
        raise DatabaseError(f"incomplete SQL statement at the end of the script: {pending!r}")
    return statements


@contextmanager
def _sqlite_errors() -> Iterator[None]:
    try:
        yield
    except sqlite3.IntegrityError as error:  # constraints, and triggers' RAISE(ABORT, …)
        raise IntegrityError(str(error)) from error
    except sqlite3.Error as error:
        raise DatabaseError(str(error)) from error


class SqliteDatabase:
    """The embedded default: one file, WAL, fsync on commit (see quantmesh.runtime.sqlite)."""

    dialect: Dialect = "sqlite"

    def __init__(self, path: Path, url: str = "", busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.path = path
        self.url = url or f"sqlite:///{path}"
        self._busy_timeout_ms = busy_timeout_ms
        self._db = connect(path)
        self._db.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        self._db.execute("PRAGMA foreign_keys = ON")
        self._lock = threading.RLock()  # one connection: one transaction at a time
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()

    @contextmanager
    def transaction(self, lock: str | None = None, durable: bool = True) -> Iterator[Transaction]:
        # BEGIN IMMEDIATE takes SQLite's one write lock: every writer is serialised.
        with self._lock:
            if not durable:
                self._db.execute("PRAGMA synchronous = NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield _SqliteTransaction(self._db)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                try:
                    with _sqlite_errors():
                        self._db.execute("COMMIT")
                except DatabaseError:
                    # A failed COMMIT (disk full, I/O error) can leave the transaction
                    # open; the next one must not run inside it.
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous = FULL")

    def fetch(self, sql: str, *params: Any) -> list[Row]:
        with self._lock:
            return _SqliteTransaction(self._db).fetch(sql, *params)

    @contextmanager
    def read(self) -> Iterator[Transaction]:
        # A connection of its own, kept open: WAL gives it a snapshot while the writer
        # goes on (e.g. report streams read while orders commit).
        with self._reader_lock:
            if self._reader is None:
                self._reader = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False
                )
                self._reader.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            self._reader.execute("BEGIN")
            try:
                yield _SqliteTransaction(self._reader)
            finally:
                self._reader.execute("COMMIT")

    def execute_script(self, sql: str) -> None:
        with self.transaction() as tx:
            tx.execute_script(sql)

    def close(self) -> None:
        self._db.close()
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()


# -- PostgreSQL -----------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\?")


def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, …`` (the SQL has no literal ``?``)."""
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


class _PostgresTransaction:
    def __init__(self, database: PostgresDatabase, connection: Any) -> None:
        self._database = database
        self._connection = connection

    def execute(self, sql: str, *params: Any) -> int:
        status = self._database._run(self._connection.execute(numbered(sql), *params))
        # asyncpg answers with the command tag, e.g. "UPDATE 3" or "INSERT 0 1".
        last = str(status).rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._database._run(self._connection.executemany(numbered(sql), rows))

    def fetch(self, sql: str, *params: Any) -> list[Row]:
        records = self._database._run(self._connection.fetch(numbered(sql), *params))
        return [tuple(record) for record in records]

    def fetchone(self, sql: str, *params: Any) -> Row | None:
        record = self._database._run(self._connection.fetchrow(numbered(sql), *params))
        return None if record is None else tuple(record)

    def execute_script(self, sql: str) -> None:
        # Without arguments asyncpg sends the simple query protocol: many statements.
        self._database._run(self._connection.execute(sql))


async def _session_is_clean(connection: Any) -> None:
    """The pool's reset on release: nothing to undo, so no reset query (a round trip).

    asyncpg rolls back an open transaction itself before calling this. Past that, the
    session holds nothing: settings are ``SET LOCAL`` and locks ``pg_advisory_xact_lock``,
    both ended with their transaction, and nothing here LISTENs or keeps cursors.
    """


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable  # asyncpg hands out awaitables that are not coroutines


class PostgresDatabase:
    """PostgreSQL through an asyncpg pool running on this adapter's own event loop."""

    dialect: Dialect = "postgresql"

    def __init__(self, url: StoreUrl, min_size: int = 1, max_size: int = 4) -> None:
        import asyncpg

        self._asyncpg = asyncpg
        self.url = url.redacted()
        self._setting = url.setting
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="postgres-loop", daemon=True
        )
        self._thread.start()
        dsn = url.raw.replace("postgres://", "postgresql://", 1)

        async def create_pool() -> Any:  # in the adapter's loop, which the pool belongs to
            return await asyncpg.create_pool(
                dsn, min_size=min_size, max_size=max_size, timeout=10, reset=_session_is_clean
            )

        try:
            self._pool = self._run(create_pool())
        except (OSError, asyncpg.PostgresError, TimeoutError, DatabaseError) as error:
            self._stop_loop()
            raise StoreUnavailableError(
                f"{self._setting}={self.url}: cannot connect to PostgreSQL ({error})"
            ) from None

    def _run(self, awaitable: Awaitable[T]) -> T:
        future = asyncio.run_coroutine_threadsafe(_awaited(awaitable), self._loop)
        try:
            return future.result()
        except self._asyncpg.IntegrityConstraintViolationError as error:
            raise IntegrityError(str(error)) from error
        except self._asyncpg.RaiseError as error:  # a trigger's RAISE EXCEPTION
            raise IntegrityError(str(error)) from error
        except self._asyncpg.PostgresError as error:
            raise DatabaseError(str(error)) from error

    @contextmanager
    def transaction(self, lock: str | None = None, durable: bool = True) -> Iterator[Transaction]:
        # One hop to the adapter's loop to begin (acquire, BEGIN, settings, lock) and one
        # to end (COMMIT or ROLLBACK, release): each hop costs a thread switch.
        connection, transaction = self._run(self._begin(lock, durable))
        try:
            yield _PostgresTransaction(self, connection)
        except BaseException:
            self._run(self._end(connection, transaction, commit=False))
            raise
        self._run(self._end(connection, transaction, commit=True))

    async def _begin(self, lock: str | None, durable: bool) -> tuple[Any, Any]:
        connection = await self._pool.acquire()
        transaction = connection.transaction()
        try:
            await transaction.start()
            if not durable:
                await connection.execute("SET LOCAL synchronous_commit TO OFF")
            if lock is not None:
                # Held until commit or rollback, across every process on the server.
                await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1))", lock)
        except BaseException:
            await self._end(connection, transaction, commit=False)
            raise
        return connection, transaction

    async def _end(self, connection: Any, transaction: Any, *, commit: bool) -> None:
        try:
            if commit:
                await transaction.commit()
            elif not connection.is_closed() and connection.is_in_transaction():
                await transaction.rollback()
        finally:
            await self._pool.release(connection)

    def fetch(self, sql: str, *params: Any) -> list[Row]:
        records = self._run(self._pool.fetch(numbered(sql), *params))
        return [tuple(record) for record in records]

    @contextmanager
    def read(self) -> Iterator[Transaction]:
        connection, transaction = self._run(self._begin_read())
        try:
            yield _PostgresTransaction(self, connection)
        finally:
            self._run(self._end(connection, transaction, commit=False))  # it only read

    async def _begin_read(self) -> tuple[Any, Any]:
        connection = await self._pool.acquire()
        transaction = connection.transaction(isolation="repeatable_read", readonly=True)
        try:
            await transaction.start()
        except BaseException:
            await self._pool.release(connection)
            raise
        return connection, transaction

    def execute_script(self, sql: str) -> None:
        with self.transaction() as tx:
            tx.execute_script(sql)

    def close(self) -> None:
        try:
            self._run(self._pool.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

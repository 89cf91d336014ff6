"""The timeseries port on a ClickHouse server, through clickhouse-connect (HTTP).

``clickhouse://user:password@host:8123/db`` (HTTP) or ``clickhouses://…`` (HTTPS, port
8443 by default). The database is created if missing; ``?connect_timeout=10`` and
``?send_receive_timeout=300`` (seconds) tune the client. The statements are
:mod:`.sql`'s, exactly as chDB runs them; rows travel as Arrow (``INSERT … FORMAT
Arrow``) and results come back as Arrow.

Every operation is retried with backoff when the server cannot be reached
(:func:`~quantmesh.storage.resilience.retrying_sync`), then raises
:class:`~quantmesh.storage.urls.StoreUnavailableError` naming the setting. Retrying is
safe: an operation reads, or writes what it finds missing (ticks past the stored seqs,
with a deduplication token; predictions that replace themselves). clickhouse-connect's
session ids are off, so one client serves several threads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import clickhouse_connect
import pyarrow as pa
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from quantmesh.storage.resilience import TRANSIENT as BASE_TRANSIENT
from quantmesh.storage.resilience import Backoff, retrying_sync
from quantmesh.storage.timeseries.sql import SqlTimeseries
from quantmesh.storage.urls import StoreConfigError, StoreUnavailableError, StoreUrl

__all__ = ["ClickHouseTimeseries"]

T = TypeVar("T")
# OperationalError is clickhouse-connect's "could not talk to the server"; the server's
# own refusals (DatabaseError) are not retried: running them again cannot succeed.
TRANSIENT: tuple[type[BaseException], ...] = (OperationalError, *BASE_TRANSIENT)
DEFAULT_BACKOFF = Backoff()
_TIMEOUTS = ("connect_timeout", "send_receive_timeout")


class ClickHouseTimeseries(SqlTimeseries):
    """The timeseries store in a ClickHouse database; the schema is created on connect."""

    def __init__(
        self, client: Client, *, url: str, setting: str, backoff: Backoff = DEFAULT_BACKOFF
    ) -> None:
        super().__init__(url)
        self._client = client
        self._setting = setting
        self._backoff = backoff

    @classmethod
    def connect(
        cls,
        url: StoreUrl,
        backoff: Backoff = DEFAULT_BACKOFF,
        connect_backoff: Backoff | None = None,
    ) -> ClickHouseTimeseries:
        """Connect, create the database and the schema if missing.

        Raises
        ------
        StoreConfigError
            For options the URL gets wrong.
        StoreUnavailableError
            When the server cannot be reached after ``connect_backoff``'s attempts (by
            default ``backoff``'s), or refuses the credentials or the schema.
        """
        secure = url.scheme == "clickhouses"
        database = url.path.strip("/") or "default"
        options: dict[str, Any] = {}
        for name in _TIMEOUTS:
            if name in url.query:
                try:
                    options[name] = float(url.query[name])
                except ValueError:
                    raise StoreConfigError(
                        f"{url.setting}={url.redacted()!r}: {name} must be a number of "
                        f"seconds, got {url.query[name]!r}"
                    ) from None
        unknown = set(url.query) - set(_TIMEOUTS)
        if unknown:
            raise StoreConfigError(
                f"{url.setting}={url.redacted()!r}: unknown option(s) {sorted(unknown)}; "
                f"known: {', '.join(_TIMEOUTS)}"
            )

        def client() -> Client:
            return clickhouse_connect.get_client(
                host=url.host or "localhost",
                port=url.port or (8443 if secure else 8123),
                username=url.username or "default",
                password=url.password,
                secure=secure,
                autogenerate_session_id=False,
                **options,
            )

        try:
            opened = retrying_sync(
                client,
                store="ClickHouse",
                what="connect",
                transient=TRANSIENT,
                backoff=connect_backoff or backoff,
            )
            opened.command(f"CREATE DATABASE IF NOT EXISTS {_identifier(database)}")
            opened.database = database
            store = cls(opened, url=url.redacted(), setting=url.setting, backoff=backoff)
            store.create_schema()
        except StoreUnavailableError as error:
            raise StoreUnavailableError(f"{url.setting}={url.redacted()!r}: {error}") from error
        except DatabaseError as error:
            raise StoreUnavailableError(
                f"{url.setting}={url.redacted()!r}: ClickHouse refused to set up the "
                f"timeseries store: {error}"
            ) from error
        return store

    def _run(self, what: str, operation: Callable[[], T]) -> T:
        return retrying_sync(
            operation,
            store=f"ClickHouse ({self._setting})",
            what=what,
            transient=TRANSIENT,
            backoff=self._backoff,
        )

    def _command(self, sql: str) -> None:
        self._client.command(sql)

    def _query(self, sql: str, params: Mapping[str, Any]) -> pa.Table:
        result: pa.Table = self._client.query_arrow(sql, parameters=dict(params), use_strings=True)
        return result

    def _insert(self, table: str, rows: pa.Table, dedup_token: str | None) -> None:
        settings = None if dedup_token is None else {"insert_deduplication_token": dedup_token}
        self._client.insert_arrow(table, rows, settings=settings)

    def close(self) -> None:
        self._client.close()


def _identifier(name: str) -> str:
    """A ClickHouse identifier, back-quoted."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"

"""Durable execution state on the relational port: orders, fills, positions, reports.

SQLite by default (``$QUANTMESH_HOME/execution/execution.sqlite3``, WAL,
``synchronous = FULL``), PostgreSQL when ``QUANTMESH_DATABASE_URL`` (or the
``database`` argument) names one; a committed transaction survives a crash either way.
Tables (``migrations/``):

- ``execution_orders``: one row per order, ``UNIQUE (account_id, idempotency_key)``.
  Triggers make the state machine a property of the data: a row is inserted only in
  state NEW, every update must be an edge of
  :data:`~quantmesh.services.execution.orders.ORDER_STATE_TABLE` (copied into
  ``execution_order_transitions``), and rows are never deleted. A final order therefore
  cannot change at all.
- ``execution_fills``: one row per broker deal (primary key: the deal id, so a deal is
  booked once), with its commission and realized profit, in booking order.
- ``execution_positions``: open and closed positions, legs as JSON.
- ``execution_reports``: the append-only execution reports, numbered by ``seq`` from 0
  without gaps; the ExecutionReport stream reads and resumes from here.
- ``execution_accounts``: the account snapshot (balance, totals) and the broker journal
  cursor; ``execution_quotes``: the last quote of each symbol; ``execution_counters``:
  id sequences.

Every change is made inside :meth:`ExecutionStore.transaction`, so the orders, fills,
positions, reports, account and cursor of one broker event commit together or not at
all. Money and lots are stored as decimal text, never REAL. Nothing here imports grpc.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from quantmesh.runtime.config import quantmesh_home
from quantmesh.services.execution.accounts import Fill, Leg, Position, Quote
from quantmesh.services.execution.orders import (
    ORDER_STATE_TABLE,
    InvalidTransition,
    Order,
    OrderState,
    OrderType,
    Origin,
    Side,
    TimeInForce,
)
from quantmesh.storage.relational import Database, Transaction, open_database
from quantmesh.storage.relational.database import SqliteDatabase
from quantmesh.storage.relational.migrations import load_migrations, migrate

ZERO = Decimal(0)

MIGRATIONS = load_migrations("quantmesh.services.execution")
_ORDER_COLUMNS = tuple(f.name for f in fields(Order))
_SELECT_ORDER = f"SELECT seq, {', '.join(_ORDER_COLUMNS)} FROM execution_orders"  # noqa: S608 (constant)
_INSERT_ORDER = (
    f"INSERT INTO execution_orders ({', '.join(_ORDER_COLUMNS)}) "  # noqa: S608 (constant)
    f"VALUES ({', '.join('?' * len(_ORDER_COLUMNS))})"
)
_UPDATE_ORDER = (
    "UPDATE execution_orders SET state = ?, updated_time_ms = ?, filled_volume = ?, "
    "fill_notional = ?, commission = ?, reject_reason = ?, broker_order_id = ? "
    "WHERE order_id = ? AND state = ? AND filled_volume = ?"
)
_POSITION_COLUMNS = (
    "position_id, account_id, symbol, side, legs, stop_loss, take_profit, open_time_ms, "
    "order_id, signal_id, commission, realized_pnl, closed_time_ms"
)
_POSITION_UPDATES = ", ".join(
    f"{column.strip()} = excluded.{column.strip()}"
    for column in (*_POSITION_COLUMNS.split(","), "open")
    if column.strip() != "position_id"
)
_FILL_COLUMNS = (
    "deal_id, order_id, position_id, symbol, side, volume, price, commission, time_ms, "
    "closing, realized_pnl"
)


def default_store_path() -> Path:
    """``$QUANTMESH_HOME/execution/execution.sqlite3``; ``QUANTMESH_HOME`` defaults to ``./var``."""
    return quantmesh_home() / "execution" / "execution.sqlite3"


@dataclass(frozen=True, slots=True)
class ExecutionReport:
    """One change of an order, as ``quantmesh.execution.v1.ExecutionReport``.

    ``seq`` is -1 until the store appends the report. ``fill_volume`` is zero and
    ``fill_price`` None when the report is no fill; prices are points (the average
    fractional), money in the account currency.
    """

    seq: int
    report_id: str
    order_id: str
    idempotency_key: str
    account_id: str
    symbol: str
    side: Side
    state: OrderState
    fill_volume: Decimal
    fill_price: int | None
    filled_volume: Decimal
    remaining_volume: Decimal
    average_fill_price: Decimal | None
    commission: Decimal
    reason: str
    broker_order_id: str
    broker_deal_id: str
    position_id: str
    signal_id: str
    time_ms: int
    traceparent: str
    tracestate: str
    model_name: str = ""
    model_version: str = ""


def report_of(order: Order, time_ms: int, fill: Fill | None = None) -> ExecutionReport:
    """The (unnumbered) report of ``order`` as it is now, with ``fill`` if one made it so."""
    return ExecutionReport(
        seq=-1,
        report_id="",
        order_id=order.order_id,
        idempotency_key=order.idempotency_key,
        account_id=order.account_id,
        symbol=order.symbol,
        side=order.side,
        state=order.state,
        fill_volume=fill.volume if fill else ZERO,
        fill_price=fill.price if fill else None,
        filled_volume=order.filled_volume,
        remaining_volume=order.remaining_volume,
        average_fill_price=order.average_fill_price,
        commission=fill.commission if fill else ZERO,
        reason=order.reject_reason if order.state.is_final and not fill else "",
        broker_order_id=order.broker_order_id,
        broker_deal_id=fill.deal_id if fill else "",
        position_id=fill.position_id if fill else "",
        signal_id=order.signal_id,
        time_ms=time_ms,
        traceparent=order.traceparent,
        tracestate=order.tracestate,
        model_name=order.model_name,
        model_version=order.model_version,
    )


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """The persisted account snapshot and the broker journal cursor."""

    account_id: str
    currency: str
    starting_balance: Decimal
    balance: Decimal
    realized: Decimal
    commission: Decimal
    broker_cursor: int = -1


class StoreTransaction:
    """Writes inside one transaction (:meth:`ExecutionStore.transaction`)."""

    def __init__(self, tx: Transaction) -> None:
        self._db = tx

    def next_id(self, name: str) -> int:
        """The next value of sequence ``name``, from 1."""
        row = self._db.fetchone(
            "INSERT INTO execution_counters (name, value) VALUES (?, 1) "
            "ON CONFLICT (name) DO UPDATE SET value = execution_counters.value + 1 "
            "RETURNING value",
            name,
        )
        assert row is not None
        return int(row[0])

    def order_by_key(self, account_id: str, key: str) -> Order | None:
        """See :meth:`ExecutionStore.order_by_key` (reads inside the transaction)."""
        return _one_order(self._db, "account_id = ? AND idempotency_key = ?", (account_id, key))

    def insert_order(self, order: Order) -> None:
        """Record a NEW order; a known ``(account_id, idempotency_key)`` raises IntegrityError."""
        self._db.execute(_INSERT_ORDER, *[_sql(getattr(order, c)) for c in _ORDER_COLUMNS])

    def update_order(self, before: Order, after: Order) -> None:
        """Replace ``before`` by ``after``, which must be a legal transition of it.

        Raises
        ------
        InvalidTransition
            The state change is not an edge of the table, or the stored row is no longer
            ``before`` (someone else changed it).
        """
        legal = {(a, b) for (a, _), b in ORDER_STATE_TABLE.items()}
        if before.order_id != after.order_id or (before.state, after.state) not in legal:
            raise InvalidTransition(
                f"order {before.order_id}: {before.state.name} → {after.state.name} is illegal"
            )
        changed = self._db.execute(
            _UPDATE_ORDER,
            int(after.state),
            after.updated_time_ms,
            str(after.filled_volume),
            str(after.fill_notional),
            str(after.commission),
            after.reject_reason,
            after.broker_order_id,
            after.order_id,
            int(before.state),
            str(before.filled_volume),
        )
        if changed != 1:
            raise InvalidTransition(f"order {before.order_id} changed under the update")

    def insert_fill(self, account_id: str, fill: Fill) -> None:
        """Book a deal; a deal id already booked raises IntegrityError."""
        values = [_sql(getattr(fill, c.strip())) for c in _FILL_COLUMNS.split(",")]
        self._db.execute(
            f"INSERT INTO execution_fills (account_id, {_FILL_COLUMNS}, booked_seq) "  # noqa: S608
            f"VALUES (?, {', '.join('?' * len(values))}, "
            "(SELECT coalesce(max(booked_seq), 0) + 1 FROM execution_fills))",
            account_id,
            *values,
        )

    def save_position(self, position: Position) -> None:
        """Insert or replace a position (open or closed)."""
        legs = json.dumps([[str(leg.volume), leg.price] for leg in position.legs])
        values = [
            _sql(legs if c.strip() == "legs" else getattr(position, c.strip()))
            for c in _POSITION_COLUMNS.split(",")
        ]
        self._db.execute(
            f"INSERT INTO execution_positions ({_POSITION_COLUMNS}, open, opened_seq) "  # noqa: S608
            f"VALUES ({', '.join('?' * len(values))}, ?, "
            "(SELECT coalesce(max(opened_seq), 0) + 1 FROM execution_positions)) "
            f"ON CONFLICT (position_id) DO UPDATE SET {_POSITION_UPDATES}",
            *values,
            int(position.is_open),
        )

    def save_account(self, record: AccountRecord) -> None:
        """Insert or replace the account snapshot."""
        self._db.execute(
            "INSERT INTO execution_accounts (account_id, currency, starting_balance, balance,"
            " realized, commission, broker_cursor) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (account_id) DO UPDATE SET currency = excluded.currency, "
            "starting_balance = excluded.starting_balance, balance = excluded.balance, "
            "realized = excluded.realized, commission = excluded.commission, "
            "broker_cursor = excluded.broker_cursor",
            *[_sql(getattr(record, f.name)) for f in fields(record)],
        )

    def append_report(self, report: ExecutionReport) -> ExecutionReport:
        """Number ``report`` with the next seq (from 0) and append it."""
        seq = self.next_id("report") - 1
        numbered = replace(report, seq=seq, report_id=f"R{seq}")
        body = {f.name: _sql(getattr(numbered, f.name)) for f in fields(numbered)}
        self._db.execute(
            "INSERT INTO execution_reports (seq, account_id, body) VALUES (?, ?, ?)",
            seq,
            numbered.account_id,
            json.dumps(body),
        )
        return numbered

    def save_day_start(self, account_id: str, day: int, equity: Decimal) -> None:
        """Record the equity at the start of UTC day ``day`` unless already recorded."""
        self._db.execute(
            "INSERT INTO execution_day_starts (account_id, day, equity) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            account_id,
            day,
            str(equity),
        )

    def save_quotes(self, quotes: Iterable[Quote]) -> None:
        """Remember the last quote of each symbol."""
        self._db.executemany(
            "INSERT INTO execution_quotes (symbol, bid, ask, time_ms, seq) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (symbol) DO UPDATE SET bid = excluded.bid, ask = excluded.ask, "
            "time_ms = excluded.time_ms, seq = excluded.seq",
            [(q.symbol, q.bid, q.ask, q.time_ms, q.seq) for q in quotes],
        )


class ExecutionStore:
    """Execution's durable state (see the module docstring).

    Parameters
    ----------
    path:
        SQLite file, created with its folder if missing; None for
        :func:`default_store_path`. Ignored when ``database`` is given.
    database:
        A database or its URL (``postgresql://…``, ``sqlite:///…``) instead of the file.
        One store object per process: the engine serialises access to it, and writers
        in other processes wait for the ``execution`` lock.
    """

    def __init__(
        self, path: Path | str | None = None, *, database: Database | str | None = None
    ) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        if isinstance(database, str) and database:
            self._db: Database = open_database(database)
        elif database is not None and not isinstance(database, str):
            self._db = database
        else:
            # fsynced commits: an order is on disk before it is sent
            self._db = SqliteDatabase(self.path)
        migrate(self._db, "execution", MIGRATIONS)
        with self._db.transaction(lock="execution") as tx:
            if self._db.dialect == "sqlite":
                _add_missing_columns(tx, "execution_orders", _ADDED_ORDER_COLUMNS)
            # The table in code is the truth; the copy the trigger reads follows it.
            tx.execute("DELETE FROM execution_order_transitions")
            tx.executemany(
                "INSERT INTO execution_order_transitions (from_state, to_state) VALUES (?, ?) "
                "ON CONFLICT DO NOTHING",
                [(int(a), int(b)) for (a, _), b in ORDER_STATE_TABLE.items()],
            )

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[StoreTransaction]:
        """One atomic unit of writes: committed when the block ends, rolled back on error.

        A ``durable`` commit is on disk before it returns. Pass False only for writes
        that can be derived again from another durable record (the broker journal's
        events): they survive a process crash like any commit and reach the disk with
        the next durable commit, so a power loss can drop only a tail that recovery
        re-derives.
        """
        with self._db.transaction(lock="execution", durable=durable) as tx:
            yield StoreTransaction(tx)

    # --- reads ------------------------------------------------------------------------

    def order(self, order_id: str) -> Order | None:
        """The order with execution id ``order_id``, or None."""
        return _one_order(self._db, "order_id = ?", (order_id,))

    def order_by_key(self, account_id: str, key: str) -> Order | None:
        """The order of ``account_id`` with idempotency key ``key``, or None."""
        return _one_order(self._db, "account_id = ? AND idempotency_key = ?", (account_id, key))

    def orders(
        self,
        account_id: str,
        *,
        states: Sequence[OrderState] = (),
        symbol: str = "",
        from_time_ms: int = 0,
        to_time_ms: int = 0,
        before_seq: int = 0,
        limit: int = 100,
    ) -> list[tuple[int, Order]]:
        """``(seq, order)`` newest first, filtered; ``before_seq`` > 0 pages on."""
        where: list[str] = ["account_id = ?"]
        args: list[str | int] = [account_id]
        if states:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            args.extend(int(s) for s in states)
        for clause, value in (
            ("symbol = ?", symbol),
            ("created_time_ms >= ?", from_time_ms),
            ("created_time_ms < ?", to_time_ms),
            ("seq < ?", before_seq),
        ):
            if value:
                where.append(clause)
                args.append(value)
        rows = self._db.fetch(
            f"{_SELECT_ORDER} WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?",
            *args,
            limit,
        )
        return [(row[0], _order(row[1:])) for row in rows]

    def positions(self, account_id: str, *, open_only: bool = True) -> list[Position]:
        """Positions of ``account_id``, oldest first."""
        rows = self._db.fetch(
            f"SELECT {_POSITION_COLUMNS} FROM execution_positions "  # noqa: S608 (constant)
            f"WHERE account_id = ? AND open >= ? ORDER BY open_time_ms, opened_seq",
            account_id,
            int(open_only),
        )
        return [_position(row) for row in rows]

    def fills(self, account_id: str, *, since_ms: int = 0) -> list[Fill]:
        """Deals of ``account_id`` in booking order."""
        rows = self._db.fetch(
            f"SELECT {_FILL_COLUMNS} FROM execution_fills "  # noqa: S608 (constant)
            "WHERE account_id = ? AND time_ms >= ? ORDER BY booked_seq",
            account_id,
            since_ms,
        )
        return [_fill(row) for row in rows]

    def account(self, account_id: str) -> AccountRecord | None:
        """The account snapshot, or None before the first write."""
        rows = self._db.fetch(
            "SELECT account_id, currency, starting_balance, balance, realized, commission, "
            "broker_cursor FROM execution_accounts WHERE account_id = ?",
            account_id,
        )
        if not rows:
            return None
        row = rows[0]
        start, balance, realized, commission = (Decimal(text) for text in row[2:6])
        return AccountRecord(row[0], row[1], start, balance, realized, commission, row[6])

    def day_start_equity(self, account_id: str, day: int) -> Decimal | None:
        """Equity recorded when UTC day ``day`` began, or None if it was not recorded."""
        rows = self._db.fetch(
            "SELECT equity FROM execution_day_starts WHERE account_id = ? AND day = ?",
            account_id,
            day,
        )
        return Decimal(rows[0][0]) if rows else None

    def save_day_start(self, account_id: str, day: int, equity: Decimal) -> None:
        """Record the equity at the start of ``day``; the first record of a day wins."""
        with self.transaction() as tx:
            tx.save_day_start(account_id, day, equity)

    def quotes(self) -> dict[str, Quote]:
        """Last quote of each symbol."""
        rows = self._db.fetch("SELECT symbol, bid, ask, time_ms, seq FROM execution_quotes")
        return {row[0]: Quote(*row) for row in rows}

    def reports_since(
        self, from_seq: int = 0, limit: int = 1000, account_ids: Sequence[str] = ()
    ) -> list[ExecutionReport]:
        """Reports with ``seq >= from_seq``, oldest first, at most ``limit``."""
        where, args = "seq >= ?", [from_seq, *account_ids]
        if account_ids:
            where += f" AND account_id IN ({', '.join('?' * len(account_ids))})"
        # A snapshot read: report streams read committed reports (append-only) while the
        # engine writes, without waiting for the engine's lock.
        with self._db.read() as snapshot:
            rows = snapshot.fetch(
                f"SELECT body FROM execution_reports WHERE {where} ORDER BY seq LIMIT ?",  # noqa: S608
                *args,
                limit,
            )
        return [_report(json.loads(body)) for (body,) in rows]

    def last_report_seq(self) -> int:
        """Seq of the newest report, -1 when there is none."""
        rows = self._db.fetch("SELECT COALESCE(MAX(seq), -1) FROM execution_reports")
        return int(rows[0][0])


# Columns added after the first release; a store created before gets them on open.
_ADDED_ORDER_COLUMNS = {
    "model_name": "TEXT NOT NULL DEFAULT ''",
    "model_version": "TEXT NOT NULL DEFAULT ''",
    "risk_decision": "BLOB NOT NULL DEFAULT x''",
    "reference_price": "INTEGER",
}


def _add_missing_columns(tx: Transaction, table: str, columns: Mapping[str, str]) -> None:
    # SQLite stores from before these columns were added (adopted as schema version 1).
    present = {row[1] for row in tx.fetch(f"PRAGMA table_info({table})")}
    for name, spec in columns.items():
        if name not in present:
            tx.execute(f"ALTER TABLE {table} ADD COLUMN {name} {spec}")


def _sql(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, Origin):
        return value.value
    if isinstance(value, int):  # IntEnum members included
        return int(value)
    return value


def _one_order(db: Transaction | Database, where: str, args: Sequence[Any]) -> Order | None:
    rows = db.fetch(f"{_SELECT_ORDER} WHERE {where}", *args)
    return _order(rows[0][1:]) if rows else None


_ORDER_TYPES: dict[str, Any] = {
    "side": Side,
    "type": OrderType,
    "time_in_force": TimeInForce,
    "origin": Origin,
    "state": OrderState,
    "volume": Decimal,
    "filled_volume": Decimal,
    "fill_notional": Decimal,
    "commission": Decimal,
}


def _order(row: Sequence[Any]) -> Order:
    values = dict(zip(_ORDER_COLUMNS, row, strict=True))
    return Order(**{k: _ORDER_TYPES[k](v) if k in _ORDER_TYPES else v for k, v in values.items()})


def _position(row: Sequence[Any]) -> Position:
    (pid, account, symbol, side, legs, sl, tp, opened, order_id, signal, fee, pnl, closed) = row
    return Position(
        position_id=pid,
        account_id=account,
        symbol=symbol,
        side=Side(side),
        legs=tuple(Leg(Decimal(v), int(p)) for v, p in json.loads(legs)),
        stop_loss=sl,
        take_profit=tp,
        open_time_ms=opened,
        order_id=order_id,
        signal_id=signal,
        commission=Decimal(fee),
        realized_pnl=Decimal(pnl),
        closed_time_ms=closed,
    )


def _fill(row: Sequence[Any]) -> Fill:
    (deal, order_id, pid, symbol, side, volume, price, fee, time_ms, closing, pnl) = row
    return Fill(
        deal,
        order_id,
        pid,
        symbol,
        Side(side),
        Decimal(volume),
        price,
        Decimal(fee),
        time_ms,
        bool(closing),
        Decimal(pnl),
    )


def _report(body: dict[str, Any]) -> ExecutionReport:
    decimals = ("fill_volume", "filled_volume", "remaining_volume", "commission")
    for name in decimals:
        body[name] = Decimal(body[name])
    if body["average_fill_price"] is not None:
        body["average_fill_price"] = Decimal(body["average_fill_price"])
    body["side"], body["state"] = Side(body["side"]), OrderState(body["state"])
    return ExecutionReport(**body)

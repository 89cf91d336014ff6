"""Durable analytics state on SQLite: fills, hourly marks and the two stream cursors.

Analytics keeps no state of its own worth computing twice: it records what execution
reports (fills) and what market data quotes (marks), and derives every figure from them
on request. One file (``$QUANTMESH_HOME/analytics/analytics.sqlite3`` by default), WAL
mode, ``synchronous = FULL``. Tables:

- ``fills``: one row per execution report that carried a fill, keyed by the report's
  ``seq``, so a report is recorded at most once. ``opens`` is decided when the fill is
  recorded, from ``positions``.
- ``positions``: the side of every position seen. Execution keeps a hedging account: a
  position's first fill opens it, a fill on the same side adds to it and a fill on the
  other side reduces or closes it. The report does not say which, so the store decides.
- ``marks``: the last tick of each ``(symbol, UTC hour)``. The row of the current hour is
  overwritten by every newer tick, so it is always the latest quote: the final mark.
- ``cursors``: the seq of the last execution report and of the last tick consumed. The
  tick cursor carries the stream it counts in (the subscribed symbols), because a tick
  seq numbers one merged stream and means nothing in another.

A batch of reports or ticks commits in one transaction together with the cursor that
covers it, so a consumer restarted at ``cursor + 1`` sees no gap and records nothing
twice, whenever it was stopped. Money and lots are decimal text, never REAL. Nothing
here imports grpc.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from quantmesh.runtime.config import quantmesh_home
from quantmesh.runtime.sqlite import connect, immediate
from quantmesh.services.analytics.ledger import Fill, Mark, Side
from quantmesh.services.analytics.runs import Account, Run

__all__ = ["H1_MS", "AnalyticsStore", "ReportedFill", "default_store_path"]

H1_MS = 3_600_000
_REPORTS, _TICKS = "reports", "ticks"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fills (
  seq           INTEGER PRIMARY KEY,  -- the execution report's seq
  account_id    TEXT    NOT NULL,
  order_id      TEXT    NOT NULL,
  position_id   TEXT    NOT NULL,
  symbol        TEXT    NOT NULL,
  side          INTEGER NOT NULL CHECK (side IN (1, 2)),
  volume_lots   TEXT    NOT NULL,
  price_points  INTEGER NOT NULL,
  digits        INTEGER NOT NULL,
  commission    TEXT    NOT NULL,
  time_ms       INTEGER NOT NULL,
  opens         INTEGER NOT NULL CHECK (opens IN (0, 1)),
  model_name    TEXT    NOT NULL,
  model_version TEXT    NOT NULL,
  signal_id     TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS fills_by_account ON fills (account_id, seq);
CREATE TABLE IF NOT EXISTS positions (
  position_id TEXT    PRIMARY KEY,
  symbol      TEXT    NOT NULL,
  side        INTEGER NOT NULL CHECK (side IN (1, 2))
);
CREATE TABLE IF NOT EXISTS marks (
  symbol     TEXT    NOT NULL,
  hour       INTEGER NOT NULL,  -- time_ms // 3600000
  time_ms    INTEGER NOT NULL,
  bid_points INTEGER NOT NULL,
  ask_points INTEGER NOT NULL,
  digits     INTEGER NOT NULL,
  PRIMARY KEY (symbol, hour)
);
CREATE INDEX IF NOT EXISTS marks_by_time ON marks (time_ms);
CREATE TABLE IF NOT EXISTS cursors (
  name   TEXT    PRIMARY KEY,
  seq    INTEGER NOT NULL,  -- last seq consumed
  stream TEXT    NOT NULL   -- what the seq counts in (ticks: the subscribed symbols)
)"""

_FILL_COLUMNS = (
    "seq, account_id, order_id, position_id, symbol, side, volume_lots, price_points, "
    "digits, commission, time_ms, opens, model_name, model_version, signal_id"
)


def default_store_path() -> Path:
    """``$QUANTMESH_HOME/analytics/analytics.sqlite3``."""
    return quantmesh_home() / "analytics" / "analytics.sqlite3"


@dataclass(frozen=True, slots=True)
class ReportedFill:
    """A fill as an execution report carries it: what a :class:`Fill` needs except ``opens``.

    ``seq`` is the report's seq on execution's stream; ``commission`` a cost (≥ 0) in
    the account currency.
    """

    seq: int
    account_id: str
    order_id: str
    position_id: str
    symbol: str
    side: Side
    volume_lots: Decimal
    price_points: int
    digits: int
    commission: Decimal
    time_ms: int
    model_name: str = ""
    model_version: str = ""
    signal_id: str = ""

    def fill(self, opens: bool) -> Fill:
        """The ledger's fill; validates volume, price and commission."""
        return Fill(
            order_id=self.order_id,
            position_id=self.position_id,
            symbol=self.symbol,
            side=self.side,
            volume_lots=self.volume_lots,
            price_points=self.price_points,
            digits=self.digits,
            commission=self.commission,
            time_ms=self.time_ms,
            opens=opens,
            model_name=self.model_name,
            model_version=self.model_version,
            signal_id=self.signal_id,
        )


class AnalyticsStore:
    """The analytics database (see the module docstring).

    Parameters
    ----------
    path:
        Database file, created with its folder if missing; None for
        :func:`default_store_path`.

    One connection, shared by the recorder jobs and the servicer's worker threads and
    serialised by a lock, so a reader always sees whole batches.
    """

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self._lock = threading.Lock()
        self._revision = 0
        # Fsynced commits: a cursor on disk promises that its batch is on disk too.
        self._db = connect(self.path)
        with self._transaction() as db:
            for statement in _SCHEMA.split(";\n"):
                db.execute(statement)

    @property
    def revision(self) -> int:
        """Counts committed writes since this object opened: equal revisions, equal data."""
        return self._revision

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            with immediate(self._db) as db:
                yield db
            self._revision += 1

    # ----------------------------------------------------------------- cursors

    def report_cursor(self) -> int:
        """Seq of the last execution report consumed; -1 before the first."""
        with self._lock:
            return _cursor(self._db, _REPORTS)[0]

    def tick_cursor(self, stream: str) -> int:
        """Seq of the last tick consumed on ``stream``; -1 before the first or on another."""
        with self._lock:
            seq, stored = _cursor(self._db, _TICKS)
        return seq if stored == stream else -1

    # ----------------------------------------------------------------- writes

    def record_reports(self, fills: Sequence[ReportedFill], through_seq: int) -> list[Fill]:
        """Record the fills of reports up to ``through_seq`` and move the cursor there.

        ``fills`` are the fills among the reports consumed, in seq order; reports without
        a fill only move the cursor. Reports at or below the stored cursor are already
        recorded and are skipped, so replaying a batch changes nothing.

        Returns
        -------
        list[Fill]
            The fills recorded by this call, with ``opens`` decided.
        """
        recorded: list[Fill] = []
        with self._transaction() as db:
            cursor = _cursor(db, _REPORTS)[0]
            if through_seq <= cursor:
                return recorded
            for reported in fills:
                if reported.seq <= cursor:
                    continue
                if reported.seq > through_seq:
                    raise ValueError(f"fill of report {reported.seq} is after {through_seq}")
                fill = reported.fill(_opens(db, reported))
                db.execute(
                    f"INSERT INTO fills ({_FILL_COLUMNS}) VALUES ({', '.join('?' * 15)})",  # noqa: S608
                    (
                        reported.seq,
                        reported.account_id,
                        fill.order_id,
                        fill.position_id,
                        fill.symbol,
                        int(fill.side),
                        str(fill.volume_lots),
                        fill.price_points,
                        fill.digits,
                        str(fill.commission),
                        fill.time_ms,
                        int(fill.opens),
                        fill.model_name,
                        fill.model_version,
                        fill.signal_id,
                    ),
                )
                recorded.append(fill)
            _set_cursor(db, _REPORTS, through_seq, "")
        return recorded

    def record_marks(self, marks: Sequence[Mark], stream: str, through_seq: int) -> None:
        """Record hourly marks from ticks up to ``through_seq`` of ``stream``, with the cursor.

        Each mark replaces the stored mark of its symbol and hour unless that one is
        newer, so a batch replayed, or a stream that restarted earlier, never moves a
        mark back in time. A batch at or below the cursor of the same stream is skipped.
        """
        with self._transaction() as db:
            cursor, stored = _cursor(db, _TICKS)
            if stored == stream and through_seq <= cursor:
                return
            db.executemany(
                """
                INSERT INTO marks (symbol, hour, time_ms, bid_points, ask_points, digits)
                VALUES (?, ?, ?, ?, ?, ?)
                ON CONFLICT (symbol, hour) DO UPDATE SET
                  time_ms = excluded.time_ms,
                  bid_points = excluded.bid_points,
                  ask_points = excluded.ask_points,
                  digits = excluded.digits
                WHERE excluded.time_ms >= marks.time_ms
                """,
                [
                    (m.symbol, m.time_ms // H1_MS, m.time_ms, m.bid_points, m.ask_points, m.digits)
                    for m in marks
                ],
            )
            _set_cursor(db, _TICKS, through_seq, stream)

    # ----------------------------------------------------------------- reads

    def fills(self, account_id: str) -> list[Fill]:
        """The fills of ``account_id`` in report order."""
        with self._lock:
            return _fills(self._db, account_id)

    def marks(self) -> list[Mark]:
        """Every mark, oldest first (ties by symbol)."""
        with self._lock:
            return _marks(self._db)

    def snapshot(self, account: Account) -> tuple[int, Run]:
        """``(revision, run)``: the account's fills and every mark, read as one state."""
        with self._lock:
            return self._revision, Run(
                account, tuple(_fills(self._db, account.account_id)), tuple(_marks(self._db))
            )


def _cursor(db: sqlite3.Connection, name: str) -> tuple[int, str]:
    row = db.execute("SELECT seq, stream FROM cursors WHERE name = ?", (name,)).fetchone()
    return (-1, "") if row is None else (int(row[0]), str(row[1]))


def _set_cursor(db: sqlite3.Connection, name: str, seq: int, stream: str) -> None:
    db.execute(
        "INSERT OR REPLACE INTO cursors (name, seq, stream) VALUES (?, ?, ?)", (name, seq, stream)
    )


def _opens(db: sqlite3.Connection, fill: ReportedFill) -> bool:
    """Does ``fill`` open or add to its position (True), or reduce or close it (False)?

    A position's first fill opens it, and its side is the position's side. Later fills
    on that side add (another partial fill of the entry order), fills on the other side
    reduce it (a close, a stop or a target). Hedging keeps the two apart: execution
    never nets a buy against another position's sell.
    """
    row = db.execute(
        "SELECT side FROM positions WHERE position_id = ?", (fill.position_id,)
    ).fetchone()
    if row is None:
        db.execute(
            "INSERT INTO positions (position_id, symbol, side) VALUES (?, ?, ?)",
            (fill.position_id, fill.symbol, int(fill.side)),
        )
        return True
    return Side(row[0]) is fill.side


def _fills(db: sqlite3.Connection, account_id: str) -> list[Fill]:
    rows = db.execute(
        f"SELECT {_FILL_COLUMNS} FROM fills WHERE account_id = ? ORDER BY seq",  # noqa: S608
        (account_id,),
    )
    return [
        Fill(
            order_id=order_id,
            position_id=position_id,
            symbol=symbol,
            side=Side(side),
            volume_lots=Decimal(volume),
            price_points=points,
            digits=digits,
            commission=Decimal(commission),
            time_ms=time_ms,
            opens=bool(opens),
            model_name=model_name,
            model_version=model_version,
            signal_id=signal_id,
        )
        for (
            _,
            _,
            order_id,
            position_id,
            symbol,
            side,
            volume,
            points,
            digits,
            commission,
            time_ms,
            opens,
            model_name,
            model_version,
            signal_id,
        ) in rows
    ]


def _marks(db: sqlite3.Connection) -> list[Mark]:
    rows = db.execute(
        "SELECT symbol, time_ms, bid_points, ask_points, digits FROM marks ORDER BY time_ms, symbol"
    )
    return [Mark(*row) for row in rows]

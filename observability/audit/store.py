"""The audit log on the relational port: one append-only, hash-chained table.

The table ``audit_records`` (``observability/audit/migrations``) lives in SQLite by
default (``$QUANTMESH_HOME/audit/audit.sqlite3``) and in PostgreSQL when
``QUANTMESH_DATABASE_URL`` names one (or a service's ``…_AUDIT`` setting does). Its
``idx`` (the record's index) is the primary key, with indexes on ``decision_id`` and
``trace_id`` for ``quantmesh audit show``.

One chain, however many writers
    :meth:`AuditStore.append_many` reads the head and inserts the new records inside
    one transaction under the ``audit`` lock: SQLite's write lock (``BEGIN IMMEDIATE``),
    or a PostgreSQL advisory lock, taken before the head is read. Writers in other
    threads or processes wait their turn and can never link two records to the same
    predecessor.

Append-only in the database, not only in this class
    Triggers refuse every ``UPDATE`` and ``DELETE`` (and, in PostgreSQL, ``TRUNCATE``),
    and refuse an ``INSERT`` that does not extend the head (wrong index or wrong
    ``prev_hash``). Whoever owns the database can still drop the triggers or the table;
    that is what the hash chain is for: ``verify`` finds the first changed record, and a
    published head hash exposes a rewritten history.

Durability rule
    A record is *acknowledged* when :meth:`append`/:meth:`append_many` returns, that is
    when its transaction has committed: SQLite runs in WAL mode with ``synchronous =
    FULL`` (the COMMIT returns after the log is fsynced), PostgreSQL commits with its
    WAL flushed (``synchronous_commit`` on, its default). An acknowledged record survives
    a killed process or a crash of the machine. A batch commits as a whole: after a
    crash it is either entirely there or entirely absent, never half.

Validation happens before the write lock is taken (:func:`prepare`), so a bad record
costs the chain nothing and its caller gets an :class:`InvalidArgument` that says what
to fix. Nothing here imports grpc beyond the shared error types.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from quantmesh.observability.audit.chain import (
    GENESIS,
    AuditRecord,
    ChainCheck,
    RecordKind,
    canonical_payload,
    known_kind,
    record_hash,
    verify,
)
from quantmesh.runtime.config import quantmesh_home
from quantmesh.runtime.errors import InvalidArgument
from quantmesh.storage.relational import Database, open_database
from quantmesh.storage.relational.database import SqliteDatabase, Transaction
from quantmesh.storage.relational.migrations import current_version, load_migrations, migrate

__all__ = [
    "BUSY_TIMEOUT_MS",
    "MAX_DECISION_ID_LENGTH",
    "MAX_PAYLOAD_BYTES",
    "AuditStore",
    "ChainReport",
    "NewRecord",
    "PreparedRecord",
    "default_store_path",
    "is_trace_id",
    "prepare",
]

MAX_PAYLOAD_BYTES = 1024 * 1024  # the contract's bound on payload_json (canonical, UTF-8)
MAX_DECISION_ID_LENGTH = 256
MAX_PRODUCER_LENGTH = 2048  # a SPIFFE id is at most 2048 bytes
# Wait this long for another writer's transaction; a lost audit record is worse than a wait.
BUSY_TIMEOUT_MS = 30_000
_INT64_MAX = 2**63 - 1
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_INVALID_TRACE_ID = "0" * 32  # W3C: all zeros is not a trace id

MIGRATIONS = load_migrations("quantmesh.observability.audit")
# Rows read per query when streaming a long chain (verify, export).
PAGE = 5_000

_COLUMNS = "idx, decision_id, trace_id, kind, payload_json, time_ns, producer, prev_hash, hash"
# Queries are built from the constants above only, never from input: hence the noqa.
_INSERT = f"INSERT INTO audit_records ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
_SELECT_HEAD = f"SELECT {_COLUMNS} FROM audit_records ORDER BY idx DESC LIMIT 1"  # noqa: S608
_SELECT_PAGE = (
    f"SELECT {_COLUMNS} FROM audit_records WHERE idx BETWEEN ? AND ? ORDER BY idx LIMIT ?"  # noqa: S608
)
_SELECT_BY = {
    "decision_id": f"SELECT {_COLUMNS} FROM audit_records WHERE decision_id = ? ORDER BY idx",  # noqa: S608
    "trace_id": f"SELECT {_COLUMNS} FROM audit_records WHERE trace_id = ? ORDER BY idx",  # noqa: S608
}

Row = tuple[int, str, str, int, str, int, str, bytes, bytes]


def default_store_path() -> Path:
    """``$QUANTMESH_HOME/audit/audit.sqlite3``."""
    return quantmesh_home() / "audit" / "audit.sqlite3"


def default_location() -> Path | str:
    """Where the log is unless a service says otherwise: ``QUANTMESH_DATABASE_URL`` when
    it is set (e.g. PostgreSQL, shared by every service), else :func:`default_store_path`."""
    return os.environ.get("QUANTMESH_DATABASE_URL") or default_store_path()


def is_trace_id(text: str) -> bool:
    """True for a W3C trace id: 32 lowercase hex digits, not all zero."""
    return _TRACE_ID.fullmatch(text) is not None and text != _INVALID_TRACE_ID


@dataclass(frozen=True, slots=True)
class NewRecord:
    """What a producer supplies; the store assigns the index and the hashes.

    Attributes
    ----------
    decision_id:
        The decision (signal id), or an administrative record's own id. Required.
    kind:
        The stage; anything but ``UNSPECIFIED``.
    payload:
        A JSON object, as a mapping or as text; stored in canonical form, ≤ 1 MiB.
    producer:
        Who appends: the producing service's SPIFFE id.
    trace_id:
        The decision's W3C trace id (32 lowercase hex digits), or empty.
    time_ns:
        When the stage happened, UTC epoch ns; 0 takes the clock at :func:`prepare`.
    """

    decision_id: str
    kind: RecordKind | int
    payload: Mapping[str, Any] | str
    producer: str
    trace_id: str = ""
    time_ns: int = 0


@dataclass(frozen=True, slots=True)
class PreparedRecord:
    """A :class:`NewRecord` checked and frozen: canonical payload, resolved clock."""

    decision_id: str
    kind: RecordKind
    payload_json: str
    producer: str
    trace_id: str
    time_ns: int


def prepare(record: NewRecord) -> PreparedRecord:
    """Check ``record`` and canonicalise its payload; raise :class:`InvalidArgument` if bad.

    Doing this before the write (and, in :class:`~.writer.AuditWriter`, on the caller's
    side of the queue) means a bad record is refused to its own caller and never
    poisons a batch; it also snapshots a payload mapping the caller may go on mutating.
    """
    if not isinstance(record.decision_id, str) or not record.decision_id:
        raise InvalidArgument("decision_id is required: the id of the decision (its signal id)")
    if len(record.decision_id) > MAX_DECISION_ID_LENGTH:
        raise InvalidArgument(
            f"decision_id is {len(record.decision_id)} characters long; "
            f"at most {MAX_DECISION_ID_LENGTH} are allowed"
        )
    kind = RecordKind.parse(record.kind)
    if kind is RecordKind.UNSPECIFIED:
        raise InvalidArgument(
            "kind is required: one of "
            + ", ".join(f"{k.proto_name} ({int(k)})" for k in RecordKind if k)
        )
    if not isinstance(record.trace_id, str) or (
        record.trace_id and not is_trace_id(record.trace_id)
    ):
        raise InvalidArgument(
            f"trace_id {record.trace_id!r} is not a W3C trace id: give 32 lowercase hex "
            "digits, not all zero, or leave it empty"
        )
    if not isinstance(record.producer, str) or not record.producer:
        raise InvalidArgument("producer is required: the SPIFFE id of the appending service")
    if len(record.producer) > MAX_PRODUCER_LENGTH:
        raise InvalidArgument(f"producer is longer than {MAX_PRODUCER_LENGTH} characters")
    time_ns = record.time_ns
    if not isinstance(time_ns, int) or isinstance(time_ns, bool) or not 0 <= time_ns <= _INT64_MAX:
        raise InvalidArgument(
            f"time_ns {time_ns!r} is not UTC epoch nanoseconds (0 ≤ time_ns < 2^63; 0 means now)"
        )
    # Refuse absurd text before parsing it; the limit proper is on the canonical form.
    if isinstance(record.payload, str) and len(record.payload) > 4 * MAX_PAYLOAD_BYTES:
        raise InvalidArgument(_too_large(len(record.payload.encode("utf-8", "replace"))))
    payload_json = canonical_payload(record.payload)
    size = len(payload_json.encode("utf-8"))
    if size > MAX_PAYLOAD_BYTES:
        raise InvalidArgument(_too_large(size))
    return PreparedRecord(
        decision_id=record.decision_id,
        kind=kind,
        payload_json=payload_json,
        producer=record.producer,
        trace_id=record.trace_id,
        time_ns=time_ns or time.time_ns(),
    )


def _too_large(size: int) -> str:
    return (
        f"the payload is {size:,} bytes, over the 1 MiB ({MAX_PAYLOAD_BYTES:,} bytes) limit "
        "of an audit record: record a digest of large inputs instead of the inputs"
    )


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The result of :meth:`AuditStore.verify`: the check and the chain's head then.

    ``head`` is None for an empty chain; ``from_index``/``to_index`` is the range that
    was checked (both inclusive).
    """

    check: ChainCheck
    from_index: int
    to_index: int
    head: AuditRecord | None

    @property
    def ok(self) -> bool:
        """True if every record in the range matched its hash and linked to the one before."""
        return self.check.ok


def _record(row: Row) -> AuditRecord:
    index, decision_id, trace_id, kind, payload_json, time_ns, producer, prev, digest = row
    return AuditRecord(
        index=index,
        decision_id=decision_id,
        trace_id=trace_id,
        kind=known_kind(kind),
        payload_json=payload_json,
        time_ns=time_ns,
        producer=producer,
        prev_hash=bytes(prev),
        hash=bytes(digest),
    )


class AuditStore:
    """The append-only decision log, in SQLite or PostgreSQL.

    ``location`` is a path (an SQLite file), a database URL (``sqlite:///…``,
    ``postgresql://…``) or an open :class:`~quantmesh.storage.relational.Database`.
    Safe to share between threads and processes (see the module notes). Long reads
    (:meth:`verify`, :meth:`export`) read one consistent snapshot, page by page, without
    holding up appends.

    With ``create=False`` (readers such as the CLI) the log must already exist: a
    mistyped path raises :class:`FileNotFoundError` instead of creating a new, empty
    log, or adding tables to some other service's database.
    """

    def __init__(self, location: Path | str | Database, *, create: bool = True) -> None:
        if isinstance(location, str) and "://" not in location:
            location = Path(location)  # a plain path names an SQLite file
        if isinstance(location, Path) and not create and not location.is_file():
            raise FileNotFoundError(f"there is no audit log at {location}")
        self._owned = isinstance(location, (Path, str))  # then close() closes it
        if isinstance(location, Path):
            self._db: Database = SqliteDatabase(location)
        elif isinstance(location, str):
            self._db = open_database(location)
        else:
            self._db = location
        self.location = str(location) if isinstance(location, Path) else self._db.url
        if create:
            migrate(self._db, "audit", MIGRATIONS)
        elif current_version(self._db, "audit") == 0:
            self.close()
            raise FileNotFoundError(f"{self.location} is not an audit log: it has no audit table")

    @property
    def path(self) -> Path | None:
        """The SQLite file the log is in; None in PostgreSQL."""
        return self._db.path if isinstance(self._db, SqliteDatabase) else None

    def close(self) -> None:
        """Close the database if this store opened it; the log stays consistent regardless."""
        if self._owned:
            self._db.close()

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------ writing

    def append(self, record: NewRecord | PreparedRecord) -> AuditRecord:
        """Append one record; it is durable when this returns (see the module docstring)."""
        return self.append_many([record])[0]

    def append_many(self, records: Sequence[NewRecord | PreparedRecord]) -> list[AuditRecord]:
        """Append records in order in one transaction: all are stored, or none."""
        prepared = [prepare(r) if isinstance(r, NewRecord) else r for r in records]
        if not prepared:
            return []
        with self._db.transaction(lock="audit") as tx:
            head = tx.fetchone("SELECT idx, hash FROM audit_records ORDER BY idx DESC LIMIT 1")
            index, prev = (int(head[0]) + 1, bytes(head[1])) if head else (0, GENESIS)
            stored: list[AuditRecord] = []
            for item in prepared:
                digest = record_hash(
                    prev,
                    index,
                    item.time_ns,
                    int(item.kind),
                    item.decision_id,
                    item.trace_id,
                    item.producer,
                    item.payload_json,
                )
                stored.append(
                    AuditRecord(
                        index=index,
                        decision_id=item.decision_id,
                        trace_id=item.trace_id,
                        kind=item.kind,
                        payload_json=item.payload_json,
                        time_ns=item.time_ns,
                        producer=item.producer,
                        prev_hash=prev,
                        hash=digest,
                    )
                )
                index, prev = index + 1, digest
            tx.executemany(_INSERT, [_row(record) for record in stored])
        return stored

    # ------------------------------------------------------------ reading

    def head(self) -> AuditRecord | None:
        """The last record of the chain, or None if it is empty."""
        rows = self._db.fetch(_SELECT_HEAD)
        return _record(rows[0]) if rows else None

    def decision(
        self, *, decision_id: str | None = None, trace_id: str | None = None
    ) -> list[AuditRecord]:
        """Every record of one decision, by decision id or by trace id, in chain order.

        A trace id is matched case-insensitively (Jaeger and logs print it either way).
        An unknown id gives an empty list.
        """
        if (decision_id is None) == (trace_id is None):
            raise InvalidArgument("give either a decision id or a trace id")
        if decision_id is not None:
            if not decision_id:
                raise InvalidArgument("the decision id is empty")
            column, key = "decision_id", decision_id
        else:
            assert trace_id is not None
            key = trace_id.lower()
            if not is_trace_id(key):
                raise InvalidArgument(
                    f"{trace_id!r} is not a W3C trace id: 32 hex digits, not all zero"
                )
            column = "trace_id"
        return [_record(row) for row in self._db.fetch(_SELECT_BY[column], key)]

    def records(self, from_index: int = 0, to_index: int | None = None) -> list[AuditRecord]:
        """Records ``from_index`` to ``to_index`` (inclusive; None: the head), in order."""
        with self._db.read() as snapshot:
            return list(_records(snapshot, from_index, to_index))

    def verify(self, from_index: int = 0, to_index: int | None = None) -> ChainReport:
        """Recompute the chain over a range; the report names the first bad record.

        ``to_index`` None means the head. The first record's ``prev_hash`` is checked
        against the stored hash of the record before it (or the genesis value).
        :class:`InvalidArgument` for a range that is empty or reaches past the head.
        """
        if from_index < 0 or (to_index is not None and to_index < 0):
            raise InvalidArgument("record indexes are never negative")
        with self._db.read() as snapshot:
            row = snapshot.fetchone(_SELECT_HEAD)
            head = None if row is None else _record(row)
            if head is None:
                if from_index or to_index:
                    raise InvalidArgument("the audit log is empty: there is no record to verify")
                return ChainReport(ChainCheck(0, None, "", GENESIS), 0, 0, None)
            last = head.index if to_index is None else to_index
            if from_index > head.index or last > head.index:
                beyond = from_index if from_index > head.index else last
                raise InvalidArgument(
                    f"record {beyond} is beyond the head of the chain (record {head.index})"
                )
            if from_index > last:
                raise InvalidArgument(f"from_index {from_index} is after to_index {last}")
            previous = GENESIS
            if from_index:
                before = snapshot.fetchone(
                    "SELECT hash FROM audit_records WHERE idx = ?", from_index - 1
                )
                if before is None:
                    missing = f"record {from_index - 1} is missing (records were removed)"
                    return ChainReport(
                        ChainCheck(0, from_index - 1, missing, GENESIS), from_index, last, head
                    )
                previous = bytes(before[0])
            check = verify(_records(snapshot, from_index, last), previous, from_index)
            expected = last - from_index + 1
            if check.ok and check.checked < expected:
                gap = from_index + check.checked
                check = ChainCheck(
                    check.checked,
                    gap,
                    f"record {gap} is missing: the range ends early (records were removed)",
                    check.last_hash,
                )
        return ChainReport(check, from_index, last, head)

    def export(self, target: Path | TextIO, from_index: int = 0) -> int:
        """Write records from ``from_index`` on as JSON lines; return how many.

        A path is written whole or not at all (a temporary file, then a rename). Each
        line is :meth:`AuditRecord.to_json`; :meth:`AuditRecord.from_json` reads it back
        into a record whose hashes verify.
        """
        if from_index < 0:
            raise InvalidArgument("from_index is never negative")
        if isinstance(target, Path):
            partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
            try:
                with partial.open("w", encoding="utf-8") as file:
                    count = self.export(file, from_index)
                partial.replace(target)
            finally:
                partial.unlink(missing_ok=True)
            return count
        count = 0
        with self._db.read() as snapshot:
            for record in _records(snapshot, from_index, None):
                target.write(record.to_json())
                target.write("\n")
                count += 1
        return count


def _records(snapshot: Transaction, from_index: int, to_index: int | None) -> Iterator[AuditRecord]:
    """Records ``from_index``..``to_index`` of one snapshot, read a page at a time, so a
    verify or an export of a long chain stays small in memory."""
    last = _INT64_MAX if to_index is None else to_index
    start = from_index
    while start <= last:
        page = snapshot.fetch(_SELECT_PAGE, start, last, PAGE)
        for row in page:
            yield _record(row)
        if len(page) < PAGE:
            return
        start = int(page[-1][0]) + 1


def _row(record: AuditRecord) -> tuple[Any, ...]:
    return (
        record.index,
        record.decision_id,
        record.trace_id,
        int(record.kind),
        record.payload_json,
        record.time_ns,
        record.producer,
        record.prev_hash,
        record.hash,
    )

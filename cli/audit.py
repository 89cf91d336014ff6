"""``quantmesh audit``: one decision's whole story, the chain's check, and an export.

The commands read the audit database directly (never through a service), so they work
on a copy of the file, on a stopped system, and while the services keep appending:
each command reads one consistent snapshot.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.json import JSON
from rich.markup import escape

from quantmesh.observability.audit.chain import AuditRecord, kind_name
from quantmesh.observability.audit.store import AuditStore, default_location, is_trace_id
from quantmesh.runtime.errors import InvalidArgument
from quantmesh.storage.relational import DatabaseError
from quantmesh.storage.urls import StoreConfigError, StoreUnavailableError

app = typer.Typer(
    no_args_is_help=True,
    help="The decision audit log: show a decision, verify the chain, export JSON lines.",
)
_out = Console()
_err = Console(stderr=True)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Audit database: an SQLite file or a URL (postgresql://…) [default: "
        "$QUANTMESH_DATABASE_URL, else $QUANTMESH_HOME/audit/audit.sqlite3, else "
        "var/audit/audit.sqlite3].",
        show_default=False,
    ),
]


def _fail(message: str, code: int = 2) -> typer.Exit:
    _err.print(f"[red]{escape(message)}[/red]", soft_wrap=True)
    return typer.Exit(code)


def _open(db: str | None) -> AuditStore:
    location = db if db is not None else default_location()
    try:
        return AuditStore(location, create=False)
    except FileNotFoundError as error:
        raise _fail(
            f"{error}; pass --db, or set QUANTMESH_HOME (or QUANTMESH_DATABASE_URL) as the "
            "services have it"
        ) from None
    except (StoreConfigError, StoreUnavailableError) as error:
        raise _fail(str(error)) from None
    except (sqlite3.Error, DatabaseError) as error:
        raise _fail(f"cannot read the audit log {location}: {error}") from None


@contextmanager
def _reading(db: str | None) -> Iterator[AuditStore]:
    """The log, opened for one command; a bad argument or an unreadable file exits 2."""
    store = _open(db)
    try:
        yield store
    except InvalidArgument as error:
        raise _fail(str(error)) from None
    except (sqlite3.Error, DatabaseError) as error:
        raise _fail(f"cannot read the audit log {store.location}: {error}") from None
    finally:
        store.close()


def _when(time_ns: int) -> str:
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    moment = datetime.fromtimestamp(seconds, UTC)
    return f"{moment:%Y-%m-%d %H:%M:%S}.{nanos:09d} UTC"


def _kind_label(kind: int) -> str:
    return kind_name(kind).removeprefix("RECORD_KIND_").replace("_", " ").lower()


def _find(store: AuditStore, key: str) -> tuple[str, list[AuditRecord]]:
    """Records of ``key``, read as a trace id if it looks like one, else a decision id.

    Any case is taken for a trace id: people paste them from Jaeger, logs and URLs.
    """
    if is_trace_id(key.lower()):
        records = store.decision(trace_id=key)
        if records:
            return "trace", records
    # A decision id of 32 hex digits is possible (an id scheme's choice), so fall back.
    return "decision", store.decision(decision_id=key)


@app.command("show")
def show(
    key: Annotated[
        str,
        typer.Argument(
            metavar="DECISION_ID|TRACE_ID",
            help="A decision id (the signal id) or a trace id (32 hex digits, from Jaeger).",
            show_default=False,
        ),
    ],
    db: DbOption = None,
) -> None:
    """Print every record of one decision in chain order: when, what, who, and the payload."""
    with _reading(db) as store:
        matched, records = _find(store, key)
    if not records:
        raise _fail(f"no audit record has the decision id or trace id {key!r}", code=1)
    decisions = ", ".join(dict.fromkeys(record.decision_id for record in records))
    traces = ", ".join(dict.fromkeys(record.trace_id for record in records if record.trace_id))
    _out.print(
        f"[bold]decision[/bold] {escape(decisions)}  ·  [bold]trace[/bold] "
        f"{escape(traces or '(none)')}  ·  {len(records)} record(s), found by {matched} id",
        soft_wrap=True,
    )
    for record in records:
        _out.print()
        _out.rule(
            f"[bold]#{record.index}[/bold]  {_kind_label(record.kind)}  ·  {_when(record.time_ns)}",
            align="left",
        )
        _out.print(f"producer  {escape(record.producer)}", soft_wrap=True)
        if len(dict.fromkeys(r.decision_id for r in records)) > 1:
            _out.print(f"decision  {escape(record.decision_id)}", soft_wrap=True)
        _out.print(f"hash      {record.hash.hex()}", soft_wrap=True, style="dim")
        try:
            _out.print(JSON(record.payload_json, indent=2), soft_wrap=True)
        except ValueError:  # a damaged record: show what is there, verify says the rest
            _out.print(f"(not JSON) {escape(record.payload_json)}", soft_wrap=True)


@app.command("verify")
def verify(
    db: DbOption = None,
    from_index: Annotated[
        int, typer.Option("--from-index", min=0, help="First record to check.")
    ] = 0,
    to_index: Annotated[
        int | None,
        typer.Option(
            "--to-index",
            min=0,
            help="Last record to check [default: the head].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Recompute every hash and link; exit 1 naming the first bad record and why."""
    with _reading(db) as store:
        report = store.verify(from_index, to_index)
    check = report.check
    if report.head is None:
        _out.print("chain intact: 0 records (the audit log is empty)")
        return
    if check.ok:
        scope = (
            ""
            if (report.from_index, report.to_index) == (0, report.head.index)
            else (f" (records {report.from_index}–{report.to_index} of {report.head.index + 1})")
        )
        _out.print(
            f"chain intact: {check.checked} records{scope}, head {report.head.hash.hex()}",
            soft_wrap=True,
        )
        return
    _out.print(
        f"[red]chain broken at record {check.broken_index}[/red]: {escape(check.reason)}",
        soft_wrap=True,
    )
    raise typer.Exit(1)


@app.command("export")
def export(
    db: DbOption = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="File to write [default: standard output].", show_default=False
        ),
    ] = None,
    from_index: Annotated[
        int, typer.Option("--from-index", min=0, help="First record to export.")
    ] = 0,
) -> None:
    """Write records as JSON lines: fields, payload as an object, hashes in hex.

    Each line re-verifies: the canonical JSON of its payload is the hashed payload_json.
    """
    with _reading(db) as store:
        try:
            count = store.export(out if out is not None else sys.stdout, from_index)
        except OSError as error:
            raise _fail(f"cannot write {out}: {error.strerror or error}") from None
    if out is not None:
        _err.print(f"exported {count} record(s) to {escape(str(out))}", soft_wrap=True)

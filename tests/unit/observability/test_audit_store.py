"""The audit store on real SQLite: linking, validation, append-only triggers, tampering,
two writing processes, the writer's queue, and the ``quantmesh audit`` commands."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from typer.testing import CliRunner

from quantmesh.cli.audit import app
from quantmesh.observability.audit.chain import GENESIS, AuditRecord, RecordKind, verify
from quantmesh.observability.audit.store import (
    MAX_PAYLOAD_BYTES,
    AuditStore,
    NewRecord,
    default_store_path,
)
from quantmesh.observability.audit.writer import AuditWriter
from quantmesh.runtime.errors import InvalidArgument, Unavailable

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER_TRACE = "0af7651916cd43dd8448eb211c80319c"
PRODUCER = "spiffe://quantmesh.local/risk"


def new(
    decision: str = "sig-1",
    kind: int = RecordKind.SIGNAL,
    *,
    payload: Mapping[str, Any] | str | None = None,
    producer: str = PRODUCER,
    trace_id: str = TRACE,
    time_ns: int = 1_700_000_000_000_000_000,  # 2023-11-14 22:13:20 UTC
) -> NewRecord:
    return NewRecord(
        decision_id=decision,
        kind=kind,
        payload={"decision": decision, "side": "BUY"} if payload is None else payload,
        producer=producer,
        trace_id=trace_id,
        time_ns=time_ns,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AuditStore]:
    with AuditStore(tmp_path / "audit" / "audit.sqlite3") as opened:
        yield opened


def story(store: AuditStore) -> list[AuditRecord]:
    """Three decisions of three stages each, interleaved as a live pipeline writes them."""
    stored = []
    for stage in (RecordKind.PREDICTION, RecordKind.SIGNAL, RecordKind.RISK_DECISION):
        for number, trace in enumerate((TRACE, OTHER_TRACE, "")):
            payload = {"stage": stage.name.lower(), "decision": number, "price": 1.0845}
            stored.append(
                store.append(new(f"sig-{number}", stage, trace_id=trace, payload=payload))
            )
    return stored


# ---------------------------------------------------------------- appending


def test_append_when_the_log_is_empty_starts_at_genesis_and_links_each_record(
    store: AuditStore,
) -> None:
    first = store.append(new("sig-1"))
    second = store.append(new("sig-2", RecordKind.RISK_DECISION))
    assert (first.index, first.prev_hash) == (0, GENESIS)
    assert (second.index, second.prev_hash) == (1, first.hash)
    assert first.hash == first.computed_hash()
    assert store.head() == second
    report = store.verify()
    assert report.ok
    assert (report.check.checked, report.head) == (2, second)


def test_append_stores_the_canonical_payload_whether_given_as_mapping_or_text(
    store: AuditStore,
) -> None:
    from_text = store.append(new(payload='{ "b": 1.50, "a": [true, null] }'))
    from_mapping = store.append(new(payload={"b": 1.5, "a": [True, None]}))
    assert from_text.payload_json == from_mapping.payload_json == '{"a":[true,null],"b":1.5}'


def test_append_when_time_ns_is_zero_takes_the_clock(store: AuditStore) -> None:
    before = time.time_ns()
    record = store.append(new(time_ns=0))
    assert before <= record.time_ns <= time.time_ns()


def test_append_many_when_one_record_is_bad_stores_none(store: AuditStore) -> None:
    store.append(new("sig-0"))
    with pytest.raises(InvalidArgument, match="decision_id is required"):
        store.append_many([new("sig-1"), new(""), new("sig-2")])
    batch = store.append_many([new("sig-1"), new("sig-2")])
    assert [record.index for record in batch] == [1, 2]
    assert batch[1].prev_hash == batch[0].hash
    assert store.verify().ok


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (new(""), "decision_id is required"),
        (new("x" * 257), "at most 256"),
        (new(kind=RecordKind.UNSPECIFIED), "kind is required: one of RECORD_KIND_FEATURES"),
        (new(kind=99), "unknown record kind 99"),
        (new(payload="[1, 2, 3]"), "must be a JSON object, got an array"),
        (new(payload="{'single': 'quotes'}"), "payload_json is not valid JSON"),
        (new(payload={"blob": "x" * MAX_PAYLOAD_BYTES}), "over the 1 MiB"),
        (new(trace_id=TRACE.upper()), "not a W3C trace id: give 32 lowercase hex"),
        (new(trace_id=TRACE[:16]), "not a W3C trace id"),
        (new(trace_id="0" * 32), "not all zero"),
        (new(producer=""), "producer is required"),
        (new(time_ns=-1), "not UTC epoch nanoseconds"),
    ],
)
def test_append_when_the_record_is_invalid_says_what_to_fix(
    store: AuditStore, record: NewRecord, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        store.append(record)
    assert store.head() is None


# ---------------------------------------------------------------- reading


def test_decision_by_id_or_trace_returns_its_records_in_chain_order(store: AuditStore) -> None:
    stored = story(store)
    by_id = store.decision(decision_id="sig-0")
    assert [record.index for record in by_id] == [0, 3, 6]
    assert [record.kind for record in by_id] == [
        RecordKind.PREDICTION,
        RecordKind.SIGNAL,
        RecordKind.RISK_DECISION,
    ]
    assert store.decision(trace_id=OTHER_TRACE.upper()) == [stored[1], stored[4], stored[7]]
    assert store.decision(decision_id="unknown") == []
    with pytest.raises(InvalidArgument, match="either a decision id or a trace id"):
        store.decision()
    with pytest.raises(InvalidArgument, match="not a W3C trace id"):
        store.decision(trace_id="abc")


def test_verify_of_a_range_checks_only_it_and_refuses_one_beyond_the_head(
    store: AuditStore,
) -> None:
    assert store.verify().ok  # empty
    with pytest.raises(InvalidArgument, match="empty"):
        store.verify(1)
    story(store)
    report = store.verify(3, 5)
    assert report.ok
    assert (report.check.checked, report.head and report.head.index) == (3, 8)
    with pytest.raises(InvalidArgument, match="record 9 is beyond the head of the chain"):
        store.verify(2, 9)
    with pytest.raises(InvalidArgument, match="after to_index"):
        store.verify(5, 3)


def test_export_writes_json_lines_that_read_back_into_a_verifying_chain(
    store: AuditStore, tmp_path: Path
) -> None:
    stored = story(store)
    out = tmp_path / "audit.jsonl"
    assert store.export(out) == 9
    back = [AuditRecord.from_json(line) for line in out.read_text("utf-8").splitlines()]
    assert back == stored
    assert verify(back).ok
    later = tmp_path / "later.jsonl"
    assert store.export(later, from_index=7) == 2
    assert [json.loads(line)["index"] for line in later.read_text().splitlines()] == [7, 8]
    assert list(tmp_path.glob(".*partial")) == []


# ---------------------------------------------------------------- append-only, tampering


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_records SET payload_json = '{}' WHERE idx = 1",
        "DELETE FROM audit_records WHERE idx = 2",
        "DELETE FROM audit_records",
        "INSERT OR REPLACE INTO audit_records SELECT * FROM audit_records WHERE idx = 0",
        "INSERT INTO audit_records SELECT idx + 3, decision_id, trace_id, kind, payload_json, "
        "time_ns, producer, prev_hash, hash FROM audit_records WHERE idx = 2",
    ],
)
def test_sql_that_changes_removes_or_skips_records_is_refused(
    store: AuditStore, statement: str
) -> None:
    story(store)
    db = sqlite3.connect(store.path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="the audit log is append-only"):
            db.execute(statement)
    finally:
        db.close()
    assert store.verify().check.checked == 9


def flip_payload_byte(path: Path, index: int) -> None:
    """Change one character of a stored payload, as a careless or hostile writer could."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("DROP TRIGGER audit_records_no_update")
        db.execute(
            "UPDATE audit_records SET payload_json = replace(payload_json, '1.0845', '1.0846') "
            "WHERE idx = ?",
            (index,),
        )
    finally:
        db.close()


def test_verify_when_one_payload_byte_is_flipped_fails_at_exactly_that_record(
    store: AuditStore,
) -> None:
    story(store)
    flip_payload_byte(store.path, 4)
    report = store.verify()
    assert not report.ok
    assert report.check.broken_index == 4
    assert report.check.reason.startswith("hash mismatch")
    assert store.verify(0, 3).ok
    assert store.verify(5).ok  # later records still link to the hash record 4 stores


def test_cli_verify_when_a_byte_in_the_file_is_flipped_exits_1_naming_the_record(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.sqlite3"
    with AuditStore(path) as store:
        for number in range(6):
            payload = {"marker": f"tamper-me-{number}", "side": "BUY"}
            store.append(new(f"sig-{number}", payload=payload))
    runner = CliRunner()
    intact = runner.invoke(app, ["verify", "--db", str(path)])
    assert intact.exit_code == 0, intact.output
    with AuditStore(path, create=False) as reopened:
        head = reopened.head()
    assert head is not None
    head_hash = head.hash.hex()
    assert f"chain intact: 6 records, head {head_hash}" in intact.stdout
    # Edit the database file itself: one byte of record 3's payload.
    data = bytearray(path.read_bytes())
    assert not path.with_name("audit.sqlite3-wal").exists() or (
        path.with_name("audit.sqlite3-wal").stat().st_size == 0
    )
    offset = data.index(b"tamper-me-3")
    data[offset] ^= 0x20  # "t" → "T"
    path.write_bytes(bytes(data))
    broken = runner.invoke(app, ["verify", "--db", str(path)])
    assert broken.exit_code == 1, broken.output
    assert "chain broken at record 3: hash mismatch" in broken.stdout


def test_export_and_show_of_a_damaged_payload_keep_it_verbatim_and_do_not_crash(
    store: AuditStore,
) -> None:
    story(store)
    db = sqlite3.connect(store.path, isolation_level=None)
    db.execute("DROP TRIGGER audit_records_no_update")
    # Same value, other bytes: re-canonicalising it on export would hide the change.
    db.execute("UPDATE audit_records SET payload_json = ' ' || payload_json WHERE idx = 2")
    db.execute("UPDATE audit_records SET payload_json = 'not json' WHERE idx = 5")
    db.close()
    runner = CliRunner()
    exported = runner.invoke(app, ["export", "--db", str(store.path)])
    assert exported.exit_code == 0, exported.output
    back = [AuditRecord.from_json(line) for line in exported.stdout.splitlines()]
    assert back[2].payload_json.startswith(" {")
    assert back[5].payload_json == "not json"
    assert verify(back).broken_index == 2  # as the store itself reports
    shown = runner.invoke(app, ["show", "sig-2", "--db", str(store.path)])
    assert shown.exit_code == 0, shown.output
    assert "(not JSON) not json" in shown.stdout


# ---------------------------------------------------------------- two processes

_APPENDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from quantmesh.observability.audit.store import AuditStore, NewRecord

    path, name, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    store = AuditStore(path)
    print("ready", flush=True)
    while not path.with_name("go").exists():
        time.sleep(0.001)
    for n in range(count):
        store.append(NewRecord(f"{name}-{n}", 1, {"n": n}, f"spiffe://quantmesh.local/{name}"))
    store.close()
    """
)


def test_appends_from_two_processes_at_once_keep_one_consistent_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    AuditStore(path).close()
    script = tmp_path / "appender.py"
    script.write_text(_APPENDER)
    count = 150
    workers = [
        subprocess.Popen(
            [sys.executable, str(script), str(path), name, str(count)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in ("alpha", "beta")
    ]
    for worker in workers:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "ready"
    (tmp_path / "go").touch()
    for worker in workers:
        assert worker.wait(timeout=90) == 0
    with AuditStore(path, create=False) as store:
        report = store.verify()
        records = store.records()
    assert report.ok, report.check.reason
    assert report.check.checked == 2 * count
    for name in ("alpha", "beta"):
        mine = [r.decision_id for r in records if r.producer.endswith(name)]
        assert mine == [f"{name}-{n}" for n in range(count)]  # each in its own order


# ---------------------------------------------------------------- the writer


async def test_writer_acknowledges_every_record_once_committed(store: AuditStore) -> None:
    async with AuditWriter(store, max_queue=32, max_batch=8) as writer:
        futures = [await writer.submit(new(f"sig-{n}")) for n in range(100)]
        stored = await asyncio.gather(*futures)
        assert writer.depth == 0
    assert [record.index for record in stored] == list(range(100))
    assert [record.decision_id for record in stored] == [f"sig-{n}" for n in range(100)]
    assert store.head() == stored[-1]
    assert store.verify().ok


def queue_depth() -> float:
    value = REGISTRY.get_sample_value("quantmesh_audit_queue_depth")
    assert value is not None
    return value


async def test_writer_depth_gauge_counts_records_until_committed(store: AuditStore) -> None:
    before = queue_depth()
    async with AuditWriter(store, max_batch=2) as writer:
        for n in range(5):
            await writer.submit(new(f"sig-{n}"))  # room in the queue: the drain has not run
        assert queue_depth() - before == 5 == writer.depth
        await writer.flush()
        assert queue_depth() == before
    with pytest.raises(InvalidArgument):
        async with AuditWriter(store) as writer:
            await writer.submit(new(trace_id="nope"))  # refused before it is queued
    assert queue_depth() == before


async def test_writer_when_the_queue_is_full_waits_instead_of_dropping(
    store: AuditStore,
) -> None:
    # Another connection holds the write lock: the writer's batch waits for the disk.
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    writer = AuditWriter(store, max_queue=4, max_batch=2)
    try:
        futures = [await writer.submit(new(f"sig-{n}")) for n in range(4)]
        await asyncio.sleep(0.05)  # the drain takes one batch of 2 and blocks on the lock
        futures += [await writer.submit(new(f"sig-{n}")) for n in range(4, 6)]
        assert writer.depth == 6
        late = asyncio.create_task(writer.submit(new("sig-6")))
        await asyncio.sleep(0.2)
        assert not late.done()  # back-pressure: the caller waits, nothing is dropped
        assert not any(future.done() for future in futures)
        blocker.execute("ROLLBACK")
        futures.append(await asyncio.wait_for(late, 10))
        stored = await asyncio.wait_for(asyncio.gather(*futures), 10)
    finally:
        blocker.close()
        await writer.close()
    assert [record.index for record in stored] == list(range(7))


async def test_writer_refuses_an_invalid_record_to_its_caller_and_keeps_going(
    store: AuditStore,
) -> None:
    async with AuditWriter(store) as writer:
        with pytest.raises(InvalidArgument, match="trace id"):
            await writer.submit(new(trace_id="nope"))
        assert writer.depth == 0
        record = await writer.append(new("sig-ok"))
    assert record.index == 0
    with pytest.raises(Unavailable, match="closed"):
        await writer.submit(new("sig-late"))


async def test_writer_when_a_batch_cannot_be_written_fails_its_futures(
    tmp_path: Path,
) -> None:
    store = AuditStore(tmp_path / "audit.sqlite3")
    store.close()  # every write now fails
    async with AuditWriter(store) as writer:
        future = await writer.submit(new())
        with pytest.raises(sqlite3.ProgrammingError):
            await future
        assert (writer.failed, writer.depth) == (1, 0)
        assert queue_depth() == 0


# ---------------------------------------------------------------- the CLI


def test_cli_show_by_decision_or_trace_id_prints_each_record_readably(
    store: AuditStore,
) -> None:
    story(store)
    runner = CliRunner()
    result = runner.invoke(app, ["show", "sig-1", "--db", str(store.path)])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert f"decision sig-1  ·  trace {OTHER_TRACE}  ·  3 record(s), found by decision id" in text
    assert text.index("#1") < text.index("#4") < text.index("#7")
    assert "prediction" in text
    assert "risk decision" in text
    assert f"producer  {PRODUCER}" in text
    assert "2023-11-14 22:13:20.000000000 UTC" in text
    assert '"price": 1.0845' in text  # pretty-printed, one member a line
    by_trace = runner.invoke(app, ["show", OTHER_TRACE.upper(), "--db", str(store.path)])
    assert by_trace.exit_code == 0, by_trace.output
    assert "found by trace id" in by_trace.stdout
    missing = runner.invoke(app, ["show", "sig-404", "--db", str(store.path)])
    assert missing.exit_code == 1
    assert "no audit record has the decision id or trace id 'sig-404'" in missing.stderr


def test_cli_export_writes_json_lines_to_stdout_or_a_file(
    store: AuditStore, tmp_path: Path
) -> None:
    stored = story(store)
    runner = CliRunner()
    result = runner.invoke(app, ["export", "--db", str(store.path), "--from-index", "6"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [AuditRecord.from_json(line) for line in lines] == stored[6:]
    out = tmp_path / "export.jsonl"
    to_file = runner.invoke(app, ["export", "--db", str(store.path), "--out", str(out)])
    assert to_file.exit_code == 0, to_file.output
    assert len(out.read_text().splitlines()) == 9
    assert f"exported 9 record(s) to {out}" in to_file.stderr


def test_cli_when_the_database_is_missing_or_foreign_exits_2_with_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUANTMESH_HOME", str(tmp_path / "home"))
    assert default_store_path() == tmp_path / "home" / "audit" / "audit.sqlite3"
    runner = CliRunner()
    for command in (["verify"], ["show", "sig-1"], ["export"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        assert "there is no audit log at" in result.stderr
        assert "Traceback" not in result.output
    assert not default_store_path().exists()  # reading never creates a log
    foreign = tmp_path / "other.sqlite3"
    sqlite3.connect(foreign).execute("CREATE TABLE t (x)").connection.close()
    result = runner.invoke(app, ["verify", "--db", str(foreign)])
    assert result.exit_code == 2
    assert "is not an audit log" in result.stderr
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello, not a database at all" * 100)
    result = runner.invoke(app, ["verify", "--db", str(text_file)])
    assert result.exit_code == 2
    assert "cannot read the audit log" in result.stderr

"""The audit log on both relational adapters: SQLite and a real PostgreSQL.

The chain, the database-level append-only rules and tamper detection must hold whichever
engine stores the log: the same tests run on each.
"""

from __future__ import annotations

import itertools
import threading

import pytest

from quantmesh.observability.audit.chain import RecordKind
from quantmesh.observability.audit.store import AuditStore, NewRecord
from quantmesh.storage.relational import Database, IntegrityError

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def record(decision: str, n: int = 0) -> NewRecord:
    return NewRecord(
        decision_id=decision,
        kind=RecordKind.SIGNAL,
        payload={"Signal": {"signal_id": decision, "n": n}},
        producer="spiffe://quantmesh.local/risk",
        trace_id=TRACE,
        time_ns=1_700_000_000_000_000_000 + n,
    )


def test_records_chain_and_verify(database: Database) -> None:
    store = AuditStore(database)
    stored = store.append_many([record("a", i) for i in range(3)])
    stored += [store.append(record("b"))]
    assert [r.index for r in stored] == [0, 1, 2, 3]
    assert all(r.prev_hash == p.hash for p, r in itertools.pairwise(stored))
    report = store.verify()
    assert report.ok
    assert report.check.checked == 4
    assert [r.index for r in store.decision(decision_id="a")] == [0, 1, 2]
    assert [r.index for r in store.decision(trace_id=TRACE.upper())] == [0, 1, 2, 3]
    assert store.head() == stored[-1]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_records SET payload_json = '{}' WHERE idx = 1",
        "DELETE FROM audit_records WHERE idx = 2",
        "INSERT INTO audit_records SELECT idx + 5, decision_id, trace_id, kind, payload_json, "
        "time_ns, producer, prev_hash, hash FROM audit_records WHERE idx = 2",
    ],
)
def test_the_database_itself_refuses_to_rewrite_history(database: Database, statement: str) -> None:
    store = AuditStore(database)
    store.append_many([record("a", i) for i in range(3)])

    def rewrite() -> None:
        with database.transaction() as tx:
            tx.execute(statement)

    with pytest.raises(IntegrityError, match="append-only"):
        rewrite()
    assert store.verify().ok


def test_a_changed_byte_is_found_at_its_record(database: Database) -> None:
    store = AuditStore(database)
    store.append_many([record("a", i) for i in range(5)])
    disable = {
        "sqlite": "DROP TRIGGER audit_records_no_update",
        "postgresql": "ALTER TABLE audit_records DISABLE TRIGGER audit_records_no_update_or_delete",
    }[database.dialect]
    with database.transaction() as tx:  # what someone with the database's keys could do
        tx.execute(disable)
        tx.execute(
            "UPDATE audit_records SET payload_json = replace(payload_json, '\"n\":3', '\"n\":4') "
            "WHERE idx = 3"
        )
    report = store.verify()
    assert not report.ok
    assert report.check.broken_index == 3


def test_concurrent_writers_build_one_chain(database: Database) -> None:
    stores = [AuditStore(database) for _ in range(3)]

    def write(store: AuditStore, name: str) -> None:
        for i in range(10):
            store.append_many([record(name, i), record(name, i + 100)])

    threads = [
        threading.Thread(target=write, args=(store, f"w{n}")) for n, store in enumerate(stores)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report = stores[0].verify()
    assert report.ok
    assert report.check.checked == 60


def test_a_reader_does_not_create_a_log(database: Database) -> None:
    with pytest.raises(FileNotFoundError, match="not an audit log"):
        AuditStore(database, create=False)

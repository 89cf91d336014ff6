"""The audit log end to end: AuditService over a real grpc.aio server, the producer taken
from an mTLS certificate, and a writer process killed under load that loses nothing it
acknowledged."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from quantmesh.audit.v1 import audit_pb2, audit_pb2_grpc
from quantmesh.mesh import direct
from quantmesh.mesh.pki import init_pki
from quantmesh.observability.audit.chain import AuditRecord, verify
from quantmesh.observability.audit.servicer import AuditServicer, add_to_server
from quantmesh.observability.audit.store import AuditStore

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
Stub = audit_pb2_grpc.AuditServiceStub


@dataclass(frozen=True)
class Running:
    address: str
    store: AuditStore


async def serve(
    store: AuditStore, credentials: grpc.ServerCredentials | None = None
) -> tuple[grpc.aio.Server, AuditServicer, str]:
    server = grpc.aio.server()
    servicer = AuditServicer(store)
    add_to_server(server, servicer)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    return server, servicer, f"127.0.0.1:{port}"


@pytest.fixture
async def audit(tmp_path: Path) -> AsyncIterator[Running]:
    store = AuditStore(tmp_path / "audit.sqlite3")
    server, servicer, address = await serve(store)
    yield Running(address, store)
    await server.stop(0.2)
    await servicer.close()
    store.close()


def append_request(
    decision: str, kind: int = audit_pb2.RECORD_KIND_SIGNAL, **fields: str
) -> audit_pb2.AppendRequest:
    return audit_pb2.AppendRequest(
        decision_id=decision,
        trace_id=fields.get("trace_id", TRACE),
        kind=audit_pb2.RecordKind.ValueType(kind),
        payload_json=fields.get("payload_json", '{"side": "BUY", "lots": 0.10}'),
        time_ns=1_700_000_000_000_000_000,
    )


async def test_append_over_grpc_stores_linked_records_with_the_fallback_producer(
    audit: Running,
) -> None:
    async with grpc.aio.insecure_channel(audit.address) as channel:
        stub = Stub(channel)
        first = (await stub.Append(append_request("sig-1"), timeout=10)).record
        second = (
            await stub.Append(
                append_request("sig-1", audit_pb2.RECORD_KIND_RISK_DECISION), timeout=10
            )
        ).record
    assert (first.index, second.index) == (0, 1)
    assert first.payload_json == '{"lots":0.1,"side":"BUY"}'  # canonical
    assert bytes(first.prev_hash) == bytes(32)
    assert bytes(second.prev_hash) == bytes(first.hash)
    # An insecure channel carries no certificate: the server says so, with the peer.
    assert first.producer.startswith("unauthenticated ipv4:127.0.0.1:")
    assert verify([AuditRecord.from_proto(first), AuditRecord.from_proto(second)]).ok
    assert audit.store.head() == AuditRecord.from_proto(second)


async def test_append_ignores_identity_claimed_in_metadata(audit: Running) -> None:
    async with grpc.aio.insecure_channel(audit.address) as channel:
        forged = [
            ("x-quantmesh-caller", "risk"),
            ("x-forwarded-client-cert", 'URI="spiffe://quantmesh.local/risk"'),
        ]
        response = await Stub(channel).Append(append_request("sig-1"), metadata=forged, timeout=10)
    assert response.record.producer.startswith("unauthenticated ")


async def test_concurrent_appends_share_one_chain(audit: Running) -> None:
    async with grpc.aio.insecure_channel(audit.address) as channel:
        stub = Stub(channel)
        responses = await asyncio.gather(
            *(stub.Append(append_request(f"sig-{n}"), timeout=30) for n in range(60))
        )
    assert sorted(response.record.index for response in responses) == list(range(60))
    assert audit.store.verify().check.checked == 60


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (append_request(""), "decision_id is required"),
        (append_request("sig-1", audit_pb2.RECORD_KIND_UNSPECIFIED), "kind is required"),
        (append_request("sig-1", payload_json="[1]"), "must be a JSON object"),
        (append_request("sig-1", payload_json="not json"), "payload_json is not valid JSON"),
        (append_request("sig-1", trace_id="xyz"), "not a W3C trace id"),
    ],
)
async def test_append_when_invalid_answers_invalid_argument_saying_why(
    audit: Running, request_: audit_pb2.AppendRequest, message: str
) -> None:
    async with grpc.aio.insecure_channel(audit.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await Stub(channel).Append(request_, timeout=10)
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert message in (error.value.details() or "")
    assert audit.store.head() is None


async def test_get_decision_by_id_or_trace_and_not_found(audit: Running) -> None:
    async with grpc.aio.insecure_channel(audit.address) as channel:
        stub = Stub(channel)
        for decision in ("sig-1", "sig-2", "sig-1"):
            await stub.Append(append_request(decision), timeout=10)
        by_id = await stub.GetDecision(
            audit_pb2.GetDecisionRequest(decision_id="sig-1"), timeout=10
        )
        assert [record.index for record in by_id.records] == [0, 2]
        by_trace = await stub.GetDecision(audit_pb2.GetDecisionRequest(trace_id=TRACE), timeout=10)
        assert [record.index for record in by_trace.records] == [0, 1, 2]
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetDecision(audit_pb2.GetDecisionRequest(decision_id="sig-9"), timeout=10)
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND
        assert "no audit record has the decision id 'sig-9'" in (missing.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as keyless:
            await stub.GetDecision(audit_pb2.GetDecisionRequest(), timeout=10)
        assert keyless.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_verify_chain_reports_the_head_a_break_and_a_range_beyond_the_head(
    audit: Running,
) -> None:
    async with grpc.aio.insecure_channel(audit.address) as channel:
        stub = Stub(channel)
        empty = await stub.VerifyChain(audit_pb2.VerifyChainRequest(), timeout=10)
        assert (empty.ok, empty.records_checked) == (True, 0)
        for n in range(5):
            await stub.Append(append_request(f"sig-{n}"), timeout=10)
        intact = await stub.VerifyChain(audit_pb2.VerifyChainRequest(), timeout=10)
        assert (intact.ok, intact.records_checked, intact.head_index) == (True, 5, 4)
        head = audit.store.head()
        assert head is not None
        assert intact.head_hash == head.hash
        assert not intact.HasField("first_broken_index")
        with pytest.raises(grpc.aio.AioRpcError) as beyond:
            await stub.VerifyChain(audit_pb2.VerifyChainRequest(to_index=5), timeout=10)
        assert beyond.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "beyond the head" in (beyond.value.details() or "")
        tamper(audit.store.path, 2)
        broken = await stub.VerifyChain(audit_pb2.VerifyChainRequest(), timeout=10)
        assert (broken.ok, broken.first_broken_index, broken.records_checked) == (False, 2, 3)
        assert broken.detail.startswith("hash mismatch")
        tail = await stub.VerifyChain(audit_pb2.VerifyChainRequest(from_index=3), timeout=10)
        assert (tail.ok, tail.records_checked) == (True, 2)


def tamper(path: Path, index: int) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("DROP TRIGGER audit_records_no_update")
        db.execute(
            "UPDATE audit_records SET payload_json = replace(payload_json, 'BUY', 'BUZ') "
            "WHERE idx = ?",
            (index,),
        )
    finally:
        db.close()


async def test_append_over_mtls_records_the_callers_spiffe_id(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    init_pki(pki, ["audit", "risk"])
    with AuditStore(tmp_path / "audit.sqlite3") as store:
        server, servicer, address = await serve(store, direct.server_credentials(pki, "audit"))
        try:
            credentials = direct.channel_credentials(pki, "risk")
            async with grpc.aio.secure_channel(address, credentials) as channel:
                response = await Stub(channel).Append(append_request("sig-1"), timeout=10)
        finally:
            await server.stop(0.2)
            await servicer.close()
    assert response.record.producer == "spiffe://quantmesh.local/risk"


# ---------------------------------------------------------------- a crash under load

_LOADED_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from quantmesh.observability.audit.store import AuditStore, NewRecord
    from quantmesh.observability.audit.writer import AuditWriter

    def acknowledged(future):
        if not future.cancelled() and future.exception() is None:
            record = future.result()
            sys.stdout.write(f"{record.index} {record.decision_id}\\n")
            sys.stdout.flush()

    async def produce(writer, worker):
        n = 0
        while True:
            payload = {"worker": worker, "n": n, "pad": "x" * 300}
            record = NewRecord(f"w{worker}-{n}", 3, payload, "spiffe://quantmesh.local/test")
            (await writer.submit(record)).add_done_callback(acknowledged)
            n += 1

    async def main():
        writer = AuditWriter(AuditStore(Path(sys.argv[1])), max_queue=64, max_batch=16)
        await asyncio.gather(*(produce(writer, worker) for worker in range(4)))

    asyncio.run(main())
    """
)


def test_killing_the_writer_under_load_loses_no_acknowledged_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    script = tmp_path / "writer.py"
    script.write_text(_LOADED_WRITER)
    child = subprocess.Popen(
        [sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    acknowledged: dict[int, str] = {}
    deadline = time.monotonic() + 60
    try:
        while len(acknowledged) < 400 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            index, decision = line.split()
            acknowledged[int(index)] = decision
    finally:
        os.kill(child.pid, signal.SIGKILL)  # mid-load: batches are queued and in flight
        rest, _ = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    for line in rest.splitlines(keepends=True):
        if line.endswith("\n"):  # the kill may cut a last line short
            index, decision = line.split()
            acknowledged[int(index)] = decision
    assert len(acknowledged) >= 400, "the writer acknowledged too little before the deadline"
    with AuditStore(path, create=False) as store:
        report = store.verify()
        stored = {record.index: record.decision_id for record in store.records()}
    assert report.ok, report.check.reason
    lost = {index for index in acknowledged if stored.get(index) != acknowledged[index]}
    assert not lost, f"acknowledged records missing after the crash: {sorted(lost)[:10]}"
    assert len(stored) >= len(acknowledged)

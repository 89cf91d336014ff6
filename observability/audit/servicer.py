"""gRPC adapter of the audit log: ``quantmesh.audit.v1.AuditService`` over the store.

Appends go through an :class:`~.writer.AuditWriter`, and each Append answers only once
its record is committed: concurrent appends from many services share a transaction (one
fsync) instead of queueing for one each, and an OK answer keeps the store's durability
promise. Reads and verification run in worker threads, off the event loop.

Who the producer is
    The server, never the caller, fills ``producer``. It is the SPIFFE id in the
    caller's mTLS certificate (gRPC's ``peer_spiffe_id`` auth property: proxyless mode,
    or a server with TLS of its own). Metadata such as ``x-quantmesh-caller`` or
    ``x-forwarded-client-cert`` is *not* used: any client can send it, so a record
    would say whatever its writer wanted. Without exactly one SPIFFE id in a verified
    certificate the producer is ``unauthenticated`` followed by the transport peer
    (``unauthenticated ipv4:127.0.0.1:53422``), which says plainly that nobody vouched
    for the writer. Behind an Envoy sidecar the service sees plaintext loopback, so
    records are marked that way until the sidecar's identity reaches the service in a
    form it can trust.

Who may append is the mesh policy's business (``PERMISSION_DENIED`` from the mesh), not
this adapter's.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from quantmesh.audit.v1 import audit_pb2, audit_pb2_grpc
from quantmesh.observability.audit.store import AuditStore, NewRecord
from quantmesh.observability.audit.writer import AuditWriter
from quantmesh.runtime.errors import InvalidArgument, NotFound, abort_on_domain_error
from quantmesh.runtime.logging import get_logger
from quantmesh.storage.relational import DatabaseError

__all__ = ["SERVICE_NAME", "UNAUTHENTICATED", "AuditServicer", "add_to_server", "producer_of"]

SERVICE_NAME = audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name
UNAUTHENTICATED = "unauthenticated"

Context = grpc.aio.ServicerContext[Any, Any]

_log = get_logger("audit")


def producer_of(context: Context) -> str:
    """The appending service's identity, as the module docstring describes."""
    ids = list(context.auth_context().get("peer_spiffe_id", []))
    if len(ids) == 1:
        return ids[0].decode("utf-8", errors="replace")
    peer = context.peer()
    return f"{UNAUTHENTICATED} {peer}" if peer else UNAUTHENTICATED


@asynccontextmanager
async def _answering(context: Context) -> AsyncIterator[None]:
    """Domain errors as their status; a store that cannot be used as UNAVAILABLE."""
    async with abort_on_domain_error(context):
        try:
            yield
        except (sqlite3.Error, DatabaseError) as error:
            _log.error("audit store error", error=repr(error))
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"the audit store cannot be used right now ({error}); retry shortly",
            )


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    """Serves one audit store.

    Parameters
    ----------
    store:
        The decision log read by GetDecision and VerifyChain.
    writer:
        The writer in front of ``store`` that Append goes through; one is made if not
        given. Close it (:meth:`close`) when the server stops, to commit what is queued.
    """

    def __init__(self, store: AuditStore, writer: AuditWriter | None = None) -> None:
        self._store = store
        self._writer = writer if writer is not None else AuditWriter(store)

    async def close(self) -> None:
        """Commit every queued append; call after the server stopped taking RPCs."""
        await self._writer.close()

    async def Append(
        self, request: audit_pb2.AppendRequest, context: Context
    ) -> audit_pb2.AppendResponse:
        async with _answering(context):
            record = NewRecord(
                decision_id=request.decision_id,
                kind=int(request.kind),
                payload=request.payload_json,
                producer=producer_of(context),
                trace_id=request.trace_id,
                time_ns=request.time_ns,
            )
            stored = await self._writer.append(record)
        return audit_pb2.AppendResponse(record=stored.to_proto())

    async def GetDecision(
        self, request: audit_pb2.GetDecisionRequest, context: Context
    ) -> audit_pb2.GetDecisionResponse:
        async with _answering(context):
            key = request.WhichOneof("key")
            if key == "decision_id":
                what = f"decision id {request.decision_id!r}"
                records = await asyncio.to_thread(
                    self._store.decision, decision_id=request.decision_id
                )
            elif key == "trace_id":
                what = f"trace id {request.trace_id!r}"
                records = await asyncio.to_thread(self._store.decision, trace_id=request.trace_id)
            else:
                raise InvalidArgument("give a decision_id or a trace_id")
            if not records:
                raise NotFound(f"no audit record has the {what}")
        return audit_pb2.GetDecisionResponse(records=[record.to_proto() for record in records])

    async def VerifyChain(
        self, request: audit_pb2.VerifyChainRequest, context: Context
    ) -> audit_pb2.VerifyChainResponse:
        async with _answering(context):
            report = await asyncio.to_thread(
                self._store.verify, request.from_index, request.to_index or None
            )
        check = report.check
        response = audit_pb2.VerifyChainResponse(
            ok=check.ok,
            records_checked=check.checked,
            head_index=0 if report.head is None else report.head.index,
            head_hash=b"" if report.head is None else report.head.hash,
            detail=check.reason,
        )
        if check.broken_index is not None:
            response.first_broken_index = check.broken_index
            _log.warning("audit chain broken", index=check.broken_index, reason=check.reason)
        return response


def add_to_server(server: grpc.aio.Server, servicer: AuditServicer) -> None:
    """Register ``servicer`` as the server's AuditService."""
    audit_pb2_grpc.add_AuditServiceServicer_to_server(servicer, server)

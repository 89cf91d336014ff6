"""What a pipeline service writes to the audit log: its stage of a decision, as proto JSON.

A service holds one :class:`DecisionLog` and calls :meth:`DecisionLog.record` where a
stage of a decision happens (risk: the signal it received, its decision with every
rule's verdict, each order and the broker's answer). The payload is the stage's
message in proto3 JSON (int64 as strings, field names as in the .proto), so the log
reads like the contracts. The record is keyed by the signal id (the decision id) and by
the decision's trace id, taken from the W3C ``traceparent`` the messages carry.

Records go through an :class:`~quantmesh.observability.audit.writer.AuditWriter`: the
hot path only queues. A stage that must not move on before its records are safe (risk,
before it moves its stream cursor past a batch) calls :meth:`DecisionLog.flush`, so a
crash can lose no record of a decision the service considers handled: an unflushed
batch is handled again after a restart, and its records are written again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from pydantic import BeforeValidator, Field

from quantmesh.observability.audit.chain import RecordKind
from quantmesh.observability.audit.store import AuditStore, NewRecord, default_location
from quantmesh.observability.audit.writer import AuditWriter

__all__ = ["AuditSetting", "DecisionLog", "audit_setting", "trace_id_of"]

# A service's ``audit`` setting: an SQLite path or a database URL (sqlite:///…,
# postgresql://…); empty (e.g. QUANTMESH_RISK_AUDIT=) is off.
AuditSetting = Annotated[
    Path | str | None, BeforeValidator(lambda value: None if value == "" else value)
]


def audit_setting() -> Any:
    """The field of an ``audit`` setting, defaulting to the shared log: the database of
    ``QUANTMESH_DATABASE_URL`` when set, else this home's SQLite file."""
    return Field(default_factory=default_location)


_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


def trace_id_of(traceparent: str) -> str:
    """The trace id of a W3C ``traceparent``; empty if there is none or it is malformed."""
    match = _TRACEPARENT.match(traceparent.strip())
    if match is None or set(match.group(1)) == {"0"}:
        return ""
    return match.group(1)


class DecisionLog:
    """One service's writer of decision records.

    Parameters
    ----------
    writer:
        The queue in front of the store.
    producer:
        The service's SPIFFE id, e.g. ``spiffe://quantmesh.local/risk``.
    """

    def __init__(self, writer: AuditWriter, producer: str, store: AuditStore | None = None) -> None:
        self._writer = writer
        self._store = store  # closed with the log when the log opened it
        self.producer = producer

    @classmethod
    def open(cls, producer: str, location: Path | str | None = None) -> DecisionLog:
        """The log at ``location`` (a path or a database URL; default: see
        :func:`~quantmesh.observability.audit.store.default_location`)."""
        store = AuditStore(location or default_location())
        return cls(AuditWriter(store), producer, store)

    @property
    def depth(self) -> int:
        """Records waiting for the disk."""
        return self._writer.depth

    async def record(
        self,
        kind: RecordKind,
        decision_id: str,
        message: Message,
        *,
        traceparent: str = "",
        time_ns: int = 0,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue one stage of ``decision_id``: ``message`` as proto JSON, plus ``extra``."""
        payload: dict[str, Any] = {
            message.DESCRIPTOR.name: MessageToDict(message, preserving_proto_field_name=True)
        }
        payload.update(extra or {})
        await self._writer.submit(
            NewRecord(
                decision_id=decision_id,
                kind=kind,
                payload=payload,
                producer=self.producer,
                trace_id=trace_id_of(traceparent),
                time_ns=time_ns,
            )
        )

    async def flush(self) -> None:
        """Return once every record queued so far is committed (acknowledged)."""
        await self._writer.flush()

    async def close(self) -> None:
        """Commit what is queued, then close the store if this log opened it."""
        await self._writer.close()
        if self._store is not None:
            self._store.close()

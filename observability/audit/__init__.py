"""The decision audit log: append-only, hash-chained, keyed by decision id and trace id.

- :mod:`.chain`: the rules, with no I/O — canonical JSON, the record hash, verification.
- :mod:`.store`: the log on SQLite (append-only down to its triggers) and its durability.
- :mod:`.writer`: the bounded queue a service appends through without blocking.
- :mod:`.servicer`: the ``quantmesh.audit.v1.AuditService`` gRPC adapter.

``quantmesh audit`` (:mod:`quantmesh.cli.audit`) shows, verifies and exports the log.
"""

from quantmesh.observability.audit.chain import (
    GENESIS,
    AuditRecord,
    ChainCheck,
    RecordKind,
    canonical_json,
    record_hash,
    verify,
)
from quantmesh.observability.audit.store import (
    AuditStore,
    ChainReport,
    NewRecord,
    default_store_path,
)
from quantmesh.observability.audit.writer import AuditWriter

__all__ = [
    "GENESIS",
    "AuditRecord",
    "AuditStore",
    "AuditWriter",
    "ChainCheck",
    "ChainReport",
    "NewRecord",
    "RecordKind",
    "canonical_json",
    "default_store_path",
    "record_hash",
    "verify",
]

"""The audit chain's rules, with no I/O: canonical JSON, the record hash and verification.

Everything that decides whether a record is *the* record lives here, so the store, the
gRPC adapter, the CLI and anyone re-checking an export agree byte for byte.

Canonical JSON (RFC 8785, JCS)
------------------------------
A payload is stored in one canonical form, so the same content always hashes the same:
object members sorted by the UTF-16 code units of their names, no whitespace, strings as
UTF-8 with only ``"``, ``\\`` and control characters escaped, and numbers as ECMAScript
prints them (``1.0`` → ``1``, ``1e30`` → ``1e+30``). The ``rfc8785`` library does it;
``json.dumps`` differs on floats and key order.

Limits, all from I-JSON (RFC 7493), which JCS assumes: NaN and ±Infinity, duplicate
member names, lone surrogates and integers beyond ±2^53 (which a double would round)
are rejected; proto3 JSON already sends int64 as strings.

Record hash
-----------
Exactly as ``proto/quantmesh/audit/v1/audit.proto`` defines it::

    SHA-256(prev_hash || u64be(index) || i64be(time_ns) || u32be(kind) ||
            lp(decision_id) || lp(trace_id) || lp(producer) || lp(payload_json))

with ``lp(s) = u32be(len(utf8(s))) || utf8(s)``; record 0 links to :data:`GENESIS`.
"""

from __future__ import annotations

import enum
import hashlib
import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import rfc8785

from quantmesh.audit.v1 import audit_pb2
from quantmesh.runtime.errors import InvalidArgument

__all__ = [
    "GENESIS",
    "HASH_SIZE",
    "AuditRecord",
    "ChainCheck",
    "RecordKind",
    "canonical_json",
    "canonical_payload",
    "kind_name",
    "known_kind",
    "record_hash",
    "verify",
]

HASH_SIZE = 32
GENESIS = bytes(HASH_SIZE)  # the prev_hash of record 0

_U32 = struct.Struct(">I")
_HEADER = struct.Struct(">QqI")  # index, time_ns, kind


class RecordKind(enum.IntEnum):
    """Stage of a decision a record describes; the numbers are the proto's ``RecordKind``."""

    UNSPECIFIED = 0
    FEATURES = 1
    PREDICTION = 2
    SIGNAL = 3
    RISK_DECISION = 4
    ORDER = 5
    EXECUTION_REPORT = 6
    ADMIN = 7

    @property
    def proto_name(self) -> str:
        """The proto enum name, e.g. ``RECORD_KIND_SIGNAL`` (what exports carry)."""
        return f"RECORD_KIND_{self.name}"

    @classmethod
    def parse(cls, value: int | str) -> RecordKind:
        """A kind from its number, its proto name or its short name (``signal``)."""
        if isinstance(value, str):
            name = value.upper().removeprefix("RECORD_KIND_")
            if name in cls.__members__:
                return cls[name]
            raise InvalidArgument(
                f"unknown record kind {value!r}; one of "
                + ", ".join(kind.name.lower() for kind in cls if kind)
            )
        try:
            return cls(value)
        except ValueError:
            raise InvalidArgument(f"unknown record kind {value}") from None


def known_kind(value: int) -> int:
    """``value`` as a :class:`RecordKind` if it is one, else the plain number.

    Proto3 enums are open: a record of a kind that a newer contract added must still
    be read, shown and verified, so unknown numbers are kept rather than refused.
    """
    try:
        return RecordKind(value)
    except ValueError:
        return value


def kind_name(kind: int) -> str:
    """The proto name of a kind (``RECORD_KIND_SIGNAL``), or its number if unknown."""
    known = known_kind(kind)
    return known.proto_name if isinstance(known, RecordKind) else str(kind)


# ---------------------------------------------------------------- canonical JSON


def canonical_json(value: Any) -> str:
    """``value`` (JSON-shaped Python data) in RFC 8785 canonical form (the rfc8785 library).

    Raises :class:`InvalidArgument` for what JCS cannot express: non-string keys,
    NaN or infinities, integers beyond ±2^53, lone surrogates, other Python types, or
    nesting too deep.
    """
    try:
        return rfc8785.dumps(value).decode("utf-8")
    except RecursionError:
        raise InvalidArgument("the payload is nested too deeply") from None
    except rfc8785.IntegerDomainError as error:
        raise InvalidArgument(
            f"the payload holds an integer JSON cannot carry exactly ({error}); send it as "
            "a string, as proto3 JSON does for int64"
        ) from None
    except rfc8785.CanonicalizationError as error:
        raise InvalidArgument(f"the payload cannot be put in canonical JSON: {error}") from None


def canonical_payload(payload: Mapping[str, Any] | str) -> str:
    """A payload, given as JSON text or as a mapping, as a canonical JSON *object*.

    Text is parsed strictly: duplicate member names and NaN/Infinity are rejected, and
    the top level must be an object (the contract's payload is always one).
    """
    if isinstance(payload, str):
        try:
            value = json.loads(
                payload, object_pairs_hook=_unique_members, parse_constant=_no_constant
            )
        except json.JSONDecodeError as error:
            raise InvalidArgument(f"payload_json is not valid JSON: {error}") from None
        except RecursionError:
            raise InvalidArgument("the payload is nested too deeply") from None
    else:
        value = payload
    if not isinstance(value, Mapping):
        raise InvalidArgument(
            f"the payload must be a JSON object, got {_json_type(value)}; "
            'wrap it, e.g. {"value": ...}'
        )
    return canonical_json(value)


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members: dict[str, Any] = {}
    for name, item in pairs:
        if name in members:
            raise InvalidArgument(f"the payload repeats the member name {name!r}")
        members[name] = item
    return members


def _no_constant(name: str) -> Any:
    raise InvalidArgument(
        f"the payload holds {name}, which JSON cannot carry; use null or a string"
    )


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


# ---------------------------------------------------------------- records and hashes


def _lp(text: str) -> bytes:
    data = text.encode("utf-8")
    return _U32.pack(len(data)) + data


def record_hash(
    prev_hash: bytes,
    index: int,
    time_ns: int,
    kind: int,
    decision_id: str,
    trace_id: str,
    producer: str,
    payload_json: str,
) -> bytes:
    """SHA-256 of one record over the contract's encoding (see the module docstring)."""
    digest = hashlib.sha256(prev_hash)
    digest.update(_HEADER.pack(index, time_ns, kind))
    for text in (decision_id, trace_id, producer, payload_json):
        digest.update(_lp(text))
    return digest.digest()


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One entry of the decision log, as stored; mirrors ``quantmesh.audit.v1.AuditRecord``.

    ``payload_json`` is the canonical text the hash covers, so it is kept verbatim; read
    it as data with :attr:`payload`. ``kind`` is a :class:`RecordKind` when it is one
    this code knows (see :func:`known_kind`).
    """

    index: int
    decision_id: str
    trace_id: str
    kind: int
    payload_json: str
    time_ns: int
    producer: str
    prev_hash: bytes
    hash: bytes

    @property
    def payload(self) -> dict[str, Any]:
        """The payload as Python data."""
        value: dict[str, Any] = json.loads(self.payload_json)
        return value

    def computed_hash(self) -> bytes:
        """What :attr:`hash` must be for this content and ``prev_hash``."""
        return record_hash(
            self.prev_hash,
            self.index,
            self.time_ns,
            int(self.kind),
            self.decision_id,
            self.trace_id,
            self.producer,
            self.payload_json,
        )

    def to_proto(self) -> audit_pb2.AuditRecord:
        """The record as the contract's message."""
        return audit_pb2.AuditRecord(
            index=self.index,
            decision_id=self.decision_id,
            trace_id=self.trace_id,
            kind=audit_pb2.RecordKind.ValueType(int(self.kind)),
            payload_json=self.payload_json,
            time_ns=self.time_ns,
            producer=self.producer,
            prev_hash=self.prev_hash,
            hash=self.hash,
        )

    @classmethod
    def from_proto(cls, message: audit_pb2.AuditRecord) -> AuditRecord:
        """A record from the contract's message (e.g. a GetDecision answer) to verify."""
        return cls(
            index=message.index,
            decision_id=message.decision_id,
            trace_id=message.trace_id,
            kind=known_kind(int(message.kind)),
            payload_json=message.payload_json,
            time_ns=message.time_ns,
            producer=message.producer,
            prev_hash=bytes(message.prev_hash),
            hash=bytes(message.hash),
        )

    def to_json(self) -> str:
        """One export line: the fields, the payload as an object, hashes in hex.

        ``payload`` is embedded as JSON rather than as an escaped string, so tools like
        ``jq`` read it directly; :meth:`from_json` re-canonicalises it, which gives back
        the hashed bytes exactly. A stored payload that is not canonical JSON (only a
        damaged or tampered record is) goes out verbatim as ``payload_json`` instead, so
        the export never hides or repairs damage: it verifies exactly as the store does.
        """
        fields: dict[str, Any] = {
            "index": self.index,
            "decision_id": self.decision_id,
            "trace_id": self.trace_id,
            "kind": kind_name(self.kind),
            "time_ns": self.time_ns,
            "producer": self.producer,
            "prev_hash": self.prev_hash.hex(),
            "hash": self.hash.hex(),
        }
        try:
            payload = canonical_payload(self.payload_json)
        except InvalidArgument:
            payload = None
        if payload == self.payload_json:
            fields["payload"] = json.loads(self.payload_json)
        else:
            fields["payload_json"] = self.payload_json
        # The line itself is not hashed: plain sorted JSON (time_ns exceeds 2^53).
        return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> AuditRecord:
        """A record from one line written by :meth:`to_json`."""
        try:
            fields = json.loads(line)
            return cls(
                index=int(fields["index"]),
                decision_id=str(fields["decision_id"]),
                trace_id=str(fields["trace_id"]),
                kind=_exported_kind(fields["kind"]),
                payload_json=(
                    str(fields["payload_json"])
                    if "payload_json" in fields
                    else canonical_payload(fields["payload"])
                ),
                time_ns=int(fields["time_ns"]),
                producer=str(fields["producer"]),
                prev_hash=bytes.fromhex(fields["prev_hash"]),
                hash=bytes.fromhex(fields["hash"]),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise InvalidArgument(f"not an audit export line: {error!r}") from None


def _exported_kind(value: object) -> int:
    if isinstance(value, str) and value.isdigit():
        return known_kind(int(value))
    if isinstance(value, str):
        return RecordKind.parse(value)
    raise ValueError(f"kind {value!r} is not a kind name")


# ---------------------------------------------------------------- verification


@dataclass(frozen=True, slots=True)
class ChainCheck:
    """The outcome of checking a run of records.

    Attributes
    ----------
    checked:
        Records examined, including the first bad one.
    broken_index:
        Index of the first record that is wrong (for a missing record, the index that
        was expected); None when every record checked out.
    reason:
        Why that record is wrong, for a person; empty when all is well.
    last_hash:
        Hash of the last good record (the ``previous_hash`` given, if there was none).
    """

    checked: int
    broken_index: int | None
    reason: str
    last_hash: bytes

    @property
    def ok(self) -> bool:
        """True if no record was wrong."""
        return self.broken_index is None


def verify(
    records: Iterable[AuditRecord], previous_hash: bytes = GENESIS, start_index: int = 0
) -> ChainCheck:
    """Check records that should run consecutively from ``start_index``.

    ``previous_hash`` is the hash of record ``start_index - 1`` (:data:`GENESIS` for a
    chain's start). Each record must have the next index (else one was removed or
    reordered), link to its predecessor's hash (else one before it was rewritten along
    with its hash), and hash to its own ``hash`` (else its content changed). The first
    failure stops the check: every later hash depends on it.
    """
    expected_index, expected_prev, checked = start_index, previous_hash, 0
    for record in records:
        checked += 1
        if record.index != expected_index:
            after = f"after record {expected_index - 1}" if expected_index else "at the start"
            return ChainCheck(
                checked,
                expected_index,
                f"record {expected_index} is missing: the record {after} has index "
                f"{record.index} (records were removed or reordered)",
                expected_prev,
            )
        if record.prev_hash != expected_prev:
            before = f"record {record.index - 1}" if record.index else "the genesis value"
            return ChainCheck(
                checked,
                record.index,
                f"broken link: its prev_hash {record.prev_hash.hex()} is not the hash of "
                f"{before} ({expected_prev.hex()}); the record before it was rewritten, "
                "or this one was moved",
                expected_prev,
            )
        computed = record.computed_hash()
        if record.hash != computed:
            return ChainCheck(
                checked,
                record.index,
                f"hash mismatch: its content hashes to {computed.hex()}, but it stores "
                f"{record.hash.hex()}; the record was changed after it was written",
                expected_prev,
            )
        expected_index, expected_prev = record.index + 1, record.hash
    return ChainCheck(checked, None, "", expected_prev)

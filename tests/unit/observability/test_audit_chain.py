"""The audit chain's pure rules: the contract's hash, RFC 8785 canonical JSON, verification."""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import replace

import pytest

from quantmesh.audit.v1 import audit_pb2
from quantmesh.observability.audit.chain import (
    GENESIS,
    AuditRecord,
    RecordKind,
    canonical_json,
    canonical_payload,
    kind_name,
    record_hash,
    verify,
)
from quantmesh.runtime.errors import InvalidArgument

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PRODUCER = "spiffe://quantmesh.local/decision"


def chain_of(count: int, start: int = 0, previous: bytes = GENESIS) -> list[AuditRecord]:
    """``count`` linked records, hashed with the pure function under test."""
    records: list[AuditRecord] = []
    for index in range(start, start + count):
        payload = canonical_json({"n": index, "side": "BUY" if index % 2 else "SELL"})
        kind = RecordKind(index % 7 + 1)
        time_ns = 1_700_000_000_000_000_000 + index
        decision = f"sig-{index // 3}"
        digest = record_hash(previous, index, time_ns, kind, decision, TRACE, PRODUCER, payload)
        records.append(
            AuditRecord(index, decision, TRACE, kind, payload, time_ns, PRODUCER, previous, digest)
        )
        previous = digest
    return records


# ---------------------------------------------------------------- the contract's hash


def test_record_hash_of_a_known_record_equals_sha256_of_the_spec_preimage() -> None:
    # Written out by hand from audit.proto: prev_hash || u64be(index) || i64be(time_ns) ||
    # u32be(kind) || lp(decision_id) || lp(trace_id) || lp(producer) || lp(payload_json).
    payload = '{"action":"BUY","€":1}'  # 24 bytes in UTF-8: "€" is 3
    preimage = (
        bytes(range(32))
        + bytes.fromhex("0000000000000007")  # index 7
        + bytes.fromhex("17979cfe3d85cd15")  # time_ns 1_700_000_000_123_456_789
        + bytes.fromhex("00000003")  # RECORD_KIND_SIGNAL
        + bytes.fromhex("00000005")
        + b"sig-1"
        + bytes.fromhex("00000020")
        + TRACE.encode()
        + bytes.fromhex("00000021")
        + PRODUCER.encode()
        + bytes.fromhex("00000018")
        + payload.encode()
    )
    digest = record_hash(
        bytes(range(32)), 7, 1_700_000_000_123_456_789, 3, "sig-1", TRACE, PRODUCER, payload
    )
    assert digest == hashlib.sha256(preimage).digest()
    assert digest.hex() == "fd2ebbac88fa65565d8ca5a61a349e6bb6452cc934960d1306e6c38da27a7828"


def test_record_hash_of_record_zero_with_an_empty_trace_starts_from_genesis() -> None:
    digest = record_hash(GENESIS, 0, 0, 1, "d", "", "p", "{}")
    assert digest.hex() == "3ed5e0ff2c1212cbae3bfc9a00d20212e1e4c5ac0375b68b925c89417e7afdd2"
    assert bytes(32) == GENESIS


def test_record_hash_when_any_field_changes_changes() -> None:
    base = ("d", TRACE, "p", "{}")
    reference = record_hash(GENESIS, 1, 2, 3, *base)
    assert record_hash(GENESIS, 2, 2, 3, *base) != reference
    assert record_hash(GENESIS, 1, 3, 3, *base) != reference
    assert record_hash(GENESIS, 1, 2, 4, *base) != reference
    # Length prefixes keep field boundaries: moving a character between fields differs.
    assert record_hash(GENESIS, 1, 2, 3, "dx", TRACE, "p", "{}") != record_hash(
        GENESIS, 1, 2, 3, "d", TRACE, "xp", "{}"
    )


def test_record_kind_when_compared_to_the_proto_enum_matches_names_and_numbers() -> None:
    proto = dict(audit_pb2.RecordKind.items())
    assert {kind.proto_name: int(kind) for kind in RecordKind} == proto


def test_kind_name_when_a_newer_contract_added_a_kind_keeps_the_number() -> None:
    assert kind_name(RecordKind.RISK_DECISION) == "RECORD_KIND_RISK_DECISION"
    assert kind_name(42) == "42"


# ---------------------------------------------------------------- canonical JSON


def test_canonical_json_of_the_rfc_8785_example_matches_the_rfc() -> None:
    # RFC 8785 §3.2.4, input and expected output as printed there.
    text = (
        '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        ' "literals": [null, true, false]}'
    )
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonical_payload(text) == expected


def test_canonical_json_sorts_member_names_by_utf16_code_units() -> None:
    # RFC 8785 §3.2.3: the emoji (a surrogate pair, 0xD83D...) sorts before U+FB33.
    names = ["\u20ac", "\r", "\ufb33", "1", "\U0001f600", "\u0080", "\u00f6"]
    text = canonical_json({name: index for index, name in enumerate(names)})
    assert list(json.loads(text)) == [
        "\r",
        "1",
        "\u0080",
        "\u00f6",
        "\u20ac",
        "\U0001f600",
        "\ufb33",
    ]


@pytest.mark.parametrize(
    ("bits", "expected"),
    [  # RFC 8785 appendix B: IEEE-754 bit patterns and their canonical text
        ("0000000000000000", "0"),
        ("8000000000000000", "0"),
        ("0000000000000001", "5e-324"),
        ("8000000000000001", "-5e-324"),
        ("7fefffffffffffff", "1.7976931348623157e+308"),
        ("4340000000000000", "9007199254740992"),
        ("c340000000000000", "-9007199254740992"),
        ("4430000000000000", "295147905179352830000"),
        ("44b52d02c7e14af5", "9.999999999999997e+22"),
        ("44b52d02c7e14af6", "1e+23"),
        ("44b52d02c7e14af7", "1.0000000000000001e+23"),
        ("444b1ae4d6e2ef4e", "999999999999999700000"),
        ("444b1ae4d6e2ef4f", "999999999999999900000"),
        ("444b1ae4d6e2ef50", "1e+21"),
        ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
        ("3eb0c6f7a0b5ed8d", "0.000001"),
        ("41b3de4355555553", "333333333.3333332"),
        ("41b3de4355555554", "333333333.33333325"),
        ("41b3de4355555555", "333333333.3333333"),
        ("41b3de4355555556", "333333333.3333334"),
        ("41b3de4355555557", "333333333.33333343"),
        ("becbf647612f3696", "-0.0000033333333333333333"),
        ("43143ff3c1cb0959", "1424953923781206.2"),
    ],
)
def test_canonical_json_of_a_double_prints_it_as_ecmascript_does(bits: str, expected: str) -> None:
    (value,) = struct.unpack(">d", bytes.fromhex(bits))
    assert canonical_json(value) == expected


def test_canonical_json_of_integers_and_integral_floats() -> None:
    assert canonical_json([1.0, -0.0, 100, 1e20, 2**53 - 1, True]) == (
        "[1,0,100,100000000000000000000,9007199254740991,true]"
    )
    # A double cannot hold 2^53 + 1 exactly: I-JSON wants it as a string.
    with pytest.raises(InvalidArgument, match="send it as a string"):
        canonical_json([2**53 + 1])


def test_canonical_payload_when_already_canonical_is_a_fixed_point() -> None:
    text = canonical_payload('{ "b": [1.50, {"z": null, "a": "\\u00e9"}], "a": -2e-7 }')
    assert text == '{"a":-2e-7,"b":[1.5,{"a":"é","z":null}]}'
    assert canonical_payload(text) == text
    assert canonical_payload(json.loads(text)) == text


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("[1, 2]", "must be a JSON object, got an array"),
        ('"text"', "must be a JSON object, got a string"),
        ("{", "not valid JSON"),
        ('{"a": NaN}', "NaN"),
        ('{"a": Infinity}', "Infinity"),
        ('{"a": 1, "a": 2}', "repeats the member name 'a'"),
        ('{"a": "\\ud800"}', "non-UTF-8 codepoints"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply|must be a JSON object"),
    ],
)
def test_canonical_payload_when_not_a_canonicalisable_object_says_why(
    payload: str, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        canonical_payload(payload)


def test_canonical_json_when_given_non_json_python_values_refuses_them() -> None:
    with pytest.raises(InvalidArgument, match="keys must be strings"):
        canonical_json({1: "a"})
    with pytest.raises(InvalidArgument, match="inf is not representable"):
        canonical_json({"a": float("inf")})
    with pytest.raises(InvalidArgument, match="unsupported type"):
        canonical_json({"a": b"raw"})


# ---------------------------------------------------------------- verification


def test_verify_when_the_chain_is_intact_checks_every_record() -> None:
    records = chain_of(10)
    check = verify(records)
    assert check.ok
    assert (check.checked, check.broken_index, check.reason) == (10, None, "")
    assert check.last_hash == records[-1].hash
    assert verify([]).ok


def test_verify_of_a_later_range_links_it_to_the_hash_before_it() -> None:
    records = chain_of(10)
    assert verify(records[4:], records[3].hash, 4).ok
    assert verify(records[4:], GENESIS, 4).broken_index == 4


def test_verify_when_a_payload_byte_changed_reports_a_hash_mismatch_at_that_record() -> None:
    records = chain_of(8)
    records[5] = replace(records[5], payload_json=records[5].payload_json.replace("5", "6"))
    check = verify(records)
    assert check.broken_index == 5
    assert check.checked == 6
    assert check.reason.startswith("hash mismatch")
    assert check.last_hash == records[4].hash


def test_verify_when_a_record_was_rewritten_with_a_fresh_hash_reports_the_broken_link() -> None:
    records = chain_of(8)
    forged = replace(records[3], payload_json='{"n":3,"side":"SELL"}')
    records[3] = replace(forged, hash=forged.computed_hash())
    check = verify(records)
    assert check.broken_index == 4
    assert check.reason.startswith("broken link")
    assert "record 3" in check.reason


def test_verify_when_a_record_is_missing_or_moved_reports_the_expected_index() -> None:
    records = chain_of(6)
    removed = verify(records[:2] + records[3:])
    assert removed.broken_index == 2
    assert "record 2 is missing" in removed.reason
    swapped = verify([records[0], records[2], records[1], *records[3:]])
    assert swapped.broken_index == 1


def test_audit_record_when_converted_to_proto_and_back_is_unchanged() -> None:
    record = chain_of(3)[2]
    message = record.to_proto()
    assert message.kind == audit_pb2.RECORD_KIND_SIGNAL
    assert AuditRecord.from_proto(message) == record


def test_audit_record_export_line_when_read_back_verifies() -> None:
    records = chain_of(5)
    lines = [record.to_json() for record in records]
    assert json.loads(lines[1])["payload"] == {"n": 1, "side": "BUY"}
    assert json.loads(lines[1])["kind"] == "RECORD_KIND_PREDICTION"
    back = [AuditRecord.from_json(line) for line in lines]
    assert back == records
    assert verify(back).ok
    with pytest.raises(InvalidArgument, match="not an audit export line"):
        AuditRecord.from_json('{"index": 1}')

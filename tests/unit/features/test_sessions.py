"""Trading sessions: daylight saving dates, overlaps, weekends, and a per-instant reference."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from quantmesh.features.v1 import features_pb2
from quantmesh.services.features.sessions import (
    LONDON,
    NEW_YORK,
    SESSIONS,
    SYDNEY,
    TOKYO,
    SessionSpec,
    session_mask,
    session_open,
)

S, T, L, N = 1, 2, 4, 8


def utc(text: str) -> int:
    """Epoch ms of an ISO UTC time like ``2017-03-24T07:30``."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def mask_at(text: str) -> int:
    return int(session_mask(np.array([utc(text)]))[0])


def ref_open(spec: SessionSpec, time_ms: int) -> bool:
    """One instant, the slow obvious way."""
    local = datetime.fromtimestamp(time_ms / 1000, UTC).astimezone(ZoneInfo(spec.zone))
    return local.weekday() < 5 and spec.open_hour <= local.hour < spec.close_hour


def test_flags_when_compared_to_the_proto_session_enum_match() -> None:
    assert {spec.flag for spec in SESSIONS} == {S, T, L, N}
    assert SYDNEY.flag == features_pb2.SESSION_SYDNEY
    assert TOKYO.flag == features_pb2.SESSION_TOKYO
    assert LONDON.flag == features_pb2.SESSION_LONDON
    assert NEW_YORK.flag == features_pb2.SESSION_NEW_YORK


@pytest.mark.parametrize(
    ("before", "after", "hours"),
    [
        # London switches to BST on 2017-03-26 01:00 UTC: 08:00 local is 08:00 UTC before
        # and 07:00 UTC after; 17:00 local is 17:00 UTC before and 16:00 UTC after.
        ("2017-03-24T07:30", "2017-03-27T07:30", (0, L)),
        ("2017-03-24T16:30", "2017-03-27T16:30", (L, 0)),
    ],
)
def test_london_when_dst_starts_on_2017_03_26_opens_an_hour_earlier_in_utc(
    before: str, after: str, hours: tuple[int, int]
) -> None:
    assert mask_at(before) & L == hours[0]
    assert mask_at(after) & L == hours[1]


def test_new_york_when_dst_starts_on_2017_03_12_opens_at_12_utc_instead_of_13() -> None:
    assert mask_at("2017-03-10T12:30") & N == 0  # Friday, EST: opens 13:00 UTC
    assert mask_at("2017-03-10T13:00") & N == N
    assert mask_at("2017-03-13T12:30") & N == N  # Monday, EDT: opens 12:00 UTC
    assert mask_at("2017-03-13T11:59") & N == 0


def test_sydney_when_dst_ends_on_2017_04_02_opens_at_21_utc_instead_of_20() -> None:
    # Monday 07:00 in Sydney is Sunday 20:00 UTC under AEDT (UTC+11), 21:00 under AEST.
    assert mask_at("2017-03-26T20:30") & S == S
    assert mask_at("2017-04-02T20:30") & S == 0
    assert mask_at("2017-04-02T21:00") & S == S


def test_sydney_when_dst_starts_on_2017_10_01_opens_at_20_utc_again() -> None:
    assert mask_at("2017-09-24T20:30") & S == 0
    assert mask_at("2017-10-01T20:30") & S == S


def test_mask_when_london_and_new_york_overlap_sets_both_bits() -> None:
    # 2017-03-12..26: New York on EDT, London still on GMT: overlap 12:00-17:00 UTC.
    assert mask_at("2017-03-20T12:00") == L | N
    assert mask_at("2017-03-20T16:30") == L | N
    # After 2017-03-26 both on summer time: overlap 12:00-16:00 UTC.
    assert mask_at("2017-03-27T15:59") == L | N
    assert mask_at("2017-03-27T16:30") == N


def test_mask_when_tokyo_and_sydney_overlap_sets_both_bits() -> None:
    assert mask_at("2017-07-03T00:00") == S | T  # Monday 09:00 JST, 10:00 AEST
    assert mask_at("2017-07-03T06:00") == T  # Sydney closed at 16:00 AEST
    assert mask_at("2017-07-03T09:00") == L  # Tokyo closes at 18:00 JST


def test_mask_when_weekend_is_zero() -> None:
    assert mask_at("2017-07-01T12:00") == 0  # Saturday
    assert mask_at("2017-07-02T12:00") == 0  # Sunday
    # Friday 17:00 in New York ends the week; Sydney's Monday starts on Sunday UTC.
    assert mask_at("2017-07-07T21:00") == 0
    assert mask_at("2017-07-09T21:00") == S


def test_session_mask_when_compared_to_per_instant_zoneinfo_matches_every_half_hour() -> None:
    times = np.arange(utc("2016-12-25T00:00"), utc("2018-01-08T00:00"), 1_800_000)
    mask = session_mask(times)
    for spec in SESSIONS:
        expected = np.array([ref_open(spec, int(t)) for t in times])
        assert np.array_equal((mask & spec.flag) != 0, expected), spec.name


def test_session_mask_when_compared_to_zoneinfo_at_random_instants_over_decades_matches() -> None:
    rng = np.random.default_rng(0)
    times = rng.integers(utc("1995-01-01T00:00"), utc("2045-01-01T00:00"), 4000)
    mask = session_mask(times)
    for spec in SESSIONS:
        expected = np.array([ref_open(spec, int(t)) for t in times])
        assert np.array_equal((mask & spec.flag) != 0, expected), spec.name
        assert np.array_equal(session_open(spec, times), expected), spec.name


def test_session_open_when_at_the_exact_opening_instant_is_open_and_at_closing_closed() -> None:
    opening = utc("2017-03-27T07:00")  # 08:00 BST
    closing = utc("2017-03-27T16:00")  # 17:00 BST
    times = np.array([opening - 1, opening, closing - 1, closing])
    assert session_open(LONDON, times).tolist() == [False, True, True, False]
    assert ((session_mask(times) & L) != 0).tolist() == [False, True, True, False]


def test_session_mask_when_times_span_new_year_matches_reference() -> None:
    times = np.arange(utc("2016-12-28T00:00"), utc("2017-01-06T00:00"), 900_000)
    mask = session_mask(times)
    for spec in SESSIONS:
        expected = np.array([ref_open(spec, int(t)) for t in times])
        assert np.array_equal((mask & spec.flag) != 0, expected), spec.name


def test_session_open_when_given_2d_times_keeps_shape() -> None:
    times = np.full((2, 3), utc("2017-03-20T12:00"))
    assert session_open(LONDON, times).shape == (2, 3)
    assert session_mask(times).dtype == np.uint32


def test_session_mask_when_empty_returns_empty() -> None:
    assert session_mask(np.zeros(0, np.int64)).shape == (0,)

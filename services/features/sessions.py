"""Forex trading sessions from UTC time, with each city's daylight saving time.

A session is open on a local weekday (Monday to Friday in the city's own calendar) from
its local opening hour, included, to its local closing hour, excluded:

========  ==================  ============  ====
session   time zone           local hours   flag
========  ==================  ============  ====
Sydney    Australia/Sydney    07:00-16:00   1
Tokyo     Asia/Tokyo          09:00-18:00   2
London    Europe/London       08:00-17:00   4
New York  America/New_York    08:00-17:00   8
========  ==================  ============  ====

The flags are the ``quantmesh.features.v1.Session`` enum; a mask is their OR, so overlaps
(London and New York, Sydney and Tokyo) set several bits and a weekend sets none. Local
holidays are not modelled.

Vectorized with :mod:`zoneinfo`: once per calendar year, every opening and closing of
every session is converted from local to UTC time (so daylight saving, whatever a zone's
rules, is zoneinfo's business) and merged into one sorted table of instants with the
mask in force after each. A batch of instants then costs one ``searchsorted`` and one
gather, with no per-instant Python call. Tables are cached per range of years.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import ArrayLike

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class SessionSpec:
    """One trading session: its flag, time zone and local opening hours ``[open, close)``."""

    name: str
    key: str  # lower snake case, names the feature column ``session_<key>``
    flag: int
    zone: str
    open_hour: int
    close_hour: int

    @property
    def column(self) -> str:
        """Name of the session's feature column."""
        return f"session_{self.key}"

    def describe(self) -> str:
        """One line for people, e.g. for ``FeatureSpec.description``."""
        return (
            f"1 if {self.name} is open at the row time: {self.open_hour:02d}:00-"
            f"{self.close_hour:02d}:00 {self.zone} local time (daylight saving included), "
            f"Monday to Friday local; else 0."
        )


SYDNEY = SessionSpec("Sydney", "sydney", 1, "Australia/Sydney", 7, 16)
TOKYO = SessionSpec("Tokyo", "tokyo", 2, "Asia/Tokyo", 9, 18)
LONDON = SessionSpec("London", "london", 4, "Europe/London", 8, 17)
NEW_YORK = SessionSpec("New York", "new_york", 8, "America/New_York", 8, 17)
SESSIONS: tuple[SessionSpec, ...] = (SYDNEY, TOKYO, LONDON, NEW_YORK)


def session_mask(time_ms: ArrayLike) -> np.ndarray:
    """Bitwise OR of the flags of the sessions open at each instant.

    Parameters
    ----------
    time_ms:
        int64 UTC epoch ms, any shape.

    Returns
    -------
    numpy.ndarray
        uint32 masks (Sydney 1, Tokyo 2, London 4, New York 8), the shape of ``time_ms``.
    """
    t = np.asarray(time_ms, dtype=np.int64)
    starts, masks = _mask_table(*_years(t))
    # Each instant takes the mask set by the last opening or closing at or before it.
    result: np.ndarray = masks[np.searchsorted(starts, t, side="right") - 1]
    return result


def session_open(spec: SessionSpec, time_ms: ArrayLike) -> np.ndarray:
    """Whether session ``spec`` is open at each instant (bool array, shape of ``time_ms``)."""
    t = np.asarray(time_ms, dtype=np.int64)
    edges = _session_edges(spec, *_years(t))
    # Edges alternate opening, closing: an odd count at or before t means open.
    result: np.ndarray = np.searchsorted(edges, t, side="right") % 2 == 1
    return result


def _years(t: np.ndarray) -> tuple[int, int]:
    """First and last calendar year (UTC) of the instants ``t``; (1970, 1970) when empty."""
    if t.size == 0:
        return 1970, 1970
    return _year_of(int(t.min())), _year_of(int(t.max()))


def _year_of(time_ms: int) -> int:
    at = bisect_right(_YEAR_STARTS, time_ms)
    if 0 < at < len(_YEAR_STARTS):  # the common case, without building a datetime
        return _FIRST_YEAR + at - 1
    try:
        return (_EPOCH + timedelta(milliseconds=time_ms)).year
    except OverflowError:
        raise ValueError(f"time {time_ms} ms is outside the years 1..9999") from None


def _utc_ms(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)


_FIRST_YEAR = 1900
_YEAR_STARTS = tuple(_utc_ms(datetime(y, 1, 1, tzinfo=UTC)) for y in range(_FIRST_YEAR, 2201))


@lru_cache(maxsize=256)
def _year_edges(spec: SessionSpec, year: int) -> tuple[int, ...]:
    """UTC ms of each opening and closing of ``spec`` on the local weekdays of ``year``."""
    zone = ZoneInfo(spec.zone)
    day = date(year, 1, 1)
    edges: list[int] = []
    while day.year == year:
        if day.weekday() < 5:
            for hour in (spec.open_hour, spec.close_hour):
                local = datetime(day.year, day.month, day.day, hour, tzinfo=zone)
                edges.append(_utc_ms(local))
        day += timedelta(days=1)
    return tuple(edges)


@lru_cache(maxsize=256)
def _session_edges(spec: SessionSpec, first_year: int, last_year: int) -> np.ndarray:
    """Sorted openings and closings of ``spec`` around ``first_year..last_year`` (UTC)."""
    # A year either side: local years start up to a day away from UTC years.
    years = range(first_year - 1, last_year + 2)
    edges = np.array([edge for y in years for edge in _year_edges(spec, y)], np.int64)
    edges.flags.writeable = False
    return edges


@lru_cache(maxsize=256)
def _mask_table(first_year: int, last_year: int) -> tuple[np.ndarray, np.ndarray]:
    """Instants at which the mask changes, and the mask from each, over the years given.

    The events of the year before and after are included, so every session open during
    ``first_year..last_year`` (UTC) is counted from its opening; before the first event
    the mask is 0, which is only wrong for instants never looked up.
    """
    times: list[np.ndarray] = []
    deltas: list[np.ndarray] = []
    for spec in SESSIONS:
        edges = _session_edges(spec, first_year, last_year)
        times.append(edges)
        # Openings add the flag, closings remove it (a session never overlaps itself).
        sign = np.where(np.arange(len(edges)) % 2 == 0, 1, -1)
        deltas.append(sign * spec.flag)
    t = np.concatenate(times)
    order = np.argsort(t, kind="stable")
    starts = np.concatenate(([np.iinfo(np.int64).min], t[order]))
    masks = np.concatenate(([0], np.cumsum(np.concatenate(deltas)[order]))).astype(np.uint32)
    starts.flags.writeable = False
    masks.flags.writeable = False
    return starts, masks

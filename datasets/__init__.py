"""Data sets shipped with quantmesh, and their loaders (provenance in README.md here)."""

from __future__ import annotations

from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from quantmesh.services.marketdata.sources import Bars

__all__ = ["EURUSD_H1_2017", "load_h1_bars"]

# Installed wheels are unpacked on disk, so the package resource is a real file path.
EURUSD_H1_2017: Path = Path(str(files(__name__).joinpath("eurusd_h1_2017_ask.csv")))

_HEADER = "Time,Open,High,Low,Close,Volume"
_TIME_FORMAT = "DD.MM.YYYY HH:MM:SS.mmm"
_TIME_LAYOUT = "DD.MM.YYYY hh:nn:ss.fff"  # the same, with one letter per field
_DIGIT_COLUMNS = [i for i, ch in enumerate(_TIME_LAYOUT) if ch.isalpha()]
_SEPARATOR_COLUMNS = [i for i, ch in enumerate(_TIME_LAYOUT) if not ch.isalpha()]
_SEPARATORS = np.array([ord(_TIME_LAYOUT[i]) for i in _SEPARATOR_COLUMNS], np.uint32)

_Fail = Callable[[ArrayLike, str], None]  # raises for the first flagged row


def load_h1_bars(path: Path | None = None, digits: int = 5) -> Bars:
    """Read an H1 bar CSV (``Time,Open,High,Low,Close,Volume``) into integer-point Bars.

    Parameters
    ----------
    path:
        The CSV file. By default, the shipped EUR/USD 2017 ask bars
        (:data:`EURUSD_H1_2017`).
    digits:
        Price decimals. Each price becomes ``round(price * 10**digits)`` points.

    Returns
    -------
    Bars
        ``time_ms`` is each bar's open in UTC epoch ms, read from
        ``DD.MM.YYYY HH:MM:SS.mmm`` UTC.

    Raises
    ------
    ValueError
        With the file and line, for a malformed row or time, an impossible date, a
        non-finite or negative number, a price of 0 points, a high below the open or
        close, a low above them, or a time that does not increase.
    """
    if not 0 <= digits <= 9:
        raise ValueError(f"digits must be 0..9, got {digits}")
    path = EURUSD_H1_2017 if path is None else Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines or lines[0].strip().lstrip("\ufeff") != _HEADER:
        raise ValueError(f"{path}:1: expected the header {_HEADER!r}")
    rows = lines[1:]
    if not rows:
        raise ValueError(f"{path}: no bars after the header")

    def fail(mask: ArrayLike, what: str) -> None:
        flagged = np.flatnonzero(mask)
        if len(flagged):
            bad = int(flagged[0])
            raise ValueError(f"{path}:{bad + 2}: {what} in row {rows[bad]!r}")

    fail([line.count(",") != 5 for line in rows], "expected 6 comma-separated fields")
    time_ms = _parse_times([line[: line.index(",")].strip() for line in rows], fail)
    try:
        # One call into numpy's C reader; its rows stay aligned with ours for error lines.
        numbers = np.loadtxt(rows, delimiter=",", usecols=(1, 2, 3, 4, 5), comments=None, ndmin=2)
    except ValueError:
        fail([not _is_numeric_row(line) for line in rows], "malformed number")
        raise
    fail(~np.isfinite(numbers).all(axis=1) | (numbers < 0).any(axis=1), "bad number")
    points = np.rint(numbers[:, :4] * 10.0**digits).astype(np.int64)
    o, h, lo, c = (np.ascontiguousarray(points[:, i]) for i in range(4))
    fail(points.min(axis=1) <= 0, f"a price that rounds to 0 points at {digits} digits")
    fail(h < np.maximum(o, c), "high below max(open, close)")
    fail(lo > np.minimum(o, c), "low above min(open, close)")
    fail(np.concatenate(([False], np.diff(time_ms) <= 0)), "time not after the previous row's")
    return Bars(
        time_ms=time_ms,
        open=o,
        high=h,
        low=lo,
        close=c,
        tick_volume=np.ascontiguousarray(numbers[:, 4]),
    )


def _parse_times(texts: list[str], fail: _Fail) -> np.ndarray:
    """Parse ``DD.MM.YYYY HH:MM:SS.mmm`` (UTC) into epoch ms, vectorised over code points."""
    width = len(_TIME_LAYOUT)
    # One spare column: a longer text is cut to width + 1 and caught by its last column.
    codes = np.array(texts, dtype=f"U{width + 1}").view(np.uint32).reshape(len(texts), -1)
    digits = codes[:, _DIGIT_COLUMNS].astype(np.int64) - ord("0")
    fail(
        (codes[:, width] != 0)
        | (codes[:, _SEPARATOR_COLUMNS] != _SEPARATORS).any(axis=1)
        | ((digits < 0) | (digits > 9)).any(axis=1),
        f"time not in the form {_TIME_FORMAT}",
    )

    def field(letter: str) -> np.ndarray:
        at = [k for k, i in enumerate(_DIGIT_COLUMNS) if _TIME_LAYOUT[i] == letter]
        return digits[:, at] @ (10 ** np.arange(len(at) - 1, -1, -1))

    day, month, year = field("D"), field("M"), field("Y")
    hour, minute, second, milli = field("h"), field("n"), field("s"), field("f")
    months = (year - 1970) * 12 + (month - 1)
    first_day = months.astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)
    next_first = (months + 1).astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)
    fail(
        (month < 1) | (month > 12) | (day < 1) | (day > next_first - first_day),
        "impossible date",
    )
    fail((hour > 23) | (minute > 59) | (second > 59), "impossible time of day")
    days = first_day + day - 1
    time_ms: np.ndarray = (
        days * 86_400_000 + hour * 3_600_000 + minute * 60_000 + second * 1_000 + milli
    )
    return time_ms


def _is_numeric_row(line: str) -> bool:
    try:
        [float(field) for field in line.split(",")[1:]]
    except ValueError:
        return False
    return True

"""The shipped data set and its loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quantmesh.datasets import EURUSD_H1_2017, load_h1_bars

HEADER = "Time,Open,High,Low,Close,Volume"
GOOD_ROWS = [
    "01.01.2017 22:00:00.000,1.05236,1.05253,1.05221,1.05227,143539993.3",
    "01.01.2017 23:00:00.000,1.05227,1.05426,1.05226,1.05282,253139999.4",
    "02.01.2017 00:00:00.000,1.05283,1.05283,1.05268,1.05281,131399993.9",
]


def write_csv(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "bars.csv"
    path.write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    return path


def test_dataset_when_shipped_sits_next_to_its_license_and_provenance() -> None:
    folder = EURUSD_H1_2017.parent
    assert EURUSD_H1_2017.is_file()
    assert "MIT License" in (folder / "LICENSE-gym-anytrading.txt").read_text(encoding="utf-8")
    assert "gym-anytrading" in (folder / "README.md").read_text(encoding="utf-8")


def test_load_when_default_returns_6225_bars_in_points_and_utc_ms() -> None:
    bars = load_h1_bars()
    assert len(bars) == 6225
    assert bars.time_ms.dtype == np.int64
    assert bars.open.dtype == bars.high.dtype == bars.low.dtype == bars.close.dtype == np.int64
    assert bars.tick_volume.dtype == np.float64
    assert bars.time_ms[0] == 1_483_308_000_000  # 2017-01-01T22:00:00Z
    assert bars.time_ms[-1] == 1_514_581_200_000  # 2017-12-29T21:00:00Z
    assert (bars.open[0], bars.high[0], bars.low[0], bars.close[0]) == (
        105236,
        105253,
        105221,
        105227,
    )
    assert bars.tick_volume[0] == pytest.approx(143539993.3)


def test_load_when_volume_written_with_exponent_parses_it() -> None:
    bars = load_h1_bars()
    at = int(np.searchsorted(bars.time_ms, 1_506_081_600_000))  # 22.09.2017 12:00 UTC
    assert bars.tick_volume[at] == pytest.approx(1.00532e11)


def test_load_when_shipped_data_every_bar_respects_ohlc_and_time_order() -> None:
    bars = load_h1_bars()
    assert np.all(bars.high >= np.maximum(bars.open, bars.close))
    assert np.all(bars.low <= np.minimum(bars.open, bars.close))
    assert np.all(np.diff(bars.time_ms) > 0)
    assert np.all(bars.time_ms % 3_600_000 == 0)


def test_load_when_digits_3_rounds_prices_to_three_decimals(tmp_path: Path) -> None:
    bars = load_h1_bars(write_csv(tmp_path, GOOD_ROWS), digits=3)
    assert list(bars.open) == [1052, 1052, 1053]


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ("01.01.2017 23:00:00,1.05227,1.05426,1.05226,1.05282,1.0", "time not in the form"),
        ("2017-01-01 23:00:00.000,1.05227,1.05426,1.05226,1.05282,1.0", "time not in the form"),
        ("01.01.2017 23:00:00.000,1.05227,1.05426,1.05226,1.05282", "6 comma-separated"),
        ("01.01.2017 23:00:00.000,1.05227,1.05426,1.05226,1.05282,1,2", "6 comma-separated"),
        ("01.01.2017 23:00:00.000,1.05227,abc,1.05226,1.05282,1.0", "malformed number"),
        ("01.01.2017 23:00:00.000,1.05227,nan,1.05226,1.05282,1.0", "bad number"),
        ("01.01.2017 23:00:00.000,1.05227,1.05426,1.05226,1.05282,-5", "bad number"),
        ("31.02.2017 23:00:00.000,1.05227,1.05426,1.05226,1.05282,1.0", "impossible date"),
        ("01.13.2017 23:00:00.000,1.05227,1.05426,1.05226,1.05282,1.0", "impossible date"),
        ("01.01.2017 24:00:00.000,1.05227,1.05426,1.05226,1.05282,1.0", "impossible time"),
        ("01.01.2017 23:00:00.000,1.05227,1.05200,1.05226,1.05282,1.0", "high below"),
        ("01.01.2017 23:00:00.000,1.05227,1.05426,1.05250,1.05282,1.0", "low above"),
        ("01.01.2017 21:00:00.000,1.05227,1.05426,1.05226,1.05282,1.0", "time not after"),
        ("01.01.2017 23:00:00.000,0.000001,1.05426,0.000001,1.05282,1.0", "0 points"),
        ("", "6 comma-separated"),
    ],
)
def test_load_when_row_is_bad_raises_value_error_naming_file_and_line(
    tmp_path: Path, bad_row: str, message: str
) -> None:
    rows = [GOOD_ROWS[0], bad_row, GOOD_ROWS[2]]
    path = write_csv(tmp_path, rows)
    with pytest.raises(ValueError, match=message) as error:
        load_h1_bars(path)
    assert f"{path}:3:" in str(error.value)  # line 1 is the header


def test_load_when_header_is_wrong_raises_value_error_naming_line_1(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    path.write_text("time,open,high,low,close\n" + GOOD_ROWS[0] + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{path}:1: expected the header"):
        load_h1_bars(path)


def test_load_when_file_has_no_rows_raises_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no bars"):
        load_h1_bars(write_csv(tmp_path, []))

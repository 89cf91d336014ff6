"""Run files (JSON or SQLite fills and marks) and the demo run of the report.

A **run** is what analytics consumes: an account, its fills and the price marks that
value open positions. :func:`load_run` documents the file formats; :func:`demo_run`
makes a run from the shipped EUR/USD H1 bars with a tiny deterministic strategy, so the
report has something real to show before the full pipeline produces fills.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quantmesh.services.analytics.ledger import Fill, Mark, Side

if TYPE_CHECKING:
    from quantmesh.services.marketdata.sources import Bars

__all__ = ["DEMO_MODEL", "Account", "Run", "demo_run", "load_run", "save_run"]

DEMO_MODEL = "ema-cross"
H1_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class Account:
    """The account a run traded: id, currency (ISO 4217) and balance at the start."""

    account_id: str
    currency: str
    start_balance: Decimal


@dataclass(frozen=True, slots=True)
class Run:
    """A run's fills and marks, as read by :func:`load_run`."""

    account: Account
    fills: tuple[Fill, ...]
    marks: tuple[Mark, ...]


_FILL_FIELDS = tuple(Fill.__dataclass_fields__)
_MARK_FIELDS = tuple(Mark.__dataclass_fields__)
_SQLITE_MAGIC = b"SQLite format 3\x00"
_ACCOUNT_FIELDS = ("account_id", "currency", "start_balance")
_TABLES: dict[str, tuple[tuple[str, ...], type]] = {
    "account": (_ACCOUNT_FIELDS, Account),
    "fills": (_FILL_FIELDS, Fill),
    "marks": (_MARK_FIELDS, Mark),
}
_SQL_TYPES = {"int": "INTEGER", "bool": "INTEGER"}  # the rest (str, Decimal, Side) is TEXT


def load_run(path: Path) -> Run:
    """Read a run file: JSON, or SQLite (recognised by its header).

    JSON::

        {"account": {"account_id": "paper-1", "currency": "USD", "start_balance": "10000"},
         "fills": [{"order_id": "o1", "position_id": "p1", "symbol": "EURUSD",
                    "side": "BUY", "volume_lots": "0.10", "price_points": 108123,
                    "digits": 5, "commission": "0.35", "time_ms": 1483308000000,
                    "opens": true, "model_name": "ema-cross", "model_version": "10-30",
                    "signal_id": "s1"}, ...],
         "marks": [{"symbol": "EURUSD", "time_ms": 1483308000000, "bid_points": 108111,
                    "ask_points": 108123, "digits": 5}, ...]}

    Amounts and volumes are decimal strings (an integer is accepted; a float is refused,
    being binary); ``side`` is ``BUY`` or ``SELL``; the three model fields are optional;
    unknown keys are ignored. SQLite holds the same in three tables, ``account`` (one row),
    ``fills`` and ``marks``, whose columns are the keys above (``opens`` 0/1, amounts TEXT),
    read in rowid order; :func:`save_run` writes both forms.

    Raises
    ------
    ValueError
        Naming the file and the record, for anything malformed.
    """
    path = Path(path)
    with path.open("rb") as head:
        is_sqlite = head.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    try:
        document = _read_sqlite(path) if is_sqlite else json.loads(path.read_text("utf-8"))
        if not isinstance(document, dict):
            raise TypeError("the top level must be an object")
        return _parse_run(document)
    except (TypeError, ValueError, KeyError, sqlite3.Error) as error:
        raise ValueError(f"{path}: {error}") from None


def save_run(run: Run, path: Path) -> None:
    """Write ``run`` in the format of :func:`load_run`: SQLite for ``.sqlite``/``.db``."""
    path = Path(path)
    document = {
        "account": [_record(run.account, _ACCOUNT_FIELDS)],
        "fills": [_record(f, _FILL_FIELDS) for f in run.fills],
        "marks": [_record(m, _MARK_FIELDS) for m in run.marks],
    }
    if path.suffix not in (".sqlite", ".db"):
        # One record per line: readable, diffable, and half the size of indented JSON.
        lines = [f'{{"account": {json.dumps(document["account"][0])},']
        for key, tail in (("fills", ","), ("marks", "")):
            records = ",\n  ".join(json.dumps(r) for r in document[key])
            body = f"[\n  {records}\n ]" if records else "[]"
            lines.append(f' "{key}": {body}{tail}')
        path.write_text("\n".join(lines) + "}\n", "utf-8")
        return
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    try:
        with db:  # one transaction
            for table, (columns, kind) in _TABLES.items():
                # Annotations are strings here (postponed evaluation): "int", "Decimal", …
                types = [_SQL_TYPES.get(kind.__annotations__[c], "TEXT") for c in columns]
                spec = ", ".join(f"{c} {t}" for c, t in zip(columns, types, strict=True))
                db.execute(f"CREATE TABLE {table} ({spec})")
                db.executemany(
                    f"INSERT INTO {table} VALUES ({', '.join('?' * len(columns))})",  # noqa: S608
                    [tuple(row[c] for c in columns) for row in document[table]],
                )
    finally:
        db.close()


def _record(item: Any, names: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        value = getattr(item, name)
        out[name] = (
            value.name
            if isinstance(value, Side)
            else (str(value) if isinstance(value, Decimal) else value)
        )
    return out


def _read_sqlite(path: Path) -> dict[str, Any]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        db.row_factory = sqlite3.Row
        tables = {}
        for table in ("account", "fills", "marks"):
            rows = db.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()  # noqa: S608
            tables[table] = [dict(row) for row in rows]
    finally:
        db.close()
    if len(tables["account"]) != 1:
        raise ValueError("table account must have exactly one row")
    for fill in tables["fills"]:
        fill["opens"] = bool(fill["opens"])
    return {"account": tables["account"][0], "fills": tables["fills"], "marks": tables["marks"]}


def _parse_run(document: Mapping[str, Any]) -> Run:
    account = document["account"]
    fills = [_parse_fill(f, i) for i, f in enumerate(document.get("fills", []))]
    marks = [_parse_mark(m, i) for i, m in enumerate(document.get("marks", []))]
    return Run(
        Account(
            account_id=_text(account, "account_id", "account"),
            currency=_text(account, "currency", "account"),
            start_balance=_decimal(account, "start_balance", "account"),
        ),
        tuple(fills),
        tuple(marks),
    )


def _parse_fill(record: Mapping[str, Any], index: int) -> Fill:
    where = f"fills[{index}]"
    side = _text(record, "side", where)
    if side not in ("BUY", "SELL"):
        raise ValueError(f"{where}.side must be BUY or SELL, got {side!r}")
    opens = record.get("opens")
    if not isinstance(opens, bool):
        raise ValueError(f"{where}.opens must be true or false")
    return Fill(
        order_id=_text(record, "order_id", where),
        position_id=_text(record, "position_id", where),
        symbol=_text(record, "symbol", where),
        side=Side[side],
        volume_lots=_decimal(record, "volume_lots", where),
        price_points=_int(record, "price_points", where),
        digits=_int(record, "digits", where),
        commission=_decimal(record, "commission", where),
        time_ms=_int(record, "time_ms", where),
        opens=opens,
        model_name=_text(record, "model_name", where, ""),
        model_version=_text(record, "model_version", where, ""),
        signal_id=_text(record, "signal_id", where, ""),
    )


def _parse_mark(record: Mapping[str, Any], index: int) -> Mark:
    where = f"marks[{index}]"
    return Mark(
        symbol=_text(record, "symbol", where),
        time_ms=_int(record, "time_ms", where),
        bid_points=_int(record, "bid_points", where),
        ask_points=_int(record, "ask_points", where),
        digits=_int(record, "digits", where),
    )


def _text(record: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = record.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{where}.{key} must be a string, got {value!r}")
    return value


def _int(record: Mapping[str, Any], key: str, where: str) -> int:
    value = record.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{where}.{key} must be an integer, got {value!r}")
    return value


def _decimal(record: Mapping[str, Any], key: str, where: str) -> Decimal:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"{where}.{key} must be a decimal string, got {value!r}")
    try:
        number = Decimal(value)
    except ArithmeticError:
        raise ValueError(f"{where}.{key} is not a decimal: {value!r}") from None
    if not number.is_finite():
        raise ValueError(f"{where}.{key} must be finite, got {value!r}")
    return number


def demo_run(
    bars: Bars | None = None,
    *,
    pairs: Sequence[tuple[int, int]] = ((10, 30), (20, 60)),
    volume_lots: Decimal = Decimal("0.10"),
    commission_per_lot: Decimal = Decimal("3.50"),
    spread_points: int = 12,
    start_balance: Decimal = Decimal(10_000),
) -> Run:
    """EMA crosses on H1 closes, filled at the next bar's open: a run to report on.

    Each ``(fast, slow)`` pair is one "model", ``ema-cross`` version ``"fast-slow"``,
    trading its own positions on one account. When EMA(fast) of the ask closes crosses
    EMA(slow) at bar ``i``'s close, the model reverses at bar ``i+1``'s open: it closes
    its open position (if any) and opens ``volume_lots`` the new way. The bars are ask
    bars, so a buy fills at the open and a sell at the open less ``spread_points``; each
    fill pays ``commission_per_lot`` per lot. Every bar gives one mark at its last
    millisecond (open + 1 h − 1 ms, inside the bar's hour and trading day): ask = close,
    bid = close − spread. The last position of each model stays open.

    Parameters
    ----------
    bars:
        EUR/USD H1 ask bars; by default the shipped 2017 bars.
    pairs, volume_lots, commission_per_lot, spread_points, start_balance:
        The strategy and account, as above.

    Returns
    -------
    Run
        Deterministic: the same arguments give the same fills, ids included.
    """
    from quantmesh.datasets import load_h1_bars

    bars = load_h1_bars() if bars is None else bars
    digits, symbol = 5, "EURUSD"
    close = np.asarray(bars.close, np.int64)
    marks = [
        Mark(symbol, int(t) + H1_MS - 1, int(c) - spread_points, int(c), digits)
        for t, c in zip(bars.time_ms, close, strict=True)
    ]
    fills: list[Fill] = []
    commission = commission_per_lot * volume_lots
    for fast, slow in pairs:
        version = f"{fast}-{slow}"
        fast_ema, slow_ema = _ema(close, fast), _ema(close, slow)  # NaN while warming up
        up = fast_ema > slow_ema
        ready = ~np.isnan(slow_ema)
        crosses = np.flatnonzero(ready[1:] & ready[:-1] & (up[1:] != up[:-1])) + 1
        for n, i in enumerate(int(c) for c in crosses if c + 1 < len(close)):
            side = Side.BUY if up[i] else Side.SELL
            points = int(bars.open[i + 1]) - (0 if side is Side.BUY else spread_points)
            at, meta = int(bars.time_ms[i + 1]), (DEMO_MODEL, version, f"{version}-bar{i}")
            if n > 0:  # reverse: close the previous position first
                fills.append(
                    Fill(f"{version}-{n - 1}-close", f"{version}-{n - 1}", symbol, side,
                         volume_lots, points, digits, commission, at, False, *meta)
                )  # fmt: skip
            fills.append(
                Fill(f"{version}-{n}-open", f"{version}-{n}", symbol, side,
                     volume_lots, points, digits, commission, at, True, *meta)
            )  # fmt: skip
    fills.sort(key=lambda f: f.time_ms)  # stable: each model's exit stays before its entry
    return Run(Account("demo", "USD", start_balance), tuple(fills), tuple(marks))


def _ema(x: np.ndarray, period: int) -> np.ndarray:
    """EMA seeded with the mean of the first ``period`` values, NaN before; as
    ``quantmesh.services.features.indicators.ema``, whose scipy import costs a second."""
    out = np.full(len(x), np.nan)
    if len(x) < period:
        return out
    alpha, value = 2.0 / (period + 1), float(np.mean(x[:period]))
    out[period - 1] = value
    for k in range(period, len(x)):
        value += alpha * (float(x[k]) - value)
        out[k] = value
    return out

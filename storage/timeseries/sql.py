"""The timeseries port's SQL, one text per statement, and the logic both adapters share.

chDB is ClickHouse embedded, so the embedded adapter and the server adapter run the very
same statements; they differ only in how a statement reaches the engine (a chDB session
in this process, or clickhouse-connect over HTTP) and in how a block of rows is shipped
(:class:`SqlTimeseries`'s three transport hooks). Query parameters use ClickHouse's own
``{name:Type}`` placeholders, which both bind on the engine's side.

Schema:

- ``ticks``: a MergeTree ordered by ``(symbol, time_msc, seq)``, so a bar rollup reads
  one symbol's time range and nothing else. Integer columns are delta-coded (times, seqs
  and prices move in small steps). The projection ``seq_by_stream`` keeps each part's
  row count and largest seq per stream, so :meth:`SqlTimeseries.last_seq` reads a few
  rows per part instead of scanning the table; it lives inside each part, so it is
  committed with the rows it counts.
- ``predictions``: a ReplacingMergeTree ordered by ``(symbol, time_msc, model,
  version)``: a prediction written again replaces the stored one, and the accuracy query
  reads it ``FINAL``, so a replayed batch never counts twice. Rows written from a
  stream carry its name and their ``seq`` (``''`` and 0 otherwise), the stream's
  cursor, written as the ticks' are (below). Those two columns came after the table:
  :data:`UPGRADE_PREDICTIONS` adds them to a store created before, in place (existing
  rows read as written by no stream), and is a no-op on any other. No projection keeps
  the cursor, as ``seq_by_stream`` does for ticks (ClickHouse refuses projections on a
  ReplacingMergeTree unless told how merges treat them): a model predicts once a bar,
  so the stream and seq columns it scans are small.

Why no ReplacingMergeTree for ticks: measured here, its merges halved the ingest rate,
and it removes duplicates only eventually (a query would need ``FINAL``). The ticks are
deduplicated before they are written instead: the stored seqs are the cursor, and an
insert skips the rows at or below the stream's largest stored seq. An insert goes in
chunks of at most :data:`INSERT_CHUNK_ROWS` rows, in seq order; each chunk fits in one
insert block without partitions, so ClickHouse commits it as one part, atomically, and
a crash leaves a prefix of the rows stored, never a hole. Each chunk carries an
``insert_deduplication_token`` naming its stream and seq range, and the table keeps the
last :data:`DEDUPLICATION_WINDOW` tokens: a retry racing an insert whose reply was lost
(it read the cursor before the first attempt committed) is dropped by the server.
Predictions from a stream go in the same way, with the same guarantees.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from quantmesh.storage.timeseries.port import (
    AccuracyRow,
    Bars,
    PredictionRows,
    SeqGapError,
    StoredPredictions,
    StoredTicks,
    TickRows,
)

__all__ = [
    "ACCURACY_BY_MODEL_VERSION",
    "CREATE_PREDICTIONS",
    "CREATE_TICKS",
    "INSERT_CHUNK_ROWS",
    "LAST_PREDICTION_SEQ",
    "LAST_SEQ",
    "OHLC",
    "PREDICTION_COLUMNS",
    "READ_PREDICTIONS",
    "READ_TICKS",
    "TICK_COLUMNS",
    "UPGRADE_PREDICTIONS",
    "SqlTimeseries",
    "prediction_table",
    "tick_table",
]

T = TypeVar("T")
_StreamRowsT = TypeVar("_StreamRowsT", TickRows, PredictionRows)  # rows of a numbered stream

# Below ClickHouse's min_insert_block_size_rows (1,048,449): one chunk, one part.
INSERT_CHUNK_ROWS = 1_000_000
DEDUPLICATION_WINDOW = 1_000

TICK_COLUMNS = ("stream", "seq", "symbol", "time_msc", "bid", "ask", "volume")
PREDICTION_COLUMNS = (
    "stream",
    "seq",
    "model",
    "version",
    "symbol",
    "time_msc",
    "probability_up",
    "predicted_class",
    "feature_digest",
)

CREATE_TICKS = f"""
CREATE TABLE IF NOT EXISTS ticks
(
    stream LowCardinality(String),
    seq UInt64 CODEC(Delta, LZ4),
    symbol LowCardinality(String),
    time_msc Int64 CODEC(Delta, LZ4),
    bid Int64 CODEC(Delta, LZ4),
    ask Int64 CODEC(Delta, LZ4),
    volume Float64,
    PROJECTION seq_by_stream (SELECT stream, count(), max(seq) GROUP BY stream)
)
ENGINE = MergeTree
PRIMARY KEY (symbol, time_msc)
ORDER BY (symbol, time_msc, seq)
SETTINGS non_replicated_deduplication_window = {DEDUPLICATION_WINDOW}
"""

# The stream and seq columns come last, as UPGRADE_PREDICTIONS adds them to an older table.
CREATE_PREDICTIONS = f"""
CREATE TABLE IF NOT EXISTS predictions
(
    model LowCardinality(String),
    version UInt32,
    symbol LowCardinality(String),
    time_msc Int64,
    probability_up Float64,
    predicted_class UInt8,
    feature_digest UInt64,
    stream LowCardinality(String) DEFAULT '',
    seq UInt64 DEFAULT 0 CODEC(Delta, LZ4)
)
ENGINE = ReplacingMergeTree
ORDER BY (symbol, time_msc, model, version)
SETTINGS non_replicated_deduplication_window = {DEDUPLICATION_WINDOW}
"""

# A predictions table created before predictions had a stream cursor gets its columns
# and the token window here; on a current table both statements change nothing.
UPGRADE_PREDICTIONS = (
    """
ALTER TABLE predictions
    ADD COLUMN IF NOT EXISTS stream LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS seq UInt64 DEFAULT 0 CODEC(Delta, LZ4)
""",
    f"ALTER TABLE predictions MODIFY SETTING non_replicated_deduplication_window = "
    f"{DEDUPLICATION_WINDOW}",
)

SCHEMA = (CREATE_TICKS, CREATE_PREDICTIONS, *UPGRADE_PREDICTIONS)

# count() tells an empty stream from one whose largest seq is 0; both come from the
# projection.
LAST_SEQ = "SELECT count() AS ticks, max(seq) AS last FROM ticks WHERE stream = {stream:String}"

LAST_PREDICTION_SEQ = """
SELECT count() AS predictions, max(seq) AS last FROM predictions WHERE stream = {stream:String}
"""

READ_PREDICTIONS = """
SELECT seq, model, version, symbol, time_msc, probability_up, predicted_class, feature_digest
FROM predictions
WHERE stream = {stream:String} AND seq >= {from_seq:UInt64}
ORDER BY seq
LIMIT {limit:UInt64}
"""

READ_TICKS = """
SELECT seq, symbol, time_msc, bid, ask, volume
FROM ticks
WHERE stream = {stream:String} AND seq >= {from_seq:UInt64}
ORDER BY seq
LIMIT {limit:UInt64}
"""

# Open and close are the first and last tick by (time, seq): ties in a millisecond are
# broken by the stream's order. One UInt128 key compares about 6x faster than a tuple.
OHLC = """
SELECT
    intDiv(time_msc, {timeframe_ms:Int64}) * {timeframe_ms:Int64} AS time_ms,
    argMin(bid, bitShiftLeft(toUInt128(time_msc), 64) + seq) AS open,
    max(bid) AS high,
    min(bid) AS low,
    argMax(bid, bitShiftLeft(toUInt128(time_msc), 64) + seq) AS close,
    toInt64(count()) AS ticks,
    sum(volume) AS volume
FROM ticks
WHERE symbol = {symbol:String} AND time_msc >= {from_ms:Int64} AND time_msc < {to_ms:Int64}
GROUP BY time_ms
ORDER BY time_ms
"""

# Each prediction made at t meets two prices, by ASOF joins on the symbol's ticks (the
# last tick of each millisecond, by seq): the last at or before t (known when it was
# made) and the last at or before t + horizon. It is scored only if that second tick is
# after t, the stored ticks reach t + horizon, and the mid price moved; its direction
# is right when UP (3) met a rise or DOWN (1) a fall. Mid prices are compared doubled
# (bid + ask), in integer points. Rows of class UNSPECIFIED (0) are no prediction.
ACCURACY_BY_MODEL_VERSION = """
SELECT
    model,
    version,
    intDiv(made_ms, {bucket_ms:Int64}) * {bucket_ms:Int64} AS bucket_ms,
    toInt64(count()) AS predictions,
    toInt64(countIf(is_scored)) AS scored,
    toInt64(countIf(is_scored AND is_correct)) AS correct
FROM
(
    SELECT
        p.model AS model,
        p.version AS version,
        p.time_msc AS made_ms,
        p.predicted_class IN (1, 3)
            AND known.mid2 IS NOT NULL
            AND outcome.time_msc > p.time_msc
            AND p.horizon_end <= (SELECT max(time_msc) FROM ticks WHERE symbol = {symbol:String})
            AND outcome.mid2 != known.mid2 AS is_scored,
        (p.predicted_class = 3) = (outcome.mid2 > known.mid2) AS is_correct
    FROM
    (
        SELECT model, version, symbol, time_msc, predicted_class,
               time_msc + {horizon_ms:Int64} AS horizon_end
        FROM predictions FINAL
        WHERE symbol = {symbol:String} AND predicted_class != 0
    ) AS p
    ASOF LEFT JOIN
    (
        SELECT symbol, time_msc, argMax(bid + ask, seq) AS mid2
        FROM ticks WHERE symbol = {symbol:String}
        GROUP BY symbol, time_msc
    ) AS known ON p.symbol = known.symbol AND p.time_msc >= known.time_msc
    ASOF LEFT JOIN
    (
        SELECT symbol, time_msc, argMax(bid + ask, seq) AS mid2
        FROM ticks WHERE symbol = {symbol:String}
        GROUP BY symbol, time_msc
    ) AS outcome ON p.symbol = outcome.symbol AND p.horizon_end >= outcome.time_msc
)
GROUP BY model, version, bucket_ms
ORDER BY model, version, bucket_ms
SETTINGS join_use_nulls = 1
"""


def _dictionary_column(index: np.ndarray, names: tuple[str, ...]) -> pa.DictionaryArray:
    # Arrow dictionaries become LowCardinality(String) without a string per row. The
    # engine wants distinct dictionary values (model names repeat across versions).
    if len(set(names)) != len(names):
        distinct, position = np.unique(np.asarray(names, dtype=str), return_inverse=True)
        names, index = tuple(str(name) for name in distinct), position[index]
    return pa.DictionaryArray.from_arrays(pa.array(index.astype(np.int32)), pa.array(names))


def tick_table(stream: str, first_seq: int, rows: TickRows) -> pa.Table:
    """``rows`` as an Arrow table of :data:`TICK_COLUMNS`, zero-copy where numpy allows."""
    count = len(rows)
    return pa.table(
        {
            "stream": _dictionary_column(np.zeros(count, dtype=np.int32), (stream,)),
            "seq": pa.array(np.arange(first_seq, first_seq + count, dtype=np.uint64)),
            "symbol": _dictionary_column(rows.symbol_index, rows.symbols),
            "time_msc": pa.array(rows.time_msc.astype(np.int64, copy=False)),
            "bid": pa.array(rows.bid.astype(np.int64, copy=False)),
            "ask": pa.array(rows.ask.astype(np.int64, copy=False)),
            "volume": pa.array(rows.volume.astype(np.float64, copy=False)),
        }
    )


def prediction_table(rows: PredictionRows, stream: str = "", first_seq: int = 0) -> pa.Table:
    """``rows`` as an Arrow table of :data:`PREDICTION_COLUMNS`, seqs from ``first_seq``.

    Rows of no stream have stream ``''`` and seq 0 (``first_seq`` is then ignored).
    """
    count = len(rows)
    versions = np.asarray(rows.versions, dtype=np.uint32)
    seq = np.arange(first_seq, first_seq + count, dtype=np.uint64) if stream else None
    return pa.table(
        {
            "stream": _dictionary_column(np.zeros(count, dtype=np.int32), (stream,)),
            "seq": pa.array(np.zeros(count, dtype=np.uint64) if seq is None else seq),
            "model": _dictionary_column(rows.model_index, rows.models),
            "version": pa.array(versions[rows.model_index]),
            "symbol": _dictionary_column(rows.symbol_index, rows.symbols),
            "time_msc": pa.array(rows.time_msc.astype(np.int64, copy=False)),
            "probability_up": pa.array(rows.probability_up.astype(np.float64, copy=False)),
            "predicted_class": pa.array(rows.predicted_class.astype(np.uint8, copy=False)),
            "feature_digest": pa.array(rows.feature_digest.astype(np.uint64, copy=False)),
        }
    )


def _column(table: pa.Table, name: str, dtype: type[np.generic]) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(), dtype=dtype)


def _text(value: Any) -> str:
    # clickhouse-connect returns String columns as bytes unless asked otherwise.
    return value.decode() if isinstance(value, bytes) else str(value)


def _stored_already(what: str, stream: str, first_seq: int, count: int, last: int | None) -> int:
    """How many of ``count`` rows from ``first_seq`` the stream holds already (its prefix).

    Raises :class:`SeqGapError` when they start past ``last + 1``.
    """
    if last is not None and first_seq > last + 1:
        raise SeqGapError(
            f"stream {stream!r} holds seqs up to {last}; {what} from seq {first_seq} "
            f"would leave {first_seq - last - 1} seqs missing"
        )
    return 0 if last is None else min(count, last + 1 - first_seq)


def _cursor(table: pa.Table, count_column: str) -> int | None:
    if int(table.column(count_column)[0].as_py()) == 0:
        return None
    return int(table.column("last")[0].as_py())


def _stream_name(stream: str) -> None:
    if not stream:
        raise ValueError("a stream needs a name (the empty one marks rows of no stream)")


def _positive(name: str, value: int) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be a positive number of milliseconds, got {value}")


class SqlTimeseries(ABC):
    """The port over ClickHouse SQL; an adapter supplies the transport.

    Every public operation runs through :meth:`_run`, which the server adapter overrides
    to retry it with backoff; an operation is safe to run again from the start (reads,
    or writes that skip or replace what is stored).
    """

    url: str

    def __init__(self, url: str) -> None:
        self.url = url

    # Transport hooks.

    @abstractmethod
    def _command(self, sql: str) -> None:
        """Run a statement that returns nothing (DDL)."""

    @abstractmethod
    def _query(self, sql: str, params: Mapping[str, Any]) -> pa.Table:
        """Run a query with ``{name:Type}`` parameters; its result as an Arrow table."""

    @abstractmethod
    def _insert(self, table: str, rows: pa.Table, dedup_token: str | None) -> None:
        """Insert ``rows`` (columns named as the table's) into ``table`` as one statement."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection or the embedded database."""

    def _run(self, what: str, operation: Callable[[], T]) -> T:
        return operation()

    # The port.

    def create_schema(self) -> None:
        for statement in SCHEMA:
            self._run("create the schema", partial(self._command, statement))

    def last_seq(self, stream: str) -> int | None:
        return self._run("read the stream cursor", lambda: self._last_seq(stream))

    def _last_seq(self, stream: str) -> int | None:
        return _cursor(self._query(LAST_SEQ, {"stream": stream}), "ticks")

    def insert_ticks(self, stream: str, first_seq: int, rows: TickRows) -> int:
        return self._insert_stream("ticks", stream, first_seq, rows, self._last_seq, tick_table)

    def _insert_stream(
        self,
        table: str,
        stream: str,
        first_seq: int,
        rows: _StreamRowsT,
        last_seq: Callable[[str], int | None],
        to_table: Callable[[str, int, _StreamRowsT], pa.Table],
    ) -> int:
        """Insert a stream's rows from ``first_seq`` in chunks, each retried on its own;
        rows the stream holds already are skipped, and a gap is refused."""
        if first_seq < 0:
            raise ValueError(f"first_seq must be 0 or more, got {first_seq}")

        def insert_new(first: int, chunk: _StreamRowsT) -> int:
            skip = _stored_already(table, stream, first, len(chunk), last_seq(stream))
            fresh = chunk.rows(skip, len(chunk))
            if len(fresh) == 0:
                return 0
            start = first + skip
            token = f"{stream}:{start}:{start + len(fresh) - 1}"
            self._insert(table, to_table(stream, start, fresh), token)
            return len(fresh)

        written = 0
        for start in range(0, len(rows), INSERT_CHUNK_ROWS):
            chunk = rows.rows(start, min(len(rows), start + INSERT_CHUNK_ROWS))
            written += self._run(f"insert {table}", partial(insert_new, first_seq + start, chunk))
        return written

    def read_ticks(self, stream: str, from_seq: int = 0, limit: int = 1_000_000) -> StoredTicks:
        if from_seq < 0 or limit < 0:
            raise ValueError(f"from_seq and limit must be 0 or more, got {from_seq}, {limit}")
        params = {"stream": stream, "from_seq": from_seq, "limit": limit}
        table = self._run("read ticks", lambda: self._query(READ_TICKS, params))
        symbol = [_text(name) for name in table.column("symbol").to_pylist()]
        rows = TickRows.of(
            symbol,
            _column(table, "time_msc", np.int64),
            _column(table, "bid", np.int64),
            _column(table, "ask", np.int64),
            _column(table, "volume", np.float64),
        )
        return StoredTicks(_column(table, "seq", np.uint64), rows)

    def ohlc(self, symbol: str, timeframe_ms: int, from_ms: int, to_ms: int) -> Bars:
        _positive("timeframe_ms", timeframe_ms)
        params = {
            "symbol": symbol,
            "timeframe_ms": timeframe_ms,
            "from_ms": from_ms,
            "to_ms": to_ms,
        }
        table = self._run("roll up bars", lambda: self._query(OHLC, params))
        return Bars(
            time_ms=_column(table, "time_ms", np.int64),
            open=_column(table, "open", np.int64),
            high=_column(table, "high", np.int64),
            low=_column(table, "low", np.int64),
            close=_column(table, "close", np.int64),
            ticks=_column(table, "ticks", np.int64),
            volume=_column(table, "volume", np.float64),
        )

    def insert_predictions(
        self, rows: PredictionRows, stream: str | None = None, first_seq: int = 0
    ) -> int:
        if stream is None:
            if len(rows) == 0:
                return 0
            table = prediction_table(rows)
            # The table drops a block it has seen (by its token, else by its data):
            # without a token, rows written again after others replaced them would be
            # dropped as a repeat. A token of this call's own lets them in, and still
            # drops a retry of this very call whose first attempt did commit.
            token = f"predictions:{uuid.uuid4().hex}"
            self._run("insert predictions", lambda: self._insert("predictions", table, token))
            return len(rows)
        _stream_name(stream)
        return self._insert_stream(
            "predictions",
            stream,
            first_seq,
            rows,
            self._last_prediction_seq,
            lambda name, start, fresh: prediction_table(fresh, name, start),
        )

    def last_prediction_seq(self, stream: str) -> int | None:
        _stream_name(stream)
        return self._run(
            "read the prediction stream cursor", lambda: self._last_prediction_seq(stream)
        )

    def _last_prediction_seq(self, stream: str) -> int | None:
        return _cursor(self._query(LAST_PREDICTION_SEQ, {"stream": stream}), "predictions")

    def read_predictions(
        self, stream: str, from_seq: int = 0, limit: int = 1_000_000
    ) -> StoredPredictions:
        _stream_name(stream)
        if from_seq < 0 or limit < 0:
            raise ValueError(f"from_seq and limit must be 0 or more, got {from_seq}, {limit}")
        params = {"stream": stream, "from_seq": from_seq, "limit": limit}
        table = self._run("read predictions", lambda: self._query(READ_PREDICTIONS, params))
        rows = PredictionRows.of(
            model=[_text(name) for name in table.column("model").to_pylist()],
            version=[int(number) for number in table.column("version").to_pylist()],
            symbol=[_text(name) for name in table.column("symbol").to_pylist()],
            time_msc=_column(table, "time_msc", np.int64),
            probability_up=_column(table, "probability_up", np.float64),
            predicted_class=_column(table, "predicted_class", np.uint8),
            feature_digest=_column(table, "feature_digest", np.uint64),
        )
        return StoredPredictions(_column(table, "seq", np.uint64), rows)

    def accuracy_by_model_version(
        self, symbol: str, horizon_ms: int, bucket_ms: int
    ) -> list[AccuracyRow]:
        _positive("horizon_ms", horizon_ms)
        _positive("bucket_ms", bucket_ms)
        params = {"symbol": symbol, "horizon_ms": horizon_ms, "bucket_ms": bucket_ms}
        table = self._run(
            "score predictions", lambda: self._query(ACCURACY_BY_MODEL_VERSION, params)
        )
        return [
            AccuracyRow(
                model=_text(row["model"]),
                version=int(row["version"]),
                bucket_ms=int(row["bucket_ms"]),
                predictions=int(row["predictions"]),
                scored=int(row["scored"]),
                correct=int(row["correct"]),
            )
            for row in table.to_pylist()
        ]

"""The timeseries port: ticks, bars, predictions and model performance over time.

ClickHouse holds them when the URL names a server, chDB (the same engine, embedded) by
default; both speak the same SQL (:mod:`.sql`).

- **Ticks** arrive as columns (:class:`TickRows`) numbered by ``seq`` in a *stream* (the
  merged tick stream of a set of symbols, as market data serves it). The stored seqs are
  the stream's cursor: :meth:`TimeseriesPort.last_seq` is the largest seq stored, and
  :meth:`TimeseriesPort.insert_ticks` skips every row whose seq is not above it. So a
  writer that crashed after a write and before it noted its progress, and writes the
  same rows again, stores each row once; and there is no separate cursor to lose.
  :meth:`TimeseriesPort.read_ticks` reads a stream back in seq order.
- **Bars** are rolled up from the ticks at any timeframe, on the bid (as MetaTrader
  charts are), with the tick count and the summed volume (:class:`Bars`).
- **Predictions** (:class:`PredictionRows`) are what models said, by model version;
  :meth:`TimeseriesPort.accuracy_by_model_version` scores their direction against the
  ticks that came *after* each prediction, out of sample (see its docstring). Written
  from a numbered stream (inference's prediction stream), they carry its seqs, which
  are its cursor exactly as for ticks: :meth:`TimeseriesPort.last_prediction_seq`,
  an insert that skips what is stored, :meth:`TimeseriesPort.read_predictions`.

Prices are integer points and times int64 UTC epoch milliseconds, as everywhere in
quantmesh. Calls block; an adapter for a server retries transient failures with
backoff and then raises :class:`~quantmesh.storage.urls.StoreUnavailableError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

import numpy as np

__all__ = [
    "AccuracyRow",
    "Bars",
    "PredictedClass",
    "PredictionRows",
    "SeqGapError",
    "StoredPredictions",
    "StoredTicks",
    "TickRows",
    "TimeseriesPort",
]


class SeqGapError(ValueError):
    """Ticks would leave a hole in a stream: their first seq is past ``last_seq + 1``."""


class PredictedClass(IntEnum):
    """A predicted direction; the numbers are the contract's ``PredictedClass``."""

    UNSPECIFIED = 0
    DOWN = 1
    FLAT = 2
    UP = 3


def _check_lengths(kind: str, columns: dict[str, np.ndarray]) -> int:
    lengths = {name: len(column) for name, column in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{kind} columns must all have the same length, got {lengths}")
    return next(iter(lengths.values()))


def _dictionary(values: Sequence[str] | np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """Dictionary-encode strings: the distinct values and each row's index into them."""
    names, index = np.unique(np.asarray(values, dtype=str), return_inverse=True)
    return tuple(str(name) for name in names), index.astype(np.uint32)


# eq=False: the fields are numpy arrays, for which the generated __eq__ would fail.
@dataclass(frozen=True, slots=True, eq=False)
class TickRows:
    """Ticks as columns of equal length; row ``i`` has seq ``first_seq + i`` when inserted.

    The symbol column is dictionary-encoded, as market data's ``TickBatch`` is:
    ``symbols[symbol_index[i]]`` is row ``i``'s symbol (:meth:`of` encodes a plain column).

    Attributes
    ----------
    symbols:
        The distinct symbol names the rows refer to.
    symbol_index:
        uint32 index into ``symbols``.
    time_msc:
        int64 UTC epoch ms.
    bid, ask:
        int64 price points.
    volume:
        float64 volume of each tick.
    """

    symbols: tuple[str, ...]
    symbol_index: np.ndarray
    time_msc: np.ndarray
    bid: np.ndarray
    ask: np.ndarray
    volume: np.ndarray

    def __post_init__(self) -> None:
        rows = _check_lengths(
            "tick",
            {
                "symbol_index": self.symbol_index,
                "time_msc": self.time_msc,
                "bid": self.bid,
                "ask": self.ask,
                "volume": self.volume,
            },
        )
        if rows and int(self.symbol_index.max()) >= len(self.symbols):
            raise ValueError(
                f"symbol_index refers to symbol {int(self.symbol_index.max())} "
                f"but only {len(self.symbols)} symbols are given"
            )

    @classmethod
    def of(
        cls,
        symbol: Sequence[str] | np.ndarray,
        time_msc: Sequence[int] | np.ndarray,
        bid: Sequence[int] | np.ndarray,
        ask: Sequence[int] | np.ndarray,
        volume: Sequence[float] | np.ndarray,
    ) -> TickRows:
        """Rows from plain columns, the symbol one a name per row."""
        symbols, index = _dictionary(symbol)
        return cls(
            symbols,
            index,
            np.asarray(time_msc, dtype=np.int64),
            np.asarray(bid, dtype=np.int64),
            np.asarray(ask, dtype=np.int64),
            np.asarray(volume, dtype=np.float64),
        )

    def __len__(self) -> int:
        return len(self.time_msc)

    def rows(self, start: int, stop: int) -> TickRows:
        """Rows ``start:stop``, as views of these columns."""
        return TickRows(
            self.symbols,
            self.symbol_index[start:stop],
            self.time_msc[start:stop],
            self.bid[start:stop],
            self.ask[start:stop],
            self.volume[start:stop],
        )

    def symbol(self) -> np.ndarray:
        """The symbol column decoded: one name per row."""
        decoded: np.ndarray = np.asarray(self.symbols, dtype=str)[self.symbol_index]
        return decoded


@dataclass(frozen=True, slots=True, eq=False)
class StoredTicks:
    """Ticks read back from a stream: ``rows`` and each row's ``seq`` (uint64)."""

    seq: np.ndarray
    rows: TickRows

    def __post_init__(self) -> None:
        if len(self.seq) != len(self.rows):
            raise ValueError(f"{len(self.seq)} seqs for {len(self.rows)} rows")

    def __len__(self) -> int:
        return len(self.seq)


@dataclass(frozen=True, slots=True, eq=False)
class Bars:
    """One symbol's bars, oldest first, as columns of equal length.

    Attributes
    ----------
    time_ms:
        int64 UTC epoch ms of each bar's open: a multiple of the timeframe.
    open, high, low, close:
        int64 bid points: the first tick's (by time, then seq), the highest, the
        lowest and the last tick's.
    ticks:
        int64 number of ticks in the bar (MetaTrader's tick volume).
    volume:
        float64 summed volume of the bar's ticks.
    """

    time_ms: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    ticks: np.ndarray
    volume: np.ndarray

    def __post_init__(self) -> None:
        _check_lengths(
            "bar",
            {
                "time_ms": self.time_ms,
                "open": self.open,
                "high": self.high,
                "low": self.low,
                "close": self.close,
                "ticks": self.ticks,
                "volume": self.volume,
            },
        )

    def __len__(self) -> int:
        return len(self.time_ms)


@dataclass(frozen=True, slots=True, eq=False)
class PredictionRows:
    """Predictions as columns of equal length; models and symbols dictionary-encoded.

    Row ``i`` is what model ``models[model_index[i]]`` at version
    ``versions[model_index[i]]`` predicted for ``symbols[symbol_index[i]]`` at
    ``time_msc[i]``, from the features whose digest is ``feature_digest[i]``. A model,
    version, symbol and time identify a prediction: writing one again replaces it.

    Attributes
    ----------
    models, versions:
        Model names and their registry versions, pairwise.
    model_index:
        uint32 index into ``models``/``versions``.
    symbols:
        The distinct symbol names.
    symbol_index:
        uint32 index into ``symbols``.
    time_msc:
        int64 UTC epoch ms at which the prediction was made (its features' time).
    probability_up:
        float64 probability that the price rises.
    predicted_class:
        :class:`PredictedClass` numbers.
    feature_digest:
        uint64 digest of the model's input (as inference computes it).
    """

    models: tuple[str, ...]
    versions: tuple[int, ...]
    model_index: np.ndarray
    symbols: tuple[str, ...]
    symbol_index: np.ndarray
    time_msc: np.ndarray
    probability_up: np.ndarray
    predicted_class: np.ndarray
    feature_digest: np.ndarray

    def __post_init__(self) -> None:
        if len(self.models) != len(self.versions):
            raise ValueError(
                f"{len(self.models)} model names but {len(self.versions)} versions; "
                "each model needs its version"
            )
        rows = _check_lengths(
            "prediction",
            {
                "model_index": self.model_index,
                "symbol_index": self.symbol_index,
                "time_msc": self.time_msc,
                "probability_up": self.probability_up,
                "predicted_class": self.predicted_class,
                "feature_digest": self.feature_digest,
            },
        )
        if rows and int(self.model_index.max()) >= len(self.models):
            raise ValueError(f"model_index refers past the {len(self.models)} models given")
        if rows and int(self.symbol_index.max()) >= len(self.symbols):
            raise ValueError(f"symbol_index refers past the {len(self.symbols)} symbols given")

    @classmethod
    def of(
        cls,
        model: Sequence[str],
        version: Sequence[int],
        symbol: Sequence[str] | np.ndarray,
        time_msc: Sequence[int] | np.ndarray,
        probability_up: Sequence[float] | np.ndarray,
        predicted_class: Sequence[int] | np.ndarray,
        feature_digest: Sequence[int] | np.ndarray,
    ) -> PredictionRows:
        """Rows from plain columns: a model name, version and symbol per row."""
        pairs = sorted(set(zip(model, version, strict=True)))
        position = {pair: k for k, pair in enumerate(pairs)}
        symbols, symbol_index = _dictionary(symbol)
        return cls(
            models=tuple(name for name, _ in pairs),
            versions=tuple(int(number) for _, number in pairs),
            model_index=np.array(
                [position[pair] for pair in zip(model, version, strict=True)], dtype=np.uint32
            ),
            symbols=symbols,
            symbol_index=symbol_index,
            time_msc=np.asarray(time_msc, dtype=np.int64),
            probability_up=np.asarray(probability_up, dtype=np.float64),
            predicted_class=np.asarray(predicted_class, dtype=np.uint8),
            feature_digest=np.asarray(feature_digest, dtype=np.uint64),
        )

    def __len__(self) -> int:
        return len(self.time_msc)

    def rows(self, start: int, stop: int) -> PredictionRows:
        """Rows ``start:stop``, as views of these columns (the dictionaries kept whole)."""
        return PredictionRows(
            self.models,
            self.versions,
            self.model_index[start:stop],
            self.symbols,
            self.symbol_index[start:stop],
            self.time_msc[start:stop],
            self.probability_up[start:stop],
            self.predicted_class[start:stop],
            self.feature_digest[start:stop],
        )


@dataclass(frozen=True, slots=True, eq=False)
class StoredPredictions:
    """Predictions read back from a stream: ``rows`` and each row's ``seq`` (uint64)."""

    seq: np.ndarray
    rows: PredictionRows

    def __post_init__(self) -> None:
        if len(self.seq) != len(self.rows):
            raise ValueError(f"{len(self.seq)} seqs for {len(self.rows)} rows")

    def __len__(self) -> int:
        return len(self.seq)


@dataclass(frozen=True, slots=True)
class AccuracyRow:
    """How one model version's predictions fared in one time bucket.

    Attributes
    ----------
    model, version:
        The model version.
    bucket_ms:
        UTC epoch ms at which the bucket starts (a multiple of the bucket width).
    predictions:
        Predictions made in the bucket.
    scored:
        Those that could be scored: an UP or DOWN call, a price known at the
        prediction's time, a tick after it and no later than ``time + horizon``, the
        horizon elapsed in the stored ticks, and a price that moved.
    correct:
        Scored predictions whose direction was right.
    """

    model: str
    version: int
    bucket_ms: int
    predictions: int
    scored: int
    correct: int

    @property
    def accuracy(self) -> float:
        """``correct / scored``; NaN when nothing could be scored."""
        return self.correct / self.scored if self.scored else float("nan")


class TimeseriesPort(Protocol):
    """Ticks, bars and predictions in ClickHouse or chDB."""

    url: str  # as configured, password hidden

    def insert_ticks(self, stream: str, first_seq: int, rows: TickRows) -> int:
        """Store ``rows`` as seqs ``first_seq…`` of ``stream``; return how many were new.

        Rows whose seq is not above :meth:`last_seq` are skipped (they are stored
        already), so inserting a range twice stores it once. Raises
        :class:`SeqGapError` when ``first_seq`` is past ``last_seq + 1`` of a stream
        that holds ticks: the rows in between would be missing. Rows are written in
        chunks in seq order, each chunk atomically, so a crash leaves a prefix stored.
        """
        ...

    def last_seq(self, stream: str) -> int | None:
        """The largest seq stored for ``stream``; None when it holds no tick."""
        ...

    def read_ticks(self, stream: str, from_seq: int = 0, limit: int = 1_000_000) -> StoredTicks:
        """Up to ``limit`` stored ticks of ``stream`` from ``from_seq`` on, in seq order.

        Every stored row is returned, so a seq stored twice would show twice.
        """
        ...

    def ohlc(self, symbol: str, timeframe_ms: int, from_ms: int, to_ms: int) -> Bars:
        """Bars of ``timeframe_ms`` (aligned to the Unix epoch) of ticks in ``[from_ms, to_ms)``.

        Bars without ticks are absent, as in MetaTrader.
        """
        ...

    def insert_predictions(
        self, rows: PredictionRows, stream: str | None = None, first_seq: int = 0
    ) -> int:
        """Store predictions; return how many were written.

        A prediction written again (same model, version, symbol and time) replaces the
        stored one in every query's answer. With ``stream``, row ``i`` is seq
        ``first_seq + i`` of that stream, and the rows are written as ticks are (see
        :meth:`insert_ticks`): those not above :meth:`last_prediction_seq` are skipped,
        a ``first_seq`` past ``last_prediction_seq + 1`` raises :class:`SeqGapError`,
        and the chunks go in seq order. Without, the rows belong to no stream.
        """
        ...

    def last_prediction_seq(self, stream: str) -> int | None:
        """The largest seq stored for the prediction ``stream``; None when it holds none."""
        ...

    def read_predictions(
        self, stream: str, from_seq: int = 0, limit: int = 1_000_000
    ) -> StoredPredictions:
        """Up to ``limit`` stored predictions of ``stream`` from ``from_seq`` on, in seq order.

        Every stored row is returned, so a seq stored twice would show twice (until the
        engine's merges keep one row per prediction, which may also drop a row another
        stream wrote again: a prediction is one row, whichever stream wrote it last).
        """
        ...

    def accuracy_by_model_version(
        self, symbol: str, horizon_ms: int, bucket_ms: int
    ) -> list[AccuracyRow]:
        """Direction accuracy of each model version's predictions, per time bucket.

        A prediction made at ``t`` is compared with the mid price of the last tick at or
        before ``t`` (what the model could know) and the mid of the last tick after ``t``
        and at or before ``t + horizon_ms``. Only prices after ``t`` decide the outcome,
        so the score is out of sample; a prediction whose horizon has not elapsed in the
        stored ticks, or with no tick inside its horizon, is not scored yet. A row
        without a prediction (class UNSPECIFIED: the stream's warm-up, whose inputs were
        not all known) is not counted at all. Rows come ordered by model, version and
        bucket.
        """
        ...

    def close(self) -> None:
        """Release the connection or the embedded database."""
        ...

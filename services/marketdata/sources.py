"""Market data domain types and the replay tick source.

A :class:`TickSource` serves one finite, seekable tick stream for each canonical set of
symbols. Rows are numbered by ``seq`` from 0, and the same source gives the same rows
on every read, so a consumer can resume from any seq it has acked. Prices are integer
points (``round(price * 10**digits)``) and times are int64 UTC epoch milliseconds.
Nothing here imports grpc.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Protocol, runtime_checkable

import numpy as np

from quantmesh.services.marketdata.ticks import H1_MS, BarTickGenerator, TickChunk


@dataclass(frozen=True, slots=True)
class Symbol:
    """A tradable symbol, with the fields MetaTrader's ``symbol_info`` reports."""

    name: str
    description: str
    currency_base: str
    currency_profit: str
    digits: int
    spread_points: int  # typical spread in points
    trade_contract_size: float = 100_000.0
    volume_min: float = 0.01
    volume_max: float = 100.0
    volume_step: float = 0.01

    @property
    def point(self) -> float:
        """Size of one price point, ``10**-digits``."""
        return 10.0**-self.digits


EURUSD = Symbol("EURUSD", "Euro vs US Dollar", "EUR", "USD", digits=5, spread_points=12)
GBPUSD = Symbol("GBPUSD", "Great Britain Pound vs US Dollar", "GBP", "USD", 5, 15)
USDJPY = Symbol("USDJPY", "US Dollar vs Japanese Yen", "USD", "JPY", 3, 14)
EURGBP = Symbol("EURGBP", "Euro vs Great Britain Pound", "EUR", "GBP", 5, 16)


# eq=False: the fields are numpy arrays, for which the generated __eq__/__hash__ would fail.
@dataclass(frozen=True, slots=True, eq=False)
class Bars:
    """One symbol's bars, oldest first, as columns of equal length.

    Attributes
    ----------
    time_ms:
        int64 UTC epoch ms of each bar's open.
    open, high, low, close:
        int64 price points.
    tick_volume:
        float64 volume of each bar.
    """

    time_ms: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    tick_volume: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.time_ms)
        if any(len(column) != n for column in (self.open, self.high, self.low, self.close)):
            raise ValueError("Bars columns must all have the same length")
        if len(self.tick_volume) != n:
            raise ValueError("Bars columns must all have the same length")

    def __len__(self) -> int:
        return len(self.time_ms)

    def slice_time(self, from_ms: int, to_ms: int) -> Bars:
        """Bars opening in ``[from_ms, to_ms)``, as views of these columns."""
        lo = int(np.searchsorted(self.time_ms, from_ms, side="left"))
        hi = max(lo, int(np.searchsorted(self.time_ms, to_ms, side="left")))
        return Bars(
            self.time_ms[lo:hi],
            self.open[lo:hi],
            self.high[lo:hi],
            self.low[lo:hi],
            self.close[lo:hi],
            self.tick_volume[lo:hi],
        )


@dataclass(frozen=True, slots=True, eq=False)
class TickColumns:
    """A batch of a merged multi-symbol tick stream, as columns of equal length.

    Attributes
    ----------
    seq:
        Seq of the first row; row ``i`` has seq ``seq + i``.
    symbol_index:
        uint32 index into the symbol list the stream was opened with.
    time_msc:
        int64 UTC epoch ms, non-decreasing over the whole stream.
    bid, ask:
        int64 price points, ``ask > bid`` always.
    volume:
        float64 volume of each tick.
    """

    seq: int
    symbol_index: np.ndarray
    time_msc: np.ndarray
    bid: np.ndarray
    ask: np.ndarray
    volume: np.ndarray

    def __len__(self) -> int:
        return len(self.time_msc)

    def rows(self, start: int, stop: int) -> TickColumns:
        """Rows ``start:stop`` as views, with the seq moved along."""
        if start == 0 and stop == len(self):
            return self
        return TickColumns(
            self.seq + start,
            self.symbol_index[start:stop],
            self.time_msc[start:stop],
            self.bid[start:stop],
            self.ask[start:stop],
            self.volume[start:stop],
        )


@runtime_checkable
class TickSource(Protocol):
    """A finite, deterministic, seekable source of merged tick streams.

    ``symbols`` arguments are canonical: a sorted list of distinct served names. A source
    raises KeyError for an unknown name.
    """

    name: str  # "replay" / "synthetic"

    @property
    def symbols(self) -> Sequence[Symbol]:
        """Every served symbol."""
        ...

    def tick_count(self, symbols: Sequence[str]) -> int:
        """Total ticks of the merged stream of ``symbols``. Cheap: it generates no tick."""
        ...

    def read(
        self, symbols: Sequence[str], from_seq: int = 0, batch_size: int = 1000
    ) -> Iterator[TickColumns]:
        """Consecutive batches of exactly ``batch_size`` rows (the last may be shorter).

        They start at ``from_seq``. ``from_seq == tick_count`` yields nothing, and a
        greater ``from_seq`` raises ValueError.
        """
        ...

    def bars(self, symbol: str) -> Bars:
        """Native H1 bars of ``symbol``."""
        ...


def check_symbols(symbols: Sequence[str], served: Iterable[str]) -> None:
    """Raise KeyError for an unknown name, ValueError unless sorted, distinct, non-empty."""
    known = set(served)
    for name in symbols:
        if name not in known:
            raise KeyError(f"unknown symbol {name!r}; served: {', '.join(sorted(known))}")
    if not symbols:
        raise ValueError("at least one symbol is needed")
    if any(a >= b for a, b in pairwise(symbols)):
        raise ValueError(f"symbols must be sorted and distinct, got {list(symbols)}")


def check_read(from_seq: int, batch_size: int, total: int) -> None:
    """Raise ValueError for a batch size below 1 or a seq outside ``0..total``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= from_seq <= total:
        raise ValueError(f"from_seq must be 0..{total} (the stream's length), got {from_seq}")


def rebatch(blocks: Iterable[TickColumns], batch_size: int) -> Iterator[TickColumns]:
    """Re-cut consecutive blocks into batches of exactly ``batch_size`` (the last may be short).

    Batches inside one block are views of it. Only batches spanning two blocks are copied.
    """
    pending: list[TickColumns] = []
    pending_rows = 0
    for block in blocks:
        start, rows = 0, len(block)
        while start < rows:
            take = min(batch_size - pending_rows, rows - start)
            part = block.rows(start, start + take)
            start += take
            if take == batch_size:
                yield part
                continue
            pending.append(part)
            pending_rows += take
            if pending_rows == batch_size:
                yield _concat(pending)
                pending, pending_rows = [], 0
    if pending:
        yield _concat(pending)


class ReplaySource:
    """Ticks generated from bars by :mod:`quantmesh.services.marketdata.ticks`.

    With several symbols the stream is merged by ``(time_msc, symbol index)``. All their
    bars must then open on one common H1 grid, so that each hour's ticks can be merged
    on their own.

    Parameters
    ----------
    bars_by_symbol:
        ``{name: (symbol, bars)}``. The bars are ask bars, and ``symbol.spread_points``
        is the typical spread.
    seed:
        Generator seed. Symbol ``name`` uses the stream ``crc32(name)``.
    mean_ticks_per_bar:
        Mean tick count of a bar of average volume.
    chunk_bars:
        Bars generated at once. It bounds memory, and it is part of the seed.
    """

    name = "replay"

    def __init__(
        self,
        bars_by_symbol: Mapping[str, tuple[Symbol, Bars]],
        seed: int = 7,
        mean_ticks_per_bar: int = 100,
        *,
        chunk_bars: int = 64,
    ) -> None:
        if not bars_by_symbol:
            raise ValueError("a replay needs at least one symbol")
        self._generators: dict[str, BarTickGenerator] = {}
        symbols = []
        for key, (symbol, bars) in sorted(bars_by_symbol.items(), key=lambda item: item[0]):
            if key != symbol.name:
                raise ValueError(f"key {key!r} differs from its symbol's name {symbol.name!r}")
            self._generators[key] = BarTickGenerator(
                bars,
                seed=seed,
                stream=zlib.crc32(key.encode()),
                mean_ticks_per_bar=mean_ticks_per_bar,
                spread_points=symbol.spread_points,
                chunk_bars=chunk_bars,
            )
            symbols.append(symbol)
        self._symbols = tuple(symbols)
        self._chunk_bars = chunk_bars
        phases = {
            int(p) for g in self._generators.values() for p in np.unique(g.bars.time_ms % H1_MS)
        }
        if len(self._generators) > 1 and len(phases) > 1:
            raise ValueError("merged replay needs every symbol's bars on one common H1 grid")
        self._windows: dict[tuple[str, ...], _Windows] = {}

    @classmethod
    def eurusd(cls, seed: int = 7, mean_ticks_per_bar: int = 100) -> ReplaySource:
        """Replay of the shipped EUR/USD H1 ask bars of 2017 (see ``quantmesh.datasets``)."""
        # Imported here because quantmesh.datasets imports this module for Bars.
        from quantmesh.datasets import load_h1_bars

        return cls({EURUSD.name: (EURUSD, load_h1_bars())}, seed, mean_ticks_per_bar)

    @property
    def symbols(self) -> Sequence[Symbol]:
        return self._symbols

    def tick_count(self, symbols: Sequence[str]) -> int:
        return sum(g.total for g in self._select(symbols))

    def read(
        self, symbols: Sequence[str], from_seq: int = 0, batch_size: int = 1000
    ) -> Iterator[TickColumns]:
        generators = self._select(symbols)
        check_read(from_seq, batch_size, sum(g.total for g in generators))
        if len(generators) == 1:
            return rebatch(_single(generators[0], from_seq), batch_size)
        windows = self._windows_of(tuple(symbols), generators)
        return rebatch(self._merged(generators, windows, from_seq), batch_size)

    def bars(self, symbol: str) -> Bars:
        check_symbols([symbol], self._generators)
        return self._generators[symbol].bars

    def _select(self, symbols: Sequence[str]) -> list[BarTickGenerator]:
        check_symbols(symbols, self._generators)
        return [self._generators[name] for name in symbols]

    def _windows_of(self, key: tuple[str, ...], generators: list[BarTickGenerator]) -> _Windows:
        windows = self._windows.get(key)
        if windows is None:
            if len(self._windows) >= 64:  # at most a few KB each; a bound, not a policy
                self._windows.clear()
            windows = self._windows[key] = _Windows.build(generators)
        return windows

    def _merged(
        self, generators: list[BarTickGenerator], windows: _Windows, from_seq: int
    ) -> Iterator[TickColumns]:
        # Hours are merged in groups of chunk_bars. A group has at most chunk_bars bars of
        # each symbol, so it touches at most two chunks of each.
        cursors = [_ChunkCursor(g) for g in generators]
        opens, n_windows = windows.opens, len(windows.opens)
        first = int(np.searchsorted(windows.first_seq, from_seq, side="right")) - 1
        for w0 in range(first, n_windows, self._chunk_bars):
            w1 = min(w0 + self._chunk_bars, n_windows)
            t_hi = int(opens[w1]) if w1 < n_windows else None
            parts = [cursor.between(int(opens[w0]), t_hi) for cursor in cursors]
            time_msc = np.concatenate([p[0] for p in parts])
            symbol_index = np.repeat(
                np.arange(len(parts), dtype=np.uint32), [len(p[0]) for p in parts]
            )
            # A stable sort of symbol-ordered parts orders ties by symbol index.
            order = np.argsort(time_msc, kind="stable")
            seq = int(windows.first_seq[w0])
            cut = max(from_seq - seq, 0)
            order = order[cut:]
            yield TickColumns(
                seq + cut,
                symbol_index[order],
                time_msc[order],
                np.concatenate([p[2] for p in parts])[order],
                np.concatenate([p[1] for p in parts])[order],
                np.concatenate([p[3] for p in parts])[order],
            )


@dataclass(frozen=True, slots=True, eq=False)
class _Windows:
    """The merged stream's hours: union of bar opens, first seq of each (plus the total)."""

    opens: np.ndarray
    first_seq: np.ndarray

    @staticmethod
    def build(generators: list[BarTickGenerator]) -> _Windows:
        opens = np.unique(np.concatenate([g.bars.time_ms for g in generators]))
        counts = np.zeros(len(opens), np.int64)
        for g in generators:
            counts[np.searchsorted(opens, g.bars.time_ms)] += g.counts
        return _Windows(opens, np.concatenate(([0], np.cumsum(counts))))


class _ChunkCursor:
    """One read's view of a symbol's ticks by time range, keeping its last two chunks."""

    def __init__(self, generator: BarTickGenerator) -> None:
        self._g = generator
        self._cache: dict[int, TickChunk] = {}

    def between(self, t_lo: int, t_hi: int | None) -> tuple[np.ndarray, ...]:
        """(time_msc, ask, bid, volume) of the bars opening in ``[t_lo, t_hi)``."""
        g, opens = self._g, self._g.bars.time_ms
        b0 = int(np.searchsorted(opens, t_lo))
        b1 = len(opens) if t_hi is None else int(np.searchsorted(opens, t_hi))
        pieces = []
        for c in range(b0 // g.chunk_bars, (b1 - 1) // g.chunk_bars + 1 if b1 > b0 else 0):
            chunk = self._chunk(c)
            cb0, cb1 = g.chunk_bounds(c)
            lo = int(g.first_seq[max(b0, cb0)]) - chunk.first_seq
            hi = int(g.first_seq[min(b1, cb1)]) - chunk.first_seq
            columns = (chunk.time_msc, chunk.ask, chunk.bid, chunk.volume)
            pieces.append(tuple(column[lo:hi] for column in columns))
        if not pieces:
            empty = np.zeros(0, np.int64)
            return empty, empty, empty, np.zeros(0, np.float64)
        return tuple(np.concatenate(column) for column in zip(*pieces, strict=True))

    def _chunk(self, c: int) -> TickChunk:
        if c not in self._cache:
            if len(self._cache) >= 2:
                del self._cache[min(self._cache)]  # reads only move forward
            self._cache[c] = self._g.chunk(c)
        return self._cache[c]


def _single(generator: BarTickGenerator, from_seq: int) -> Iterator[TickColumns]:
    for chunk in generator.chunks(from_seq):
        yield TickColumns(
            chunk.first_seq,
            np.zeros(len(chunk), np.uint32),
            chunk.time_msc,
            chunk.bid,
            chunk.ask,
            chunk.volume,
        )


def _concat(parts: list[TickColumns]) -> TickColumns:
    if len(parts) == 1:
        return parts[0]
    return TickColumns(
        parts[0].seq,
        np.concatenate([p.symbol_index for p in parts]),
        np.concatenate([p.time_msc for p in parts]),
        np.concatenate([p.bid for p in parts]),
        np.concatenate([p.ask for p in parts]),
        np.concatenate([p.volume for p in parts]),
    )

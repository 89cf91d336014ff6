"""Market data core: symbol lookup, rates queries and validated tick subscriptions.

No grpc here. The servicer converts protobuf to these calls and maps the
:mod:`quantmesh.runtime.errors` they raise to gRPC statuses.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from quantmesh.runtime.errors import InvalidArgument, NotFound, OutOfRange
from quantmesh.services.marketdata.sources import Bars, Symbol, TickColumns, TickSource

DEFAULT_BATCH_SIZE = 1_000
MAX_BATCH_SIZE = 100_000
DEFAULT_RATES_LIMIT = 10_000
MAX_RATES_LIMIT = 100_000
_HOUR_MS = 3_600_000


class Timeframe(IntEnum):
    """Bar sizes in minutes; the contract's enum names map onto these names."""

    M1 = 1
    M5 = 5
    M15 = 15
    M30 = 30
    H1 = 60
    H4 = 240
    D1 = 1_440

    @property
    def milliseconds(self) -> int:
        return int(self.value) * 60_000


@dataclass(frozen=True, slots=True)
class Subscription:
    """A consumer's request for ticks, as received (validated by :meth:`MarketData.plan`)."""

    symbols: Sequence[str]
    from_seq: int = 0
    batch_size: int = 0
    speed: float = 0.0
    initial_credit: int = 0


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """A validated subscription: what to stream, from where, in which batch size."""

    symbols: tuple[Symbol, ...]
    from_seq: int
    batch_size: int
    speed: float
    initial_credit: int
    total: int
    source: TickSource

    def batches(self) -> Iterator[TickColumns]:
        names = [symbol.name for symbol in self.symbols]
        return self.source.read(names, from_seq=self.from_seq, batch_size=self.batch_size)


class MarketData:
    """Queries and subscriptions over one :class:`TickSource`."""

    def __init__(self, source: TickSource) -> None:
        self.source = source
        self._symbols = {symbol.name: symbol for symbol in source.symbols}

    @property
    def symbols(self) -> list[Symbol]:
        return list(self._symbols.values())

    def symbol(self, name: str) -> Symbol:
        try:
            return self._symbols[name]
        except KeyError:
            served = ", ".join(self._symbols) or "none"
            raise NotFound(f"unknown symbol {name!r}; this server streams: {served}") from None

    def plan(self, request: Subscription) -> StreamPlan:
        """Validate a subscription and fix its defaults."""
        names = sorted(set(request.symbols)) if request.symbols else sorted(self._symbols)
        symbols = tuple(self.symbol(name) for name in names)
        batch_size = request.batch_size or DEFAULT_BATCH_SIZE
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise InvalidArgument(f"batch_size must be 1..{MAX_BATCH_SIZE}, got {batch_size}")
        if not math.isfinite(request.speed) or request.speed < 0:
            raise InvalidArgument(
                f"speed must be 0 (as fast as possible) or a positive factor, got {request.speed}"
            )
        if request.initial_credit < 0:
            raise InvalidArgument(f"initial_credit must be 0 or more, got {request.initial_credit}")
        total = self.source.tick_count(names)
        if request.from_seq > total:
            raise OutOfRange(
                f"from_seq {request.from_seq} is beyond the end of the stream: it holds {total} "
                f"ticks for {', '.join(names)}, so from_seq must be 0..{total}"
            )
        return StreamPlan(
            symbols=symbols,
            from_seq=request.from_seq,
            batch_size=batch_size,
            speed=request.speed,
            initial_credit=request.initial_credit,
            total=total,
            source=self.source,
        )

    def rates(
        self, symbol: str, timeframe: Timeframe | None, from_ms: int, to_ms: int, limit: int = 0
    ) -> Bars:
        """Bars of ``symbol`` opening in ``[from_ms, to_ms)``, at most ``limit`` of them."""
        info = self.symbol(symbol)
        if timeframe is None:
            raise InvalidArgument("timeframe is required, e.g. TIMEFRAME_H1")
        if from_ms < 0 or to_ms <= from_ms:
            raise InvalidArgument(
                f"malformed time range: to_time_ms ({to_ms}) must be greater than "
                f"from_time_ms ({from_ms}), and both are UTC epoch milliseconds >= 0"
            )
        limit = limit or DEFAULT_RATES_LIMIT
        if limit > MAX_RATES_LIMIT:
            raise InvalidArgument(f"limit must be at most {MAX_RATES_LIMIT}, got {limit}")
        if timeframe.milliseconds < _HOUR_MS:
            raise InvalidArgument(
                f"timeframe {timeframe.name} is finer than the source's native H1 bars of "
                f"{info.name}; ask for H1, H4 or D1"
            )
        bars = aggregate(self.source.bars(info.name), timeframe).slice_time(from_ms, to_ms)
        return _head(bars, limit)


def aggregate(bars: Bars, timeframe: Timeframe) -> Bars:
    """Aggregate bars into a coarser UTC-aligned timeframe (H1 → H4, D1)."""
    period = timeframe.milliseconds
    if len(bars) == 0 or period == _HOUR_MS:
        return bars
    bucket = bars.time_ms // period
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    ends = np.r_[starts[1:], len(bars)] - 1
    return Bars(
        time_ms=bucket[starts] * period,
        open=bars.open[starts],
        high=np.maximum.reduceat(bars.high, starts),
        low=np.minimum.reduceat(bars.low, starts),
        close=bars.close[ends],
        tick_volume=np.add.reduceat(bars.tick_volume, starts),
    )


def _head(bars: Bars, limit: int) -> Bars:
    if len(bars) <= limit:
        return bars
    return Bars(
        time_ms=bars.time_ms[:limit],
        open=bars.open[:limit],
        high=bars.high[:limit],
        low=bars.low[:limit],
        close=bars.close[:limit],
        tick_volume=bars.tick_volume[:limit],
    )


async def paced(
    batches: Iterable[TickColumns], speed: float, clock: Callable[[], float] = time.monotonic
) -> AsyncIterator[TickColumns]:
    """Release ticks no earlier than their market time allows at ``speed``× real time.

    ``speed`` 0 releases batches as they come. Otherwise a tick is due
    ``(time_msc - first tick's time_msc) / speed`` after the stream started; every yield
    holds only ticks already due, so a paced consumer never sees a tick early.
    """
    if speed == 0:
        for columns in batches:
            yield columns
        return
    anchor_wall: float | None = None
    anchor_market_ms = 0
    for columns in batches:
        start = 0
        while start < len(columns):
            if anchor_wall is None:
                anchor_wall, anchor_market_ms = clock(), int(columns.time_msc[0])
            due = anchor_wall + (columns.time_msc[start:] - anchor_market_ms) / (1000.0 * speed)
            now = clock()
            ready = int(np.searchsorted(due, now, side="right"))
            if ready == 0:
                await asyncio.sleep(float(due[0]) - now)
                continue
            yield columns.rows(start, start + ready)
            start += ready

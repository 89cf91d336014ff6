"""The market clock: a held tick feed acts only on granted ticks and reports it exactly."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np

from quantmesh.services.execution.clock import END_OF_TIME_MS, ClockMode, MarketClock
from quantmesh.services.execution.servicer import _feed_as_granted
from quantmesh.services.marketdata.sources import TickColumns

TIMES = np.arange(10, dtype=np.int64) * 1_000 + 1_000  # ticks at 1 s, 2 s, … 10 s


def columns() -> TickColumns:
    n = len(TIMES)
    return TickColumns(
        0,
        np.zeros(n, np.uint32),
        TIMES,
        np.full(n, 110_000),
        np.full(n, 110_010),
        np.ones(n),
    )


class SlowEngine:
    """Stands in for the engine: records each slice and can be held mid-work."""

    def __init__(self) -> None:
        self.slices: list[tuple[int, int]] = []
        self.working = threading.Event()
        self.release = threading.Event()

    def on_ticks(self, batch: TickColumns, symbols: list[str]) -> list[Any]:
        self.slices.append((batch.seq, len(batch)))
        self.working.set()
        self.release.wait(5)
        return []


async def test_a_grant_during_work_is_not_reported_as_done() -> None:
    clock = MarketClock(ClockMode.PIPELINE)
    engine = SlowEngine()
    reported: list[int] = []
    processed = clock.processed

    async def record(**kwargs: int) -> None:
        reported.append(kwargs["through_ms"])
        await processed(**kwargs)

    clock.processed = record  # type: ignore[method-assign]
    await clock.grant(3_000)
    feed = asyncio.create_task(_feed_as_granted(engine, clock, columns(), ["EURUSD"]))  # type: ignore[arg-type]
    await asyncio.to_thread(engine.working.wait, 5)
    await clock.grant(7_000)  # risk grants more while the first slice is still working
    engine.release.set()
    await asyncio.wait_for(clock.wait_through(7_000), timeout=5)
    # The first slice was ticks 1-3 s: through 3 s, not the 7 s granted meanwhile.
    assert reported[:2] == [3_000, 7_000]
    assert engine.slices[:2] == [(0, 3), (3, 4)]
    await clock.grant(END_OF_TIME_MS)
    await asyncio.wait_for(feed, timeout=5)
    assert engine.slices[-1] == (7, 3)
    assert clock.ticks_processed == 10
    assert clock.through_ms == 9_999  # the batch's last ms waits for a later tick


async def test_a_grant_short_of_the_next_tick_is_reported_through() -> None:
    """A grant inside a gap between ticks (a weekend) must not leave a waiter hanging."""
    clock = MarketClock(ClockMode.PIPELINE)
    engine = SlowEngine()
    engine.release.set()
    await clock.grant(2_000)
    feed = asyncio.create_task(_feed_as_granted(engine, clock, columns(), ["EURUSD"]))  # type: ignore[arg-type]
    await asyncio.wait_for(clock.wait_through(2_000), timeout=5)
    await clock.grant(2_500)  # no tick between 2 s and 3 s
    await asyncio.wait_for(clock.wait_through(2_500), timeout=5)
    assert engine.slices == [(0, 2)]
    await clock.grant(END_OF_TIME_MS)
    await asyncio.wait_for(feed, timeout=5)


async def test_a_free_clock_never_holds() -> None:
    clock = MarketClock(ClockMode.FREE)
    engine = SlowEngine()
    engine.release.set()
    await _feed_as_granted(engine, clock, columns(), ["EURUSD"])  # type: ignore[arg-type]
    assert engine.slices == [(0, 10)]
    assert clock.market_ms == 10_000

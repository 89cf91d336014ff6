"""Execution's market clock: how far the tick feed may go, and how far it has gone.

Live trading needs no permission: ticks act on orders as they arrive (the ``free``
clock). A replay of history is different. Market data can replay a year in seconds,
far ahead of the features → inference → decision → risk chain; a feed running free
would meet each order hours of market time after its signal, at whatever price the race
left. With the ``pipeline`` clock the feed holds at the market time risk has granted
(``AdvanceMarketTime``), so every order meets the market at its signal's moment and a
replay fills the same at any speed: backtest and live share one code path.

Progress is tracked as ``through_ms``: every tick with ``time_ms <= through_ms`` has
acted. A held feed knows the next tick is later than the grant, so it is through the
grant even when no tick fell exactly on it.
"""

from __future__ import annotations

import asyncio
from enum import StrEnum

END_OF_TIME_MS = 2**63 - 1


class ClockMode(StrEnum):
    """``free`` for live trading; ``pipeline`` for deterministic replays."""

    FREE = "free"
    PIPELINE = "pipeline"


class MarketClock:
    """The gate between market data's ticks and the engine (one per execution service)."""

    def __init__(self, mode: ClockMode = ClockMode.FREE) -> None:
        self.mode = mode
        self.granted_ms = END_OF_TIME_MS if mode is ClockMode.FREE else -1
        self.through_ms = -1
        self.market_ms = 0
        self.ticks_processed = 0
        self.feed_ended = False
        self._changed = asyncio.Condition()

    async def grant(self, time_ms: int) -> None:
        """Let ticks up to ``time_ms`` act; an earlier grant than the current one is a no-op."""
        if time_ms > self.granted_ms:
            self.granted_ms = time_ms
            await self._notify()

    async def wait_grant_beyond(self, time_ms: int) -> int:
        """Wait until more than ``time_ms`` is granted; return the new grant.

        The held feed wakes on every new grant, even one short of its next tick: it must
        then report that it is through the new grant, or a caller waiting for it would
        wait forever (a grant inside a weekend's gap, say).
        """
        async with self._changed:
            await self._changed.wait_for(lambda: self.granted_ms > time_ms)
        return self.granted_ms

    async def processed(self, *, ticks: int, through_ms: int, market_ms: int) -> None:
        """Record that ``ticks`` more ticks acted and everything up to ``through_ms`` has."""
        self.ticks_processed += ticks
        self.market_ms = max(self.market_ms, market_ms)
        if through_ms > self.through_ms:
            self.through_ms = through_ms
        await self._notify()

    async def ended(self) -> None:
        """Market data has no more ticks (a finished replay)."""
        self.feed_ended = True
        await self._notify()

    async def wait_through(self, time_ms: int) -> None:
        """Wait until every tick up to ``time_ms`` has acted, or the feed has ended."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.through_ms >= time_ms or self.feed_ended)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

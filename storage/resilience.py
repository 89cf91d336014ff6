"""Retries with backoff for store calls, so a store that blinks costs time, not data.

A write that fails because its store is down is retried with exponential backoff (and
jitter, so many writers do not return in step); the caller keeps what it wanted to
write until the write succeeds, and a stream consumer does not move its cursor past
unwritten data. When the store stays down longer than the budget, the call raises
:class:`~quantmesh.storage.urls.StoreUnavailableError` naming the store, the operation
and the last error: a clear failure, never a silent drop.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from quantmesh.runtime.logging import get_logger
from quantmesh.storage.urls import StoreUnavailableError

__all__ = [
    "DEFAULT_BACKOFF",
    "TRANSIENT",
    "Backoff",
    "flush_when_woken",
    "retrying",
    "retrying_sync",
]

T = TypeVar("T")
# Failures that a store coming back can cure; adapters add their client's own.
TRANSIENT: tuple[type[BaseException], ...] = (ConnectionError, OSError, TimeoutError)
_log = get_logger("storage")


@dataclass(frozen=True)
class Backoff:
    """How long to keep trying: ``attempts`` tries, delays doubling up to ``max_delay``."""

    attempts: int = 6
    first_delay: float = 0.1
    max_delay: float = 5.0

    def delays(self) -> list[float]:
        """The waits between attempts, with ±25 % jitter."""
        waits = []
        for attempt in range(self.attempts - 1):
            base = min(self.max_delay, self.first_delay * 2**attempt)
            waits.append(base * random.uniform(0.75, 1.25))
        return waits


# The default budget: about six seconds of retries before a store is declared down.
DEFAULT_BACKOFF = Backoff()


async def retrying(
    operation: Callable[[], Awaitable[T]],
    *,
    store: str,
    what: str,
    transient: tuple[type[BaseException], ...] = TRANSIENT,
    backoff: Backoff = DEFAULT_BACKOFF,
) -> T:
    """Await ``operation()``, retrying transient failures; raise StoreUnavailableError."""
    delays = backoff.delays()
    for attempt in range(backoff.attempts):
        try:
            return await operation()
        except transient as error:
            await asyncio.sleep(_next_wait(attempt, delays, error, store, what))
    raise AssertionError("unreachable")


def retrying_sync(
    operation: Callable[[], T],
    *,
    store: str,
    what: str,
    transient: tuple[type[BaseException], ...] = TRANSIENT,
    backoff: Backoff = DEFAULT_BACKOFF,
) -> T:
    """:func:`retrying` for blocking clients (run it in a worker thread)."""
    delays = backoff.delays()
    for attempt in range(backoff.attempts):
        try:
            return operation()
        except transient as error:
            time.sleep(_next_wait(attempt, delays, error, store, what))
    raise AssertionError("unreachable")


def _next_wait(
    attempt: int, delays: list[float], error: BaseException, store: str, what: str
) -> float:
    """The wait before the next attempt; StoreUnavailableError after the last one."""
    if attempt >= len(delays):
        raise StoreUnavailableError(
            f"{store} is unreachable: {what} failed {len(delays) + 1} times, "
            f"the last with {type(error).__name__}: {error}"
        ) from error
    _log.warning("store call failed; retrying", store=store, what=what, error=str(error))
    return delays[attempt]


async def flush_when_woken(
    wake: asyncio.Event, flush: Callable[[], Awaitable[bool]], retry_s: float
) -> None:
    """A background writer's loop: ``flush`` each time ``wake`` is set, until cancelled.

    ``flush`` answers whether everything pending was written; when not (the store is
    down), the loop pauses ``retry_s`` and tries again, whether or not new work came.
    """
    while True:
        await wake.wait()
        wake.clear()
        if not await flush():
            # Offers meanwhile set the wake-up too; the pause bounds the retries.
            await asyncio.sleep(retry_s)
            wake.set()

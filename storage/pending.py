"""Writes offered on the event loop and made in a worker thread, kept while the store is down.

A service that must never wait for a store (risk's provenance, analytics' fills) *offers*
what it wants written (:meth:`PendingWrites.offer`: no I/O) and runs
:meth:`PendingWrites.run` as a background job: each round writes everything pending in
one worker-thread call, in the order offered. The store's adapter retries a store that
blinks (:mod:`quantmesh.storage.resilience`); what it still could not write is put back,
ahead of newer offers, and tried again every ``retry_s`` with a warning each time. Past
``max_pending`` items the oldest are dropped with an error naming them, so a store that
stays down cannot exhaust memory. At shutdown :meth:`PendingWrites.close` waits for the
write in flight, tries once more and logs what is left.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from quantmesh.runtime.logging import get_logger
from quantmesh.storage.resilience import flush_when_woken

__all__ = ["PendingWrites", "WriteResult"]

T = TypeVar("T")
# What a write did: the items it did not get to, and the store failure that stopped it.
WriteResult = tuple[list[T], BaseException | None]

_log = get_logger("storage.pending")


class PendingWrites(Generic[T]):
    """Items waiting to be written by ``write``, in order.

    Parameters
    ----------
    what:
        What the items are, for log lines, e.g. ``"decision provenance"``.
    url:
        The store's URL (password hidden), for log lines.
    write:
        Writes a batch (in a worker thread) and answers the items it did not get to and
        the failure that stopped it (None when all were written). An item that can
        never be written is for ``write`` to log and skip: returned, it is retried.
    describe:
        An item's name in log lines (e.g. its decision id).
    retry_s:
        Pause before trying again after a write stopped on a store failure.
    max_pending:
        Most items kept unwritten; the oldest go first.
    """

    def __init__(
        self,
        what: str,
        url: str,
        write: Callable[[list[T]], WriteResult[T]],
        describe: Callable[[T], str],
        *,
        retry_s: float,
        max_pending: int,
    ) -> None:
        self._what, self._url = what, url
        self._write, self._describe = write, describe
        self._retry_s, self._max_pending = retry_s, max_pending
        self._pending: deque[T] = deque()
        self._wake = asyncio.Event()
        # The write in a worker thread, if one runs: a cancelled job leaves it running,
        # and closing waits for it before the last write.
        self._writing: tuple[list[T], asyncio.Future[WriteResult[T]]] | None = None
        self.dropped = 0

    @property
    def pending(self) -> int:
        """Items offered and not written yet (the write in flight included)."""
        return len(self._pending) + (len(self._writing[0]) if self._writing else 0)

    def offer(self, items: Iterable[T]) -> None:
        """Queue items to write (no I/O; call it on the loop)."""
        before = len(self._pending)
        self._pending.extend(items)
        if len(self._pending) > before:
            self._bound()
            self._wake.set()

    async def flush(self) -> bool:
        """Write what is pending; False, keeping what is left, when the store is down."""
        if not await self._settle():
            return False
        if not self._pending:
            return True
        batch = list(self._pending)
        self._pending.clear()
        future = asyncio.ensure_future(asyncio.to_thread(self._write, batch))
        self._writing = (batch, future)
        return await self._settle()

    async def run(self) -> None:
        """Write what is offered until cancelled (call :meth:`close` afterwards)."""
        await flush_when_woken(self._wake, self.flush, self._retry_s)

    async def close(self) -> None:
        """The last write: what it cannot write is logged, by name."""
        if not await self.flush():
            _log.error(
                f"{self._what} not written at shutdown",
                url=self._url,
                items=[self._describe(item) for item in self._pending],
            )

    async def _settle(self) -> bool:
        """Wait for the write in flight, if any; put back what it could not write."""
        if self._writing is None:
            return True
        _, future = self._writing
        left, error = await asyncio.shield(future)  # cancelled: still in flight next time
        self._writing = None
        if error is None:
            return True
        self._pending.extendleft(reversed(left))
        self._bound()
        _log.warning(
            f"{self._what} not written yet; kept for the next try",
            url=self._url,
            pending=len(self._pending),
            error=str(error),
        )
        return False

    def _bound(self) -> None:
        excess = len(self._pending) - self._max_pending
        if excess <= 0:
            return
        dropped = [self._pending.popleft() for _ in range(excess)]
        self.dropped += excess
        _log.error(
            f"{self._what} dropped: the store has been down too long",
            url=self._url,
            dropped=excess,
            first=self._describe(dropped[0]),
            last=self._describe(dropped[-1]),
            max_pending=self._max_pending,
        )

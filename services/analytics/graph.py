"""Analytics and the graph store (``QUANTMESH_ANALYTICS_GRAPH_URL``): fills into provenance.

The report job *offers* the fills of each batch it reads (:meth:`FillProvenance.offer`:
no I/O, before the batch is committed), and a background job attaches them to their
decisions' orders (:mod:`~quantmesh.services.analytics.provenance`) in a worker thread,
everything pending in one round, one write per order. The report stream never waits for
the graph store: the adapter retries a store that blinks with backoff
(:mod:`quantmesh.storage.resilience`); what it still could not write stays pending, in
order, and is tried again every ``retry_s``, with a warning each time. Past
``max_pending`` fills the oldest are dropped, with an error naming them. At shutdown the
job writes what is pending, logs what it could not, and closes the store.

Provenance does not hold analytics' report cursor back: a crash loses the fills still
pending (analytics' store and the audit log have every one of them). A batch read again
(after a failed commit) offers its fills again, which attaching ignores.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable

from quantmesh.runtime.logging import get_logger
from quantmesh.services.analytics.provenance import FillLink, by_order
from quantmesh.storage.graph import GraphPort, open_graph
from quantmesh.storage.resilience import TRANSIENT, flush_when_woken

__all__ = ["MAX_PENDING", "FillProvenance"]

# Fills kept while the store is down (a few hundred bytes each): days of live trading.
MAX_PENDING = 100_000

# What a write did: the fills it did not get to, and the store failure that stopped it.
_Written = tuple[list[FillLink], BaseException | None]

_log = get_logger("analytics.graph")


class FillProvenance:
    """Attaches the fills analytics reads to their decisions' provenance.

    Parameters
    ----------
    graph:
        The store (open; this object closes it when its job ends).
    retry_s:
        Pause before trying again after the store stayed unreachable through the
        adapter's own retries.
    max_pending:
        Most fills kept unwritten; the oldest go first.
    """

    def __init__(
        self, graph: GraphPort, *, retry_s: float = 1.0, max_pending: int = MAX_PENDING
    ) -> None:
        self.graph = graph
        self._retry_s, self._max_pending = retry_s, max_pending
        self._pending: deque[FillLink] = deque()
        self._wake = asyncio.Event()
        # The write in a worker thread, if one runs: a cancelled job leaves it running,
        # and closing waits for it before the last write.
        self._writing: tuple[list[FillLink], asyncio.Future[_Written]] | None = None
        self.dropped = 0

    @classmethod
    def open(
        cls, url: str, setting: str, *, retry_s: float = 1.0, max_pending: int = MAX_PENDING
    ) -> FillProvenance:
        """Open the store ``url`` names (at build, so that a bad one stops the service).

        Raises
        ------
        StoreConfigError
            A malformed URL, an unknown scheme, refused credentials; names ``setting``.
        StoreUnavailableError
            The store cannot be reached; names ``setting``.
        """
        graph = open_graph(url, setting)
        _log.info("fills attached to decision provenance", url=graph.url)
        return cls(graph, retry_s=retry_s, max_pending=max_pending)

    @property
    def pending(self) -> int:
        """Fills offered and not written yet."""
        return len(self._pending) + (len(self._writing[0]) if self._writing else 0)

    def offer(self, links: Iterable[FillLink]) -> None:
        """Queue fills to attach (no I/O; call it on the loop)."""
        before = len(self._pending)
        self._pending.extend(links)
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

    async def run(self, shutdown: asyncio.Event) -> None:
        """Attach offered fills until cancelled (the runtime's background job); then write
        what is pending and close the store."""
        try:
            await flush_when_woken(self._wake, self.flush, self._retry_s)
        finally:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._close())

    # --- internals ------------------------------------------------------------------------

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
            "fills not attached to their decisions yet; kept for the next try",
            url=self.graph.url,
            pending=len(self._pending),
            error=str(error),
        )
        return False

    def _write(self, batch: list[FillLink]) -> _Written:
        """Attach ``batch`` (in a worker thread), one order at a time in the order met:
        the fills it did not get to, and the store failure that stopped it, if one did.
        An order that can never be written is logged and skipped rather than retried."""
        groups = by_order(batch)
        for done, group in enumerate(groups):
            decision_id, order_id = group[0].decision_id, group[0].order_id
            try:
                self.graph.record_fills(decision_id, order_id, [link.record for link in group])
            except TRANSIENT as error:  # StoreUnavailableError included
                return [link for left in groups[done:] for link in left], error
            except Exception:
                _log.exception(
                    "fills cannot be attached to their decision; skipped",
                    decision_id=decision_id,
                    order_id=order_id,
                    fills=[link.fill_id for link in group],
                )
        return [], None

    def _bound(self) -> None:
        excess = len(self._pending) - self._max_pending
        if excess <= 0:
            return
        dropped = [self._pending.popleft() for _ in range(excess)]
        self.dropped += excess
        _log.error(
            "fills dropped from decision provenance: the graph store has been down too long",
            url=self.graph.url,
            dropped=excess,
            first=f"{dropped[0].decision_id}/{dropped[0].order_id}/{dropped[0].fill_id}",
            last=f"{dropped[-1].decision_id}/{dropped[-1].order_id}/{dropped[-1].fill_id}",
            max_pending=self._max_pending,
        )

    async def _close(self) -> None:
        if not await self.flush():
            _log.error(
                "fills not attached to their decisions at shutdown",
                url=self.graph.url,
                fills=[f"{link.order_id}/{link.fill_id}" for link in self._pending],
            )
        await asyncio.to_thread(self.graph.close)

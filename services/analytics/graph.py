"""Analytics and the graph store (``QUANTMESH_ANALYTICS_GRAPH_URL``): fills into provenance.

The report job *offers* the fills of each batch it reads (:meth:`FillProvenance.offer`:
no I/O, before the batch is committed), and a background job attaches them to their
decisions' orders (:mod:`~quantmesh.services.analytics.provenance`) in a worker thread,
everything pending in one round, one write per order. The report stream never waits for
the graph store: what it cannot take stays pending, is retried, and past ``max_pending``
the oldest fills are dropped with an error naming them (:mod:`quantmesh.storage.pending`).
At shutdown the job writes what is pending, logs what it could not, and closes the store.

Provenance does not hold analytics' report cursor back: a crash loses the fills still
pending (analytics' store and the audit log have every one of them). A batch read again
(after a failed commit) offers its fills again, which attaching ignores.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from quantmesh.runtime.logging import get_logger
from quantmesh.services.analytics.provenance import FillLink, by_order
from quantmesh.storage.graph import GraphPort, open_graph
from quantmesh.storage.pending import PendingWrites, WriteResult
from quantmesh.storage.resilience import TRANSIENT

__all__ = ["MAX_PENDING", "FillProvenance"]

# Fills kept while the store is down (a few hundred bytes each): days of live trading.
MAX_PENDING = 100_000

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
        self._writes: PendingWrites[FillLink] = PendingWrites(
            "fills of decision provenance",
            graph.url,
            self._write,
            lambda link: f"{link.decision_id}/{link.order_id}/{link.fill_id}",
            retry_s=retry_s,
            max_pending=max_pending,
        )

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
        return self._writes.pending

    @property
    def dropped(self) -> int:
        """Fills dropped because the store stayed down past ``max_pending``."""
        return self._writes.dropped

    def offer(self, links: Iterable[FillLink]) -> None:
        """Queue fills to attach (no I/O; call it on the loop)."""
        self._writes.offer(links)

    async def flush(self) -> bool:
        """Write what is pending; False, keeping what is left, when the store is down."""
        return await self._writes.flush()

    async def run(self, shutdown: asyncio.Event) -> None:
        """Attach offered fills until cancelled (the runtime's background job); then write
        what is pending and close the store."""
        try:
            await self._writes.run()
        finally:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._close())

    # --- internals ------------------------------------------------------------------------

    def _write(self, batch: list[FillLink]) -> WriteResult[FillLink]:
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

    async def _close(self) -> None:
        await self._writes.close()
        await asyncio.to_thread(self.graph.close)

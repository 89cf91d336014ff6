"""Risk and the graph store (``QUANTMESH_RISK_GRAPH_URL``): currency edges in, provenance out.

Both are kept off the signal path; a signal never waits for the graph store.

**Currency edges.** At start (:meth:`RiskGraph.open`) risk adds the edges of the symbols
it sizes to the currency graph, keeping whatever another writer stored on an edge that
exists already (the recorder's correlations, see
:func:`~quantmesh.services.risk.exposure.merge_symbol_edges`), and keeps every edge in
memory for exposure (:attr:`RiskGraph.edges`). A background job reads them again every
``refresh_s``; a failed read keeps the edges it has.

**Provenance.** The driver and ``EvaluateSignal`` *offer* each evaluated decision
(:meth:`RiskGraph.offer`: no I/O, after the decision's orders were submitted). The
background job builds the provenance (:func:`~quantmesh.services.risk.provenance.
signal_provenance`) and records it in a worker thread, everything pending in one round.
What the store cannot take stays pending, is retried, and past ``max_pending`` the
oldest are dropped with an error naming them (:mod:`quantmesh.storage.pending`): trading
goes on whatever the graph store does. At shutdown the job writes what is pending, logs
what it could not, and closes the store.

Unlike the audit log, provenance does not hold the driver's cursor back: a crash loses
the decisions still pending (the audit log has every one of them).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from quantmesh.decision.v1 import decision_pb2
from quantmesh.risk.v1 import risk_pb2
from quantmesh.runtime.logging import get_logger
from quantmesh.services.risk.exposure import merge_symbol_edges, symbol_edges
from quantmesh.services.risk.provenance import (
    OrderAnswer,
    signal_provenance,
    with_recorded_orders,
)
from quantmesh.services.risk.sizing import SymbolSpec
from quantmesh.storage.graph import DecisionProvenance, GraphPort, SymbolEdge, open_graph
from quantmesh.storage.pending import PendingWrites, WriteResult
from quantmesh.storage.resilience import TRANSIENT
from quantmesh.storage.urls import StoreConfigError, StoreUnavailableError

__all__ = ["MAX_PENDING", "RiskGraph"]

# Decisions kept while the store is down (a few KB each): hours of live trading.
MAX_PENDING = 10_000

_log = get_logger("risk.graph")


@dataclass(frozen=True, slots=True)
class _Pending:
    """A decision offered and not yet recorded: what its provenance is built from."""

    decision_id: str
    signal: decision_pb2.Signal
    decision: risk_pb2.RiskDecision
    orders: tuple[OrderAnswer, ...]
    dry_run: bool

    def provenance(self) -> DecisionProvenance:
        return signal_provenance(
            self.decision_id, self.signal, self.decision, self.orders, dry_run=self.dry_run
        )

    @property
    def keeps_recorded_orders(self) -> bool:
        """An order without an id (ALREADY_EXISTS): keep the orders recorded before."""
        return any(not answer.order.order_id for answer in self.orders)


class RiskGraph:
    """Risk's side of the graph store: the edges exposure uses, the decisions' provenance.

    Parameters
    ----------
    graph:
        The store (open; this object closes it when its job ends).
    ours:
        The edges of risk's symbols.
    edges:
        Every edge as read at start.
    refresh_s:
        Pause between two reads of the edges.
    retry_s:
        Pause before trying again to record after the store stayed unreachable through
        the adapter's own retries.
    max_pending:
        Most decisions kept unrecorded; the oldest go first.
    """

    def __init__(
        self,
        graph: GraphPort,
        ours: Sequence[SymbolEdge],
        edges: Sequence[SymbolEdge],
        *,
        refresh_s: float = 60.0,
        retry_s: float = 1.0,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.graph = graph
        self._ours = tuple(ours)
        self._edges = tuple(edges)
        self._refresh_s = refresh_s
        self._writes: PendingWrites[_Pending] = PendingWrites(
            "decision provenance",
            graph.url,
            self._write,
            lambda item: item.decision_id,
            retry_s=retry_s,
            max_pending=max_pending,
        )
        # The read of edges in a worker thread, if one runs: a cancelled refresh leaves it
        # running, and closing waits for it.
        self._reading: asyncio.Future[tuple[SymbolEdge, ...]] | None = None

    @classmethod
    def open(
        cls,
        url: str,
        setting: str,
        symbols: Mapping[str, SymbolSpec],
        *,
        refresh_s: float = 60.0,
        retry_s: float = 1.0,
        max_pending: int = MAX_PENDING,
    ) -> RiskGraph:
        """Open the store ``url`` names, add risk's symbols to its currency graph, read it.

        Raises
        ------
        StoreConfigError
            A malformed URL, an unknown scheme, refused credentials; names ``setting``.
        StoreUnavailableError
            The store cannot be reached, or refuses the symbols; names ``setting``.
        """
        graph = open_graph(url, setting)
        ours = symbol_edges(symbols)
        try:
            edges, writes = merge_symbol_edges(ours, graph.symbols())
            for edge in writes:
                graph.upsert_symbol(edge)
        except (StoreConfigError, StoreUnavailableError):
            graph.close()
            raise
        except Exception as error:
            graph.close()
            raise StoreUnavailableError(
                f"{setting}={graph.url}: cannot add risk's symbols to the currency graph: "
                f"{type(error).__name__}: {error}"
            ) from error
        _log.info(
            "currency graph",
            url=graph.url,
            symbols=[edge.symbol for edge in edges],
            added=[edge.symbol for edge in writes],
        )
        return cls(
            graph, ours, edges, refresh_s=refresh_s, retry_s=retry_s, max_pending=max_pending
        )

    # --- currency edges -----------------------------------------------------------------

    @property
    def edges(self) -> tuple[SymbolEdge, ...]:
        """The currency graph's edges as last read (no I/O)."""
        return self._edges

    async def refresh_edges(self) -> bool:
        """Read the edges again; False, keeping the ones held, when the read failed."""
        if self._reading is None:
            self._reading = asyncio.ensure_future(asyncio.to_thread(self.graph.symbols))
        try:
            stored = await asyncio.shield(self._reading)
        except TRANSIENT as error:
            _log.warning("currency graph not read; keeping its last edges", error=str(error))
            return False
        except Exception:
            _log.exception("currency graph not read; keeping its last edges")
            return False
        finally:
            if self._reading.done():
                self._reading = None
        self._edges, _ = merge_symbol_edges(self._ours, stored)
        return True

    # --- provenance ---------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Decisions offered and not recorded yet."""
        return self._writes.pending

    @property
    def dropped(self) -> int:
        """Decisions dropped because the store stayed down past ``max_pending``."""
        return self._writes.dropped

    def offer(
        self,
        decision_id: str,
        signal: decision_pb2.Signal,
        decision: risk_pb2.RiskDecision,
        orders: Sequence[OrderAnswer] = (),
        *,
        dry_run: bool = False,
    ) -> None:
        """Queue a decision's provenance (no I/O; call it on the loop once its orders are
        submitted). The messages must not change afterwards."""
        self._writes.offer([_Pending(decision_id, signal, decision, tuple(orders), dry_run)])

    async def flush(self) -> bool:
        """Record what is pending; False, keeping what is left, when the store is down."""
        return await self._writes.flush()

    async def run(self, shutdown: asyncio.Event) -> None:
        """Record offered decisions and refresh the edges until cancelled (the runtime's
        background job); then record what is pending and close the store."""
        refresher = asyncio.create_task(self._refresh_every())
        try:
            await self._writes.run()
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._close(refresher))

    # --- internals ------------------------------------------------------------------------

    async def _refresh_every(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            await self.refresh_edges()

    def _write(self, batch: list[_Pending]) -> WriteResult[_Pending]:
        """Record ``batch`` in order (in a worker thread): the decisions it did not get
        to, and the store failure that stopped it, if one did. One that can never be
        recorded is logged and skipped rather than retried for ever."""
        for done, item in enumerate(batch):
            try:
                provenance = item.provenance()
                if item.keeps_recorded_orders:
                    recorded = self.graph.provenance(item.decision_id)
                    provenance = with_recorded_orders(provenance, recorded)
                self.graph.record_provenance(provenance)
            except TRANSIENT as error:  # StoreUnavailableError included
                return batch[done:], error
            except Exception:
                _log.exception(
                    "decision provenance cannot be recorded; skipped",
                    decision_id=item.decision_id,
                    signal_id=item.signal.signal_id,
                )
        return [], None

    async def _close(self, refresher: asyncio.Task[None]) -> None:
        await asyncio.gather(refresher, return_exceptions=True)
        if self._reading is not None:
            await asyncio.gather(self._reading, return_exceptions=True)
        await self._writes.close()
        await asyncio.to_thread(self.graph.close)

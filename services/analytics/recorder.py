"""The analytics service's background jobs: record execution's fills and market data's marks.

Both jobs read a live stream from the cursor stored with the last batch they recorded
(cursor + 1), and commit each batch together with its new cursor (see
:mod:`~quantmesh.services.analytics.store`). A dropped stream, a producer that drains or
restarts, or one not started yet, is resumed from the stored cursor, so nothing is
missed or recorded twice, across reconnects and across restarts of analytics itself.

- :func:`record_reports` consumes ``ExecutionService.StreamExecutionReports`` (a live
  stream that never ends) and records every report that carries a fill; with a graph
  store, it also offers each fill to the writer that attaches it to its decision's
  provenance (:mod:`~quantmesh.services.analytics.graph`), which never holds it up.
- :func:`record_marks` consumes market data's ticks and keeps the last tick of each
  symbol and UTC hour (:func:`hourly_marks`): enough to draw the equity curve and to
  value open positions hour by hour, with the latest tick as the final mark, at a small
  fraction of the ticks' volume.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import grpc
import numpy as np

from quantmesh.execution.v1 import execution_pb2
from quantmesh.marketdata.v1 import marketdata_pb2, marketdata_pb2_grpc
from quantmesh.mesh.transport import open_channel
from quantmesh.observability.audit.chain import RecordKind
from quantmesh.observability.audit.decisions import DecisionLog
from quantmesh.runtime.logging import get_logger
from quantmesh.runtime.metrics import MARKET_TIME, REPLAY_FINISHED, TICKS
from quantmesh.runtime.subscriber import StreamDroppedError
from quantmesh.services.analytics.convert import fill_of_report
from quantmesh.services.analytics.graph import FillProvenance
from quantmesh.services.analytics.ledger import Mark
from quantmesh.services.analytics.provenance import fill_links
from quantmesh.services.analytics.store import H1_MS, AnalyticsStore
from quantmesh.services.execution.client import ExecutionReportSubscriber
from quantmesh.services.marketdata.client import TickSubscriber
from quantmesh.services.marketdata.convert import tick_columns_from_proto
from quantmesh.services.marketdata.sources import TickColumns

__all__ = [
    "hourly_marks",
    "record_marks",
    "record_reports",
    "tick_stream_key",
]

RETRY_SECONDS = 1.0
# After an error that is not the network's (a malformed report, a full disk), retrying
# at once would only repeat it; the job keeps trying, slowly, and says why each time.
FAULT_RETRY_SECONDS = 5.0

_log = get_logger("analytics")


def tick_stream_key(symbols: Sequence[str]) -> str:
    """What a tick seq counts in: the sorted symbols of the merged stream."""
    return ",".join(symbols)


def hourly_marks(columns: TickColumns, symbols: Sequence[str], digits: Sequence[int]) -> list[Mark]:
    """The last tick of each symbol and UTC hour in a batch, as marks in time order.

    ``symbols`` and ``digits`` are the batch's dictionary (``symbol_index`` refers to
    it). The last row of the batch's latest hour is kept too, so after every batch the
    store holds the latest quote of each symbol.
    """
    if len(columns) == 0:
        return []
    hours = columns.time_msc // H1_MS
    rows: list[int] = []
    for index in np.unique(columns.symbol_index):
        at = np.flatnonzero(columns.symbol_index == index)
        last_of_hour = np.append(hours[at][1:] != hours[at][:-1], True)
        rows.extend(int(k) for k in at[last_of_hour])
    rows.sort()
    return [
        Mark(
            symbols[int(columns.symbol_index[k])],
            int(columns.time_msc[k]),
            int(columns.bid[k]),
            int(columns.ask[k]),
            int(digits[int(columns.symbol_index[k])]),
        )
        for k in rows
    ]


async def record_reports(
    store: AnalyticsStore,
    execution_address: str,
    batch_size: int,
    shutdown: asyncio.Event,
    audit: DecisionLog | None = None,
    provenance: FillProvenance | None = None,
) -> None:
    """Record execution's fills until shutdown, resuming from the stored cursor.

    With ``audit``, every report of a decision also goes to the audit log, committed
    before the batch's cursor (a crash re-reads the batch, and records it again). With
    ``provenance``, the batch's fills are offered to it before the cursor is committed
    (no I/O: a shutdown cancelling the commit cannot lose them; a batch read again
    offers them again, which attaching ignores).
    """
    while not shutdown.is_set():
        pause = RETRY_SECONDS
        from_seq = await asyncio.to_thread(store.report_cursor) + 1
        try:
            async with open_channel(execution_address, "execution") as channel:
                subscriber = ExecutionReportSubscriber(channel, from_seq, batch_size)
                async for batch in subscriber.batches():
                    fills = [f for r in batch.reports if (f := fill_of_report(r)) is not None]
                    if provenance is not None and fills:
                        provenance.offer(fill_links(batch.reports))
                    if audit is not None:
                        await _audit_reports(audit, batch.reports)
                    last = batch.reports[-1].seq
                    recorded = await asyncio.to_thread(store.record_reports, fills, last)
                    if recorded:
                        _log.debug("fills recorded", count=len(recorded), through_seq=last)
        except (grpc.aio.AioRpcError, StreamDroppedError) as error:
            status = error.code().name if isinstance(error, grpc.aio.AioRpcError) else "DROPPED"
            _log.warning("execution reports interrupted", status=status)
        except Exception:
            _log.exception("cannot record execution reports; retrying")
            pause = FAULT_RETRY_SECONDS
        await _pause(shutdown, pause)


async def _audit_reports(
    audit: DecisionLog, reports: Sequence[execution_pb2.ExecutionReport]
) -> None:
    for report in reports:
        # Orders of a signal are its decision's; a stop or target the broker triggered
        # is recorded under its own key.
        decision_id = report.signal_id or report.idempotency_key
        await audit.record(
            RecordKind.EXECUTION_REPORT,
            decision_id,
            report,
            traceparent=report.trace.traceparent,
        )
    await audit.flush()


async def record_marks(
    store: AnalyticsStore,
    marketdata_address: str,
    symbols: Sequence[str],
    batch_size: int,
    shutdown: asyncio.Event,
) -> None:
    """Record hourly marks of ``symbols`` until market data's stream ends or shutdown.

    Only the symbols market data serves are read. The stored cursor counts in the stream
    of those symbols; if market data serves another set, the new stream is read from its
    start, and marks older than those stored for a symbol are ignored.
    """
    while not shutdown.is_set():
        pause = RETRY_SECONDS
        try:
            async with open_channel(marketdata_address, "marketdata") as channel:
                stub = marketdata_pb2_grpc.MarketDataServiceStub(channel)
                listing = await stub.ListSymbols(marketdata_pb2.ListSymbolsRequest(), timeout=10)
                served = sorted({info.name for info in listing.symbols} & set(symbols))
                if not served:
                    raise LookupError(f"market data serves none of the mark symbols {symbols}")
                stream = tick_stream_key(served)
                from_seq = await asyncio.to_thread(store.tick_cursor, stream) + 1
                subscriber = TickSubscriber(
                    channel, served, from_seq=from_seq, batch_size=batch_size
                )
                async for batch in subscriber.batches():
                    columns = tick_columns_from_proto(batch)
                    marks = hourly_marks(columns, batch.symbols, batch.symbol_digits)
                    last = columns.seq + len(columns) - 1
                    await asyncio.to_thread(store.record_marks, marks, stream, last)
                    if len(columns):
                        TICKS.labels("analytics").inc(len(columns))
                        MARKET_TIME.labels("analytics").set(int(columns.time_msc[-1]))
                REPLAY_FINISHED.labels("analytics").set(1)
                _log.info("tick stream ended: every mark recorded", through_seq=subscriber.next_seq)
                return  # a finite replay has ended
        except (grpc.aio.AioRpcError, StreamDroppedError) as error:
            status = error.code().name if isinstance(error, grpc.aio.AioRpcError) else "DROPPED"
            _log.warning("ticks interrupted", status=status)
        except Exception:
            _log.exception("cannot record marks; retrying")
            pause = FAULT_RETRY_SECONDS
        await _pause(shutdown, pause)


async def _pause(shutdown: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(shutdown.wait(), timeout=seconds)

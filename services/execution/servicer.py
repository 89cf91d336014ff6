"""gRPC adapter of the execution service: orders in, execution reports out.

The engine is synchronous and serialised by its own lock (every change is an fsynced
SQLite transaction), so calls into it run in a worker thread and never block the event
loop. The tick feed (:func:`tick_feed`) drives fills, stops and targets.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from quantmesh.execution.v1 import execution_pb2, execution_pb2_grpc
from quantmesh.marketdata.v1 import marketdata_pb2, marketdata_pb2_grpc
from quantmesh.mesh.transport import open_channel
from quantmesh.runtime.errors import InvalidArgument, NotFound, abort_on_domain_error
from quantmesh.runtime.logging import get_logger
from quantmesh.runtime.metrics import (
    EQUITY,
    EXECUTION_REPORTS,
    FILLS,
    MARKET_TIME,
    ORDERS,
    REPLAY_FINISHED,
    TICKS,
    timed,
)
from quantmesh.runtime.streams import CreditFlow, first_subscription, produce, read_controls
from quantmesh.services.execution import convert, spans
from quantmesh.services.execution.accounts import PositionView
from quantmesh.services.execution.clock import ClockMode, MarketClock
from quantmesh.services.execution.core import ExecutionEngine
from quantmesh.services.execution.orders import OrderState
from quantmesh.services.execution.store import ExecutionReport
from quantmesh.services.marketdata.client import TickSubscriber
from quantmesh.services.marketdata.convert import tick_columns_from_proto
from quantmesh.services.marketdata.sources import Symbol, TickColumns

SERVICE_NAME = execution_pb2.DESCRIPTOR.services_by_name["ExecutionService"].full_name
DEFAULT_REPORT_BATCH = 100
MAX_REPORT_BATCH = 10_000
EQUITY_REFRESH_SECONDS = 0.5  # how often the tick feed refreshes the equity gauge

Context = grpc.aio.ServicerContext[Any, Any]

_log = get_logger("execution")


@dataclass(frozen=True, slots=True)
class ReportBatch:
    """Consecutive execution reports, the first numbered ``seq``."""

    seq: int
    reports: tuple[ExecutionReport, ...]

    def __len__(self) -> int:
        return len(self.reports)


class ExecutionServicer(execution_pb2_grpc.ExecutionServiceServicer):
    """Serves one :class:`ExecutionEngine` (one paper account)."""

    def __init__(
        self,
        engine: ExecutionEngine,
        symbols: dict[str, Symbol],
        reports_changed: asyncio.Condition,
        shutdown: asyncio.Event,
        clock: MarketClock | None = None,
    ) -> None:
        self._engine = engine
        self._clock = clock or MarketClock(ClockMode.FREE)
        self._symbols = symbols
        self._changed = reports_changed
        self._shutdown = shutdown
        self._account = engine.account_id
        self._currency = engine.currency

    def _digits(self, symbol: str) -> int:
        return self._symbols[symbol].digits

    def _check_account(self, account_id: str) -> None:
        if account_id and account_id != self._account:
            raise NotFound(
                f"unknown account {account_id!r}; this execution serves {self._account!r}"
            )

    def _order(self, order: Any) -> execution_pb2.Order:
        return convert.order_to_proto(order, self._digits(order.symbol), self._currency)

    async def SubmitOrder(
        self, request: execution_pb2.SubmitOrderRequest, context: Context
    ) -> execution_pb2.SubmitOrderResponse:
        async with abort_on_domain_error(context):
            with spans.order_span(request.order, self._engine.broker.name) as span:
                order_request = convert.order_request_from_proto(
                    request.order, self._account, self._symbols
                )
                decided_ms = request.order.risk_decision.time_msc
                if self._clock.mode is ClockMode.PIPELINE and decided_ms > 0:
                    # A replayed order meets the market of its decision's moment, never an
                    # earlier one (e.g. after a restart, before risk grants time again).
                    await self._clock.grant(decided_ms)
                    await self._clock.wait_through(decided_ms)
                with timed("execution"):
                    order, duplicate = await asyncio.to_thread(self._engine.submit, order_request)
                spans.record_order(span, order, duplicate)
        return execution_pb2.SubmitOrderResponse(order=self._order(order), duplicate=duplicate)

    async def CancelOrder(
        self, request: execution_pb2.CancelOrderRequest, context: Context
    ) -> execution_pb2.CancelOrderResponse:
        async with abort_on_domain_error(context):
            self._check_account(request.account_id)
            order = await asyncio.to_thread(self._engine.cancel, request.order_id)
        return execution_pb2.CancelOrderResponse(order=self._order(order))

    async def GetOrder(
        self, request: execution_pb2.GetOrderRequest, context: Context
    ) -> execution_pb2.GetOrderResponse:
        async with abort_on_domain_error(context):
            self._check_account(request.account_id)
            kind = request.WhichOneof("key")
            if kind == "order_id":
                order = await asyncio.to_thread(self._engine.order, request.order_id)
            elif kind == "idempotency_key":
                order = await asyncio.to_thread(self._engine.order_by_key, request.idempotency_key)
            else:
                raise InvalidArgument("set order_id or idempotency_key")
        return execution_pb2.GetOrderResponse(order=self._order(order))

    async def ListOrders(
        self, request: execution_pb2.ListOrdersRequest, context: Context
    ) -> execution_pb2.ListOrdersResponse:
        async with abort_on_domain_error(context):
            self._check_account(request.account_id)
            orders, token = await asyncio.to_thread(
                lambda: self._engine.orders(
                    states=[OrderState(state) for state in request.states],
                    symbol=request.symbol,
                    from_time_ms=request.from_time_ms,
                    to_time_ms=request.to_time_ms,
                    page_size=request.page_size,
                    page_token=request.page_token,
                )
            )
        return execution_pb2.ListOrdersResponse(
            orders=[self._order(order) for order in orders], next_page_token=token
        )

    async def ListPositions(
        self, request: execution_pb2.ListPositionsRequest, context: Context
    ) -> execution_pb2.ListPositionsResponse:
        async with abort_on_domain_error(context):
            self._check_account(request.account_id)
            views = await asyncio.to_thread(self._engine.positions, request.symbol)
        return execution_pb2.ListPositionsResponse(positions=[self._position(v) for v in views])

    def _position(self, view: PositionView) -> execution_pb2.Position:
        return convert.position_to_proto(view, self._digits(view.position.symbol), self._currency)

    async def GetAccount(
        self, request: execution_pb2.GetAccountRequest, context: Context
    ) -> execution_pb2.GetAccountResponse:
        async with abort_on_domain_error(context):
            self._check_account(request.account_id)
            account = await asyncio.to_thread(self._engine.account)
        return execution_pb2.GetAccountResponse(account=convert.account_to_proto(account))

    async def AdvanceMarketTime(
        self, request: execution_pb2.AdvanceMarketTimeRequest, context: Context
    ) -> execution_pb2.AdvanceMarketTimeResponse:
        async with abort_on_domain_error(context):
            if request.time_ms < 0:
                raise InvalidArgument(f"time_ms must not be negative, got {request.time_ms}")
            if request.account_id:
                self._check_account(request.account_id)
            await self._clock.grant(request.time_ms)
            if request.wait:
                await self._clock.wait_through(request.time_ms)
            clock = self._clock
            reply = execution_pb2.AdvanceMarketTimeResponse(
                granted_time_ms=clock.granted_ms,
                market_time_ms=clock.market_ms,
                ticks_processed=clock.ticks_processed,
                feed_ended=clock.feed_ended,
            )
            if request.account_id:
                account, positions = await asyncio.to_thread(self._engine.snapshot)
                reply.account.CopyFrom(convert.account_to_proto(account))
                reply.positions.extend(self._position(view) for view in positions)
        return reply

    async def StreamExecutionReports(
        self,
        request_iterator: AsyncIterator[execution_pb2.StreamExecutionReportsRequest],
        context: Context,
    ) -> AsyncIterator[execution_pb2.StreamExecutionReportsResponse]:
        async with abort_on_domain_error(context):
            subscription = await first_subscription(request_iterator)
            if subscription is None:
                return
            for account_id in subscription.account_ids:
                self._check_account(account_id)
            batch_size = subscription.batch_size or DEFAULT_REPORT_BATCH
            if not 1 <= batch_size <= MAX_REPORT_BATCH:
                raise InvalidArgument(f"batch_size must be 1..{MAX_REPORT_BATCH}, got {batch_size}")
            flow = CreditFlow.starting_at(subscription.from_seq, subscription.initial_credit)
            reader = asyncio.create_task(read_controls(request_iterator, flow))
            try:
                batches = self._report_batches(subscription.from_seq, batch_size)
                async for message in produce(
                    batches, flow, self._shutdown, self._encode, stream="execution"
                ):
                    yield message
            finally:
                reader.cancel()

    async def _report_batches(self, from_seq: int, batch_size: int) -> AsyncIterator[ReportBatch]:
        # A live stream: it waits for new reports and never ends on its own.
        next_seq = from_seq
        while not self._shutdown.is_set():
            reports = await asyncio.to_thread(self._engine.reports_since, next_seq, batch_size)
            if reports:
                yield ReportBatch(next_seq, tuple(reports))
                next_seq = reports[-1].seq + 1
                continue
            async with self._changed:
                # Woken by the engine's commits; the timeout also notices a shutdown.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=1.0)

    def _encode(self, batch: ReportBatch) -> execution_pb2.StreamExecutionReportsResponse:
        reports = [
            convert.report_to_proto(report, self._digits(report.symbol), self._currency)
            for report in batch.reports
        ]
        return execution_pb2.StreamExecutionReportsResponse(
            batch=execution_pb2.ExecutionReportBatch(seq=batch.seq, reports=reports)
        )


async def tick_feed(
    engine: ExecutionEngine,
    clock: MarketClock,
    marketdata_address: str,
    symbols: Sequence[str],
    batch_size: int,
    speed: float,
    shutdown: asyncio.Event,
) -> None:
    """Feed market data's ticks of ``symbols`` to the engine, as far as ``clock`` allows.

    Only the symbols market data serves are subscribed. The feed starts after the last
    tick the engine stored and resumes from the next tick after an interruption.
    """
    from_seq = engine.resume_tick_seq
    equity_shown = 0.0  # monotonic time the equity gauge was last refreshed
    while not shutdown.is_set():
        try:
            async with open_channel(marketdata_address, "marketdata") as channel:
                stub = marketdata_pb2_grpc.MarketDataServiceStub(channel)
                listing = await stub.ListSymbols(marketdata_pb2.ListSymbolsRequest(), timeout=10)
                served = sorted({info.name for info in listing.symbols} & set(symbols))
                subscriber = TickSubscriber(
                    channel, served, from_seq=from_seq, batch_size=batch_size, speed=speed
                )
                async for batch in subscriber.batches():
                    columns = tick_columns_from_proto(batch)
                    await _feed_as_granted(engine, clock, columns, list(batch.symbols))
                    if time.monotonic() - equity_shown > EQUITY_REFRESH_SECONDS:
                        equity_shown = time.monotonic()
                        account = await asyncio.to_thread(engine.account)
                        EQUITY.labels(engine.account_id).set(float(account.equity))
                    from_seq = subscriber.next_seq
                await clock.ended()
                REPLAY_FINISHED.labels("execution").set(1)
                _log.info("tick feed ended", ticks=clock.ticks_processed, next_seq=from_seq)
                return  # a finite replay has ended
        except grpc.aio.AioRpcError as error:
            _log.warning("tick feed interrupted", status=error.code().name, resume_from=from_seq)
            await asyncio.sleep(1.0)


async def _feed_as_granted(
    engine: ExecutionEngine, clock: MarketClock, columns: TickColumns, symbols: list[str]
) -> None:
    times = columns.time_msc
    start = 0
    while start < len(columns):
        # Read the grant once: it may grow while the engine works, and only what was
        # granted before the work began has been processed.
        granted = clock.granted_ms
        stop = int(np.searchsorted(times, granted, side="right"))
        if stop <= start:
            # The next tick is later than the grant: everything up to the grant has acted.
            await clock.processed(ticks=0, through_ms=granted, market_ms=0)
            await clock.wait_grant_beyond(granted)
            continue
        await asyncio.to_thread(engine.on_ticks, columns.rows(start, stop), symbols)
        last = int(times[stop - 1])
        # A whole batch is through its last ms only once a later tick shows up.
        through = granted if stop < len(columns) else last - 1
        await clock.processed(ticks=stop - start, through_ms=through, market_ms=last)
        TICKS.labels("execution").inc(stop - start)
        MARKET_TIME.labels("execution").set(last)
        start = stop


class ReportSignal:
    """Wakes report streams when the engine commits (the engine runs in worker threads)."""

    def __init__(self) -> None:
        self.changed = asyncio.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def __call__(self, reports: Sequence[ExecutionReport]) -> None:
        spans.record_fills(reports)
        for report in reports:
            EXECUTION_REPORTS.labels(report.state.name).inc()
            if report.state is OrderState.NEW:
                ORDERS.labels(report.account_id).inc()
            if report.fill_volume:
                FILLS.labels(report.symbol).inc()
        if self._loop is not None and not self._loop.is_closed():
            asyncio.run_coroutine_threadsafe(self._notify(), self._loop)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

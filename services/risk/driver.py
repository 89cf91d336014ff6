"""The driver: the one path from a signal to an order.

It reads decision's signal stream (HOLDs included, so the drift monitor sees every
prediction and market time moves on quiet hours too) and, for each BUY, SELL or CLOSE
at market time T:

1. grants execution the market up to T and waits for it (``AdvanceMarketTime(T,
   wait=True)``), so the order meets the market of its signal's moment whatever the
   replay speed;
2. reads the account and its open positions from execution;
3. evaluates the signal (:meth:`DurableRiskEngine.evaluate`); a rejected signal stops
   here and never becomes an order;
4. submits the approved order with the decision and all its verdicts attached: the
   signal id is the idempotency key (``signal_id:position_id`` for each position a
   CLOSE closes);
5. offers the decision's provenance (signal, prediction, model version, feature row,
   orders) to the graph store's background writer (:mod:`.graph`), approved or
   rejected: only once the orders are submitted, and a graph store that is down never
   holds up trading.

After a batch it grants execution the time of the batch's last signal and only then
moves its durable cursor past the batch. **Exactly once**: the cursor moves only after
every order of the batch is acknowledged, so a crash re-handles at most that batch, and
execution answers a known key with ``duplicate = true`` (or ALREADY_EXISTS when the
re-evaluation sized it differently) instead of sending a second order. A CLOSE that is
handled again closes only positions opened before its time, never those of later signals.

Execution restarting (UNAVAILABLE) is retried with backoff and the same key; decision
restarting is resumed by :class:`SignalSubscriber`; anything else ends the stream and the
driver reconnects from its cursor, as execution's tick feed does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from google.protobuf.message import Message
from opentelemetry.trace import Span

from quantmesh.common.v1 import common_pb2
from quantmesh.decision.v1 import decision_pb2
from quantmesh.execution.v1 import execution_pb2, execution_pb2_grpc
from quantmesh.mesh.transport import open_channel
from quantmesh.observability.audit.chain import RecordKind
from quantmesh.observability.audit.decisions import DecisionLog
from quantmesh.risk.v1 import risk_pb2
from quantmesh.runtime.errors import DomainError
from quantmesh.runtime.logging import get_logger
from quantmesh.runtime.metrics import (
    MARKET_TIME,
    REPLAY_FINISHED,
    RISK_DECISIONS,
    RISK_REJECTIONS,
    STAGE_SECONDS,
)
from quantmesh.services.decision.client import SignalSubscriber
from quantmesh.services.decision.policy import Action
from quantmesh.services.execution.clock import END_OF_TIME_MS  # open the feed for good
from quantmesh.services.execution.convert import lots_from_proto, lots_to_proto
from quantmesh.services.risk import convert, spans
from quantmesh.services.risk.convert import QuoteBook
from quantmesh.services.risk.core import AccountState, RiskDecision, SignalView
from quantmesh.services.risk.exposure import account_exposure, exposure_log_fields
from quantmesh.services.risk.graph import RiskGraph
from quantmesh.services.risk.provenance import OrderAnswer
from quantmesh.services.risk.servicer import EXECUTION_TIMEOUT_SECONDS, read_account
from quantmesh.services.risk.sizing import Quotes, SymbolSpec, fmt
from quantmesh.services.risk.store import DurableRiskEngine, RiskStore, cursor_name

# Statuses after which the same call may succeed: execution restarting or overloaded.
# Retrying a SubmitOrder is safe because the key makes it idempotent.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
# Execution refused this one order: it cannot become an order, the stream goes on.
REFUSED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)
# Waiting for execution's market to reach a signal may take a while on a slow feed.
ADVANCE_WAIT_TIMEOUT_SECONDS = 60.0
LATENCY_SAMPLES = 4_096

_T = TypeVar("_T")

_log = get_logger("risk.driver")


@dataclass
class LatencyStats:
    """Durations of one step: totals since start plus the most recent samples."""

    count: int = 0
    total_seconds: float = 0.0
    max_seconds: float = 0.0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total_seconds += seconds
        self.max_seconds = max(self.max_seconds, seconds)
        self.recent.append(seconds)

    @property
    def mean_seconds(self) -> float:
        return self.total_seconds / self.count if self.count else 0.0

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0..1) of the recent samples, nearest rank; 0 without any."""
        if not self.recent:
            return 0.0
        ordered = sorted(self.recent)
        rank = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
        return ordered[rank]


@dataclass
class DriverStats:
    """What the driver has done since it started, for logs, tests and health checks.

    The Prometheus metrics (``quantmesh_risk_decisions``, ``quantmesh_risk_rejections``,
    ``quantmesh_stage_seconds{stage="risk"}``) count the same events process-wide. A
    signal handled again after a restart is counted again; execution's answer
    (``orders_duplicate``) tells those apart from new orders.
    """

    batches: int = 0
    signals_seen: int = 0
    holds: int = 0
    evaluated: int = 0
    approved: int = 0
    rejected: int = 0
    rejected_by_rule: Counter[str] = field(default_factory=Counter)
    invalid: int = 0  # malformed, or not sizeable (no conversion quote): never traded
    orders_submitted: int = 0
    orders_duplicate: int = 0
    orders_refused: int = 0  # execution answered the order with an error
    orders_rejected_by_broker: int = 0
    retries: int = 0
    reconnects: int = 0
    cursor: int = -1  # seq of the last signal fully handled
    market_time_ms: int = 0  # execution's market time, as last reported
    evaluate_latency: LatencyStats = field(default_factory=LatencyStats)
    signal_latency: LatencyStats = field(default_factory=LatencyStats)

    def summary(self) -> dict[str, object]:
        """The counters as a flat mapping, for a log line."""
        return {
            "batches": self.batches,
            "signals": self.signals_seen,
            "holds": self.holds,
            "evaluated": self.evaluated,
            "approved": self.approved,
            "rejected": self.rejected,
            "rejected_by_rule": dict(self.rejected_by_rule),
            "invalid": self.invalid,
            "orders_submitted": self.orders_submitted,
            "orders_duplicate": self.orders_duplicate,
            "orders_refused": self.orders_refused,
            "orders_rejected_by_broker": self.orders_rejected_by_broker,
            "cursor": self.cursor,
            "evaluate_p50_us": round(self.evaluate_latency.quantile(0.5) * 1e6, 1),
            "evaluate_p99_us": round(self.evaluate_latency.quantile(0.99) * 1e6, 1),
        }


_SIDES = {Action.BUY: common_pb2.SIDE_BUY, Action.SELL: common_pb2.SIDE_SELL}
_OPPOSITE = {common_pb2.SIDE_BUY: common_pb2.SIDE_SELL, common_pb2.SIDE_SELL: common_pb2.SIDE_BUY}


def _timed_evaluate(
    risk: DurableRiskEngine,
    view: SignalView,
    state: AccountState,
    quotes: Quotes,
    spec: SymbolSpec,
) -> tuple[RiskDecision, float]:
    started = time.perf_counter()
    decision = risk.evaluate(view, state, quotes, spec)
    return decision, time.perf_counter() - started


class RiskDriver:
    """Turns the approved signals of one account into orders, exactly once.

    Parameters
    ----------
    risk:
        The engine (evaluations may engage the account's kill switch, durably).
    store:
        Where the cursor is kept.
    quotes:
        Prices for currency conversions; the driver feeds it every signal's price.
    symbols:
        The symbols risk can size.
    account_id:
        The account traded.
    subscribe:
        The symbols whose signals are read.
    deviation_points:
        Slippage allowed to market orders, in points (0: execution's default).
    decision_address, execution_address:
        Where :meth:`run` connects.
    max_attempts:
        Retries of one call to execution on a retryable status before the driver
        reconnects (and re-handles the batch from its cursor).
    retry_base_seconds, retry_max_seconds:
        Exponential backoff between retries.
    audit:
        Where each decision's records are appended (None: no audit log).
    graph:
        The graph store's edges for exposure, and where each evaluated decision's
        provenance is offered (None: neither; exposure from the symbol specs).
    """

    def __init__(
        self,
        risk: DurableRiskEngine,
        store: RiskStore,
        quotes: QuoteBook,
        symbols: Mapping[str, SymbolSpec],
        *,
        account_id: str,
        subscribe: Sequence[str],
        deviation_points: int = 0,
        decision_address: str = "",
        execution_address: str = "",
        max_attempts: int = 8,
        retry_base_seconds: float = 0.05,
        retry_max_seconds: float = 2.0,
        audit: DecisionLog | None = None,
        graph: RiskGraph | None = None,
    ) -> None:
        self._risk, self._store, self._quotes = risk, store, quotes
        self._audit = audit
        self._graph = graph
        self._symbols = dict(symbols)
        self.account_id = account_id
        self.subscribe = sorted(subscribe)
        self.deviation_points = deviation_points
        self.decision_address, self.execution_address = decision_address, execution_address
        self._max_attempts = max_attempts
        self._retry_base, self._retry_max = retry_base_seconds, retry_max_seconds
        self.cursor_name = cursor_name(account_id, self.subscribe)
        stored = store.cursor(self.cursor_name)
        self.stats = DriverStats(cursor=-1 if stored is None else stored)
        self._pacing = True  # False if execution does not implement AdvanceMarketTime
        self._shutdown: asyncio.Event | None = None

    @property
    def next_seq(self) -> int:
        """The first seq not fully handled: where the stream resumes."""
        return self.stats.cursor + 1

    def _stopping(self) -> bool:
        return self._shutdown is not None and self._shutdown.is_set()

    # --- the background job --------------------------------------------------------

    async def run(self, shutdown: asyncio.Event) -> None:
        """Trade the signal stream until it ends or ``shutdown`` is set; reconnect on errors."""
        self._shutdown = shutdown
        while not shutdown.is_set():
            try:
                async with (
                    open_channel(self.decision_address, "decision") as decision,
                    open_channel(self.execution_address, "execution") as channel,
                ):
                    execution = execution_pb2_grpc.ExecutionServiceStub(channel)
                    subscriber = SignalSubscriber(
                        decision, self.subscribe, from_seq=self.next_seq, include_hold=True
                    )
                    _log.info(
                        "driving",
                        account_id=self.account_id,
                        symbols=self.subscribe,
                        from_seq=self.next_seq,
                    )
                    async for batch in subscriber.batches():
                        if not await self.handle_batch(batch, execution):
                            return  # shutting down mid-batch: the cursor stays before it
                    await self.finish(execution)
                    return
            except grpc.aio.AioRpcError as error:
                self.stats.reconnects += 1
                _log.warning(
                    "driver interrupted, reconnecting",
                    status=error.code().name,
                    details=error.details(),
                    resume_from=self.next_seq,
                )
            except Exception:
                # A bug must not silently end the only path to orders: log it loudly and
                # retry from the cursor; nothing past it was acknowledged.
                self.stats.reconnects += 1
                _log.exception("driver failed, restarting", resume_from=self.next_seq)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(shutdown.wait(), timeout=1.0)

    async def finish(self, execution: execution_pb2_grpc.ExecutionServiceAsyncStub) -> None:
        """The signal stream has ended: let execution play the rest of the market."""
        await self._advance(execution, END_OF_TIME_MS, wait=False)
        REPLAY_FINISHED.labels("risk").set(1)
        _log.info("signal stream ended", **self.stats.summary())

    # --- one batch -------------------------------------------------------------------

    async def handle_batch(
        self,
        batch: decision_pb2.SignalBatch,
        execution: execution_pb2_grpc.ExecutionServiceAsyncStub,
    ) -> bool:
        """Handle every signal of ``batch``, then move the cursor past it.

        Returns False, with the cursor unmoved, when shutdown interrupted the batch.
        Raises grpc.aio.AioRpcError when execution keeps failing (the caller reconnects
        and the batch is handled again, which sends nothing twice).
        """
        last_time: int | None = None
        for signal in batch.signals:
            if self._stopping():
                return False
            self.stats.signals_seen += 1
            self._quotes.observe(signal)
            last_time = signal.time_msc if last_time is None else max(last_time, signal.time_msc)
            if convert.is_actionable(signal):
                await self._handle_signal(signal, execution)
            else:
                self._observe(signal)
        if last_time is not None:
            await self._advance(execution, last_time, wait=False)
            MARKET_TIME.labels("risk").set(last_time)
        if batch.signals:
            if self._audit is not None:
                # The cursor never passes a decision whose audit records are not on disk:
                # after a crash the batch is handled, and recorded, again.
                await self._audit.flush()
            seq = batch.seq + len(batch.signals) - 1
            await asyncio.to_thread(self._store.save_cursor, self.cursor_name, seq)
            self.stats.cursor = max(self.stats.cursor, seq)
        self.stats.batches += 1
        return True

    def _observe(self, signal: decision_pb2.Signal) -> None:
        self.stats.holds += 1
        try:
            spec = convert.symbol_spec(signal.symbol, self._symbols)
            self._risk.observe(convert.signal_view_from_proto(signal, spec))
        except DomainError as error:
            self.stats.invalid += 1
            _log.warning("signal ignored", signal_id=signal.signal_id, error=str(error))

    async def _handle_signal(
        self, signal: decision_pb2.Signal, execution: execution_pb2_grpc.ExecutionServiceAsyncStub
    ) -> None:
        started = time.perf_counter()
        try:
            with spans.evaluation_span(signal, self.account_id) as span:
                await self._trade(signal, execution, span)
        finally:
            self.stats.signal_latency.add(time.perf_counter() - started)

    async def _trade(
        self,
        signal: decision_pb2.Signal,
        execution: execution_pb2_grpc.ExecutionServiceAsyncStub,
        span: Span | None = None,
    ) -> None:
        try:
            spec = convert.symbol_spec(signal.symbol, self._symbols)
            view = convert.signal_view_from_proto(signal, spec)
        except DomainError as error:
            self.stats.invalid += 1
            _log.warning("signal ignored", signal_id=signal.signal_id, error=str(error))
            return

        async def market_then_account() -> tuple[
            execution_pb2.Account, list[execution_pb2.Position]
        ]:
            # One call: execution's market reaches the signal's moment, then the account
            # and its positions are read together. A retry may reach a restarted execution
            # whose feed is held behind the signal, so the time is granted again each try.
            reply = await self._advance(execution, signal.time_msc, wait=True, snapshot=True)
            if reply is not None and reply.HasField("account"):
                return reply.account, list(reply.positions)
            return await read_account(execution, self.account_id)

        started = time.perf_counter()
        account, positions = await self._retrying(market_then_account, "read the account")
        market_read = time.perf_counter()
        state = convert.account_state_from_proto(account, positions)
        quotes = self._quotes.quotes(positions)
        edges = self._graph.edges if self._graph is not None else None
        spans.record_exposure(
            span,
            lambda: exposure_log_fields(
                account_exposure(
                    positions, self._symbols, quotes, state.currency, graph_symbols=edges
                )
            ),
        )
        try:
            # Inline: a fraction of a millisecond of arithmetic costs less than a thread hop.
            decision, seconds = _timed_evaluate(self._risk, view, state, quotes, spec)
        except DomainError as error:
            # Malformed (InvalidArgument) or not sizeable (FailedPrecondition, e.g. no
            # conversion quote yet): not traded, and the stream goes on.
            self.stats.invalid += 1
            RISK_DECISIONS.labels("invalid").inc()
            _log.warning("signal not evaluated", signal_id=signal.signal_id, error=str(error))
            return
        self.stats.evaluated += 1
        self.stats.evaluate_latency.add(seconds)
        STAGE_SECONDS.labels("risk").observe(seconds)
        spans.record_decision(span, decision)
        trace = spans.trace_context(span, signal.trace)
        message = convert.decision_to_proto(decision, trace)
        await self._record(RecordKind.SIGNAL, signal, signal)
        await self._record(RecordKind.RISK_DECISION, signal, message)
        if not decision.approved:
            failed = [verdict.rule for verdict in decision.verdicts if not verdict.passed]
            self.stats.rejected += 1
            self.stats.rejected_by_rule.update(failed)
            RISK_DECISIONS.labels("rejected").inc()
            for rule in failed:
                RISK_REJECTIONS.labels(rule).inc()
            _log.info("signal rejected", signal_id=signal.signal_id, reason=decision.reason)
            self._record_provenance(signal, message)
            return
        self.stats.approved += 1
        RISK_DECISIONS.labels("approved").inc()
        evaluated = time.perf_counter()
        answers = []
        for order in self._orders(signal, decision, message, positions, trace):
            answered, outcome = await self._submit(order, execution)
            await self._record(RecordKind.ORDER, signal, answered, outcome=outcome)
            answers.append(OrderAnswer(answered, outcome))
        self._record_provenance(signal, message, answers)
        _log.debug(
            "signal traded",
            signal_id=signal.signal_id,
            market_and_account_ms=round((market_read - started) * 1e3, 3),
            evaluate_ms=round((evaluated - market_read) * 1e3, 3),
            submit_ms=round((time.perf_counter() - evaluated) * 1e3, 3),
        )

    def _orders(
        self,
        signal: decision_pb2.Signal,
        decision: RiskDecision,
        message: risk_pb2.RiskDecision,
        positions: Sequence[execution_pb2.Position],
        trace: common_pb2.TraceContext,
    ) -> list[execution_pb2.Order]:
        """The orders an approved decision asks for: one to open, or one per position to close."""
        base = execution_pb2.Order(
            account_id=self.account_id,
            symbol=signal.symbol,
            type=execution_pb2.ORDER_TYPE_MARKET,
            deviation_points=self.deviation_points,
            risk_decision=message,
            signal_id=signal.signal_id,
            trace=trace,
            model_name=signal.model_name,
            model_version=signal.model_version,
        )
        action = Action(signal.action)
        if action is not Action.CLOSE:
            order = execution_pb2.Order()
            order.CopyFrom(base)
            order.idempotency_key = signal.signal_id
            order.side = _SIDES[action]
            order.volume.CopyFrom(lots_to_proto(decision.volume))
            for level in ("stop_loss", "take_profit"):
                if signal.HasField(level):
                    getattr(order, level).CopyFrom(getattr(signal, level))
            return [order]
        # Positions opened after the signal belong to later signals: a CLOSE handled
        # again after a restart must not close them.
        closing = [
            position
            for position in positions
            if position.symbol == signal.symbol and position.open_time_ms <= signal.time_msc
        ]
        if not closing:
            _log.info("nothing to close", signal_id=signal.signal_id, symbol=signal.symbol)
        orders = []
        for position in closing:
            order = execution_pb2.Order()
            order.CopyFrom(base)
            order.idempotency_key = f"{signal.signal_id}:{position.position_id}"
            order.side = _OPPOSITE[position.side]
            order.volume.CopyFrom(position.volume)
            order.position_id = position.position_id
            orders.append(order)
        return orders

    async def _record(
        self, kind: RecordKind, signal: decision_pb2.Signal, message: Message, **extra: str
    ) -> None:
        if self._audit is not None:
            await self._audit.record(
                kind,
                signal.signal_id,
                message,
                traceparent=signal.trace.traceparent,
                extra=extra or None,
            )

    def _record_provenance(
        self,
        signal: decision_pb2.Signal,
        message: risk_pb2.RiskDecision,
        orders: Sequence[OrderAnswer] = (),
    ) -> None:
        """Offer the decision's provenance to the graph's writer: its id is the signal id,
        as in the audit log, so a batch handled again records the same decision again."""
        if self._graph is not None:
            self._graph.offer(signal.signal_id, signal, message, orders)

    async def _submit(
        self, order: execution_pb2.Order, execution: execution_pb2_grpc.ExecutionServiceAsyncStub
    ) -> tuple[execution_pb2.Order, str]:
        """Send ``order``; return the order as execution has it (else as sent) and what
        came of it, for the audit log."""
        key = order.idempotency_key
        request = execution_pb2.SubmitOrderRequest(order=order)
        try:
            reply = await self._retrying(
                lambda: execution.SubmitOrder(request, timeout=EXECUTION_TIMEOUT_SECONDS),
                f"submit order {key}",
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.ALREADY_EXISTS:
                # Handled before a restart and sized differently now: the first order
                # stands, and nothing is sent twice.
                self.stats.orders_duplicate += 1
                _log.info("order already exists", key=key, details=error.details())
                return order, f"ALREADY_EXISTS: {error.details()}"
            if error.code() in REFUSED:
                self.stats.orders_refused += 1
                _log.warning(
                    "execution refused the order",
                    key=key,
                    status=error.code().name,
                    details=error.details(),
                )
                return order, f"{error.code().name}: {error.details()}"
            raise
        if reply.duplicate:
            self.stats.orders_duplicate += 1
            _log.info("order already submitted", key=key, order_id=reply.order.order_id)
            return reply.order, "duplicate: already submitted"
        self.stats.orders_submitted += 1
        if reply.order.state == execution_pb2.ORDER_STATE_REJECTED:
            self.stats.orders_rejected_by_broker += 1
            _log.warning("broker rejected the order", key=key, reason=reply.order.reject_reason)
            return reply.order, "rejected by the broker"
        _log.info(
            "order submitted",
            key=key,
            order_id=reply.order.order_id,
            symbol=order.symbol,
            side=common_pb2.Side.Name(order.side),
            volume=fmt(lots_from_proto(order.volume)),
        )
        return reply.order, "submitted"

    # --- calls to execution ------------------------------------------------------------

    async def _advance(
        self,
        execution: execution_pb2_grpc.ExecutionServiceAsyncStub,
        time_ms: int,
        *,
        wait: bool,
        snapshot: bool = False,
    ) -> execution_pb2.AdvanceMarketTimeResponse | None:
        """Grant execution's market up to ``time_ms`` (and wait for it when asked).

        With ``snapshot`` the reply carries the account and its positions after the wait.
        None when execution does not pace market time.
        """
        if not self._pacing:
            return None
        request = execution_pb2.AdvanceMarketTimeRequest(
            time_ms=time_ms, wait=wait, account_id=self.account_id if snapshot else ""
        )
        timeout = ADVANCE_WAIT_TIMEOUT_SECONDS if wait else EXECUTION_TIMEOUT_SECONDS
        try:
            reply = await self._retrying(
                lambda: execution.AdvanceMarketTime(request, timeout=timeout),
                "advance market time",
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            # An older execution: its ticks act as they arrive, there is nothing to pace.
            self._pacing = False
            _log.warning("execution does not pace market time; orders meet the live feed")
            return None
        self.stats.market_time_ms = reply.market_time_ms
        return reply

    async def _retrying(self, call: Callable[[], Awaitable[_T]], what: str) -> _T:
        """``call()``, retried with backoff while execution answers a retryable status."""
        attempt = 0
        while True:
            try:
                return await call()
            except grpc.aio.AioRpcError as error:
                if (
                    error.code() not in RETRYABLE
                    or attempt >= self._max_attempts
                    or self._stopping()
                ):
                    raise
                attempt += 1
                self.stats.retries += 1
                delay = min(self._retry_max, self._retry_base * 2**attempt)
                _log.warning(
                    "execution unavailable, retrying",
                    what=what,
                    status=error.code().name,
                    attempt=attempt,
                    delay_s=delay,
                )
                await asyncio.sleep(delay)

"""Execution's part of a decision's trace: the order at the broker, then its fills.

``execution.order`` is a child of the SubmitOrder RPC's server span when the call
carried a trace in its metadata, else of the span the order names (``Order.trace``,
for a client that sets only the message). The order keeps that span's context, so its
execution reports carry it and each fill's span (``execution.fill``) is its child.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from quantmesh.common.v1 import common_pb2
from quantmesh.execution.v1 import execution_pb2
from quantmesh.observability import tracing
from quantmesh.services.execution.convert import lots_from_proto
from quantmesh.services.execution.orders import Order
from quantmesh.services.execution.store import ExecutionReport


@contextmanager
def order_span(order: execution_pb2.Order, broker: str) -> Iterator[Span | None]:
    """The span of submitting ``order``; its context replaces ``order.trace``."""
    if not tracing.enabled():
        yield None
        return
    attributes = {
        "quantmesh.decision.id": order.signal_id,
        "quantmesh.order.idempotency_key": order.idempotency_key,
        "quantmesh.account.id": order.account_id,
        "quantmesh.symbol": order.symbol,
        "quantmesh.order.side": common_pb2.Side.Name(order.side),
        "quantmesh.order.type": execution_pb2.OrderType.Name(order.type),
        "quantmesh.order.volume_lots": str(lots_from_proto(order.volume)),
        "quantmesh.execution.broker": broker,
    }
    if trace.get_current_span().get_span_context().is_valid:
        span: Span | None = tracing.tracer().start_span("execution.order", attributes=attributes)
    else:
        span = tracing.child_of(order.trace, "execution.order", attributes=attributes)
    if span is None:
        yield None
        return
    tracing.trace_fields(span, order.trace)
    started = time.perf_counter()
    try:
        yield span
    finally:
        span.set_attribute(
            "quantmesh.execution.latency_ms", round((time.perf_counter() - started) * 1e3, 3)
        )
        span.end()


def record_order(span: Span | None, order: Order, duplicate: bool) -> None:
    """What the broker made of the order."""
    if span is None:
        return
    span.set_attribute("quantmesh.order.id", order.order_id)
    span.set_attribute("quantmesh.order.state", order.state.name)
    span.set_attribute("quantmesh.order.duplicate", duplicate)
    span.set_attribute("quantmesh.execution.broker_order_id", order.broker_order_id)
    if order.reject_reason:
        span.set_attribute("quantmesh.order.reject_reason", order.reject_reason)


def record_fills(reports: Sequence[ExecutionReport]) -> None:
    """One span per fill, in the trace of the order it fills."""
    if not tracing.enabled():
        return
    for report in reports:
        if report.fill_price is None or not report.traceparent:
            continue
        span = tracing.child_of(
            report,
            "execution.fill",
            kind=SpanKind.INTERNAL,
            attributes={
                "quantmesh.decision.id": report.signal_id,
                "quantmesh.order.id": report.order_id,
                "quantmesh.order.state": report.state.name,
                "quantmesh.symbol": report.symbol,
                "quantmesh.fill.volume_lots": str(report.fill_volume),
                "quantmesh.fill.price_points": report.fill_price,
                "quantmesh.fill.commission": str(report.commission),
                "quantmesh.fill.deal_id": report.broker_deal_id,
                "quantmesh.position.id": report.position_id,
                "quantmesh.fill.market_time_ms": report.time_ms,
                "quantmesh.execution.report_seq": report.seq,
            },
        )
        if span is not None:
            span.end()

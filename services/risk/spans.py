"""Risk's part of a decision's trace: the evaluation of a signal, every rule's verdict.

The span is a child of the policy's span (``Signal.trace``) and stays current while risk
submits the decision's orders, so their RPC spans, and execution's order span beyond
them, join the decision's trace. Each rule's verdict is an attribute (searchable in
Jaeger, e.g. ``quantmesh.risk.rule.max_spread=fail``) and an event with its numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from opentelemetry.trace import Span

from quantmesh.common.v1 import common_pb2
from quantmesh.decision.v1 import decision_pb2
from quantmesh.observability import tracing
from quantmesh.runtime.errors import DomainError
from quantmesh.services.risk.core import RiskDecision


@contextmanager
def evaluation_span(signal: decision_pb2.Signal, account_id: str) -> Iterator[Span | None]:
    """Risk's span of ``signal``, current inside the block; None when it has no trace."""
    span = tracing.child_of(
        signal.trace,
        "risk.evaluate",
        attributes={
            "quantmesh.decision.id": signal.signal_id,
            "quantmesh.symbol": signal.symbol,
            "quantmesh.decision.action": decision_pb2.Action.Name(signal.action),
            "quantmesh.account.id": account_id,
        },
    )
    if span is None:
        yield None
        return
    token = tracing.attach(span)
    try:
        yield span
    finally:
        tracing.detach(token)
        span.end()


def record_decision(span: Span | None, decision: RiskDecision) -> None:
    """Put risk's verdicts on its span."""
    if span is None:
        return
    span.set_attribute("quantmesh.risk.approved", decision.approved)
    span.set_attribute("quantmesh.risk.reason", decision.reason)
    span.set_attribute("quantmesh.risk.volume_lots", str(decision.volume))
    span.set_attribute("quantmesh.risk.amount", f"{decision.risk_amount} {decision.currency}")
    for verdict in decision.verdicts:
        span.set_attribute(
            f"quantmesh.risk.rule.{verdict.rule}", "pass" if verdict.passed else "fail"
        )
        span.add_event(
            "risk.rule",
            {
                "quantmesh.risk.rule": verdict.rule,
                "quantmesh.risk.passed": verdict.passed,
                "quantmesh.risk.rule_reason": verdict.reason,
                "quantmesh.risk.measured": verdict.measured,
                "quantmesh.risk.limit": verdict.limit,
                "quantmesh.risk.unit": verdict.unit,
            },
        )


def record_exposure(span: Span | None, exposure: Callable[[], Mapping[str, str]]) -> None:
    """The account's net exposure per currency when the signal came (computed only when
    the span is recorded), e.g. ``quantmesh.risk.exposure.USD=-185000.00``."""
    if span is None or not span.is_recording():
        return
    try:
        fields = exposure()
    except DomainError as error:  # a position risk cannot value: say so, decide anyway
        span.set_attribute("quantmesh.risk.exposure_error", str(error))
        return
    for name, amount in fields.items():
        span.set_attribute(f"quantmesh.risk.{name.replace('_', '.', 1)}", amount)


def trace_context(span: Span | None, fallback: common_pb2.TraceContext) -> common_pb2.TraceContext:
    """What risk's messages of the decision carry: its span's context, else the signal's."""
    if span is None:
        return fallback
    context = common_pb2.TraceContext()
    tracing.trace_fields(span, context)
    return context

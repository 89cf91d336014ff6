"""OpenTelemetry tracing: one trace per AI decision, routine spans sampled as configured.

A decision's trace starts at the features span of the feature row it was made on and
gathers the inference, policy, risk, order and fill spans of every service it passes.
Streams multiplex many decisions and grpc.aio stream interceptors see no message, so
each batch, signal and order carries its W3C ``traceparent`` in a ``TraceContext``
field; :func:`context_of` turns that field back into a parent and :func:`trace_fields`
writes a span into it. Unary calls (e.g. ``SubmitOrder``) also propagate through gRPC
metadata, with RPC spans from opentelemetry-instrumentation-grpc.

Sampling. :class:`DecisionSampler` always records a decision's root span and gives it
the ``quantmesh=decision`` tracestate entry, which travels with every child across
services, so it records those too. Everything else (tick batches, stream RPCs) goes to the
sampler set by ``OTEL_TRACES_SAMPLER``/``OTEL_TRACES_SAMPLER_ARG``.

Configuration is the standard ``OTEL_*`` environment:

- tracing is on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``…_TRACES_ENDPOINT``) or
  ``OTEL_TRACES_EXPORTER`` (``otlp`` or ``console``) is set, and off when neither is
  (there is nowhere to send spans) or ``OTEL_SDK_DISABLED=true``. Off costs nothing: no
  span is made and the messages' trace fields stay empty;
- spans leave over OTLP/gRPC in batches (``OTEL_BSP_*``), to the endpoint, headers and
  certificate the exporter reads from ``OTEL_EXPORTER_OTLP_*``;
- the resource is ``service.name`` (the service), ``service.namespace`` (quantmesh),
  ``service.version`` and ``service.instance.id``, plus ``OTEL_RESOURCE_ATTRIBUTES``.
"""

from __future__ import annotations

import functools
import os
import socket
import uuid
from collections.abc import Iterable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol

import grpc
from google.protobuf import descriptor_pool
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import (
    Decision,
    Sampler,
    SamplingResult,
    _get_from_env_or_default,
)
from opentelemetry.trace import Link, Span, SpanKind, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from quantmesh.common.v1 import common_pb2

__all__ = [
    "DECISION_STATE",
    "DecisionSampler",
    "TracingConfigError",
    "client_interceptors",
    "configure_tracing",
    "context_of",
    "decision_root",
    "enabled",
    "link_to",
    "server_interceptors",
    "shutdown_tracing",
    "trace_fields",
    "traceparent_of",
    "tracer",
]

# The tracestate entry that marks a decision's trace: every span in it is recorded.
DECISION_STATE = ("quantmesh", "decision")
_DECISION_TRACE_STATE = TraceState([DECISION_STATE])
# Set on a decision's root span, so the sampler can tell it from a routine root.
DECISION_ROOT_ATTRIBUTE = "quantmesh.decision.root"
_EMPTY = Context()
_PROPAGATOR = TraceContextTextMapPropagator()

_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None


class TracingConfigError(ValueError):
    """The OTEL_* environment asks for something quantmesh cannot do."""


class HasTraceContext(Protocol):
    """A ``quantmesh.common.v1.TraceContext`` message, or anything that carries one."""

    @property
    def traceparent(self) -> str: ...

    @property
    def tracestate(self) -> str: ...


def enabled() -> bool:
    """True once :func:`configure_tracing` installed a provider in this process."""
    return _provider is not None


def tracer() -> trace.Tracer:
    """quantmesh's tracer (a no-op one while tracing is off)."""
    global _tracer
    if _tracer is None:
        # Made once: spans are started on the hot path, a few per decision.
        _tracer = trace.get_tracer("quantmesh", _package_version())
    return _tracer


class DecisionSampler(Sampler):
    """Record every span of a decision's trace; sample the rest with ``routine``."""

    def __init__(self, routine: Sampler) -> None:
        self._routine = routine

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        if parent.is_valid:
            if parent.trace_state.get(DECISION_STATE[0]) == DECISION_STATE[1]:
                return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, parent.trace_state)
        elif attributes and attributes.get(DECISION_ROOT_ATTRIBUTE):
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, _DECISION_TRACE_STATE)
        return self._routine.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"DecisionSampler{{routine={self._routine.get_description()}}}"


def configure_tracing(service: str, environ: Mapping[str, str] | None = None) -> bool:
    """Install the tracer provider of ``service`` if the environment asks for traces.

    Returns whether tracing is on. Call once per process, before the server starts.
    """
    global _provider, _tracer
    env = os.environ if environ is None else environ
    exporter = _exporter(env)
    if exporter is None:
        return False
    resource = Resource.create(
        {
            "service.name": service,
            "service.namespace": "quantmesh",
            "service.version": _package_version(),
            "service.instance.id": f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}",
        }
    )
    provider = TracerProvider(resource=resource, sampler=DecisionSampler(_routine_sampler()))
    delay = env.get("OTEL_BSP_SCHEDULE_DELAY")
    provider.add_span_processor(
        BatchSpanProcessor(exporter, schedule_delay_millis=float(delay) if delay else None)
    )
    trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = provider.get_tracer("quantmesh", _package_version())
    return True


def shutdown_tracing() -> None:
    """Export what is buffered and stop (at process exit)."""
    global _provider, _tracer
    if _provider is not None:
        _provider.shutdown()
        _provider, _tracer = None, None


def _exporter(env: Mapping[str, str]) -> SpanExporter | None:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = [n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not names:
        names = ["otlp"] if endpoint else []
    if not names or names == ["none"]:
        return None
    if len(names) > 1:
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER={','.join(names)}: quantmesh exports to one place; "
            "choose otlp, console or none"
        )
    if names[0] == "console":
        return ConsoleSpanExporter()
    if names[0] == "otlp":
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
        )
        if protocol != "grpc":
            raise TracingConfigError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: quantmesh exports OTLP over gRPC; "
                "set it to grpc (Jaeger and the OpenTelemetry collector accept it on 4317)"
            )
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        # Headers, certificates and timeouts come from the process environment.
        return OTLPSpanExporter(endpoint=endpoint)
    raise TracingConfigError(
        f"OTEL_TRACES_EXPORTER={names[0]} is not supported; choose otlp, console or none"
    )


def _routine_sampler() -> Sampler:
    try:
        sampler: Sampler = _get_from_env_or_default()
    except ValueError as error:  # e.g. a ratio that is not a number
        raise TracingConfigError(f"OTEL_TRACES_SAMPLER_ARG: {error}") from None
    return sampler


@functools.cache
def _package_version() -> str:
    try:
        return version("quantmesh")
    except PackageNotFoundError:
        return "0+unknown"


# -- trace context inside messages ---------------------------------------------------------


def context_of(message: HasTraceContext | None) -> Context | None:
    """The parent a message's ``TraceContext`` names, or None if it names none."""
    if message is None or not message.traceparent:
        return None
    carrier = {"traceparent": message.traceparent}
    if message.tracestate:
        carrier["tracestate"] = message.tracestate
    parent = _PROPAGATOR.extract(carrier, context=_EMPTY)
    if not trace.get_current_span(parent).get_span_context().is_valid:
        return None
    return parent


def traceparent_of(span: Span) -> str:
    """The W3C ``traceparent`` of ``span``; empty for a non-recording, invalid span."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return ""
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def trace_fields(span: Span, message: common_pb2.TraceContext) -> None:
    """Write ``span``'s context into a ``TraceContext`` message (nothing if invalid)."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return
    message.traceparent = traceparent_of(span)
    message.tracestate = ctx.trace_state.to_header() if ctx.trace_state else ""


def link_to(message: HasTraceContext | None, **attributes: Any) -> Link | None:
    """A link to the span a message's ``TraceContext`` names (e.g. a tick batch's)."""
    parent = context_of(message)
    if parent is None:
        return None
    return Link(trace.get_current_span(parent).get_span_context(), attributes or None)


def decision_root(
    name: str,
    attributes: Attributes = None,
    links: Iterable[Link] = (),
    start_time: int | None = None,
) -> Span:
    """Start the root span of a new decision trace (recorded whatever the sampler).

    It is a root whatever span is current (e.g. a stream's RPC span): a decision's
    trace must hold that decision only.
    """
    return tracer().start_span(
        name,
        context=_EMPTY,
        kind=SpanKind.INTERNAL,
        attributes={**(attributes or {}), DECISION_ROOT_ATTRIBUTE: True},
        links=list(links),
        start_time=start_time,
    )


def routine_root(name: str, attributes: Attributes = None) -> Span:
    """Start a routine span in a trace of its own, sampled as configured."""
    return tracer().start_span(name, context=_EMPTY, attributes=attributes)


def child_of(
    message: HasTraceContext | None,
    name: str,
    attributes: Attributes = None,
    kind: SpanKind = SpanKind.INTERNAL,
    start_time: int | None = None,
) -> Span | None:
    """Start a span under the one a message names; None if the message has no trace."""
    parent = context_of(message)
    if parent is None:
        return None
    return tracer().start_span(
        name, context=parent, kind=kind, attributes=attributes, start_time=start_time
    )


def attach(span: Span) -> object:
    """Make ``span`` current (for the RPCs it makes); undo with :func:`detach`."""
    return otel_context.attach(trace.set_span_in_context(span))


def detach(token: object) -> None:
    otel_context.detach(token)  # type: ignore[arg-type]


# -- gRPC instrumentation -------------------------------------------------------------------


def server_interceptors() -> list[grpc.aio.ServerInterceptor[Any, Any]]:
    """RPC server spans (semantic conventions) of unary calls, health excluded."""
    if not enabled():
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(filter_=_traced_rpc)]  # type: ignore[no-untyped-call]


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """RPC client spans of unary calls, propagating the current context in metadata.

    Only the unary-unary interceptor: a channel with a streaming interceptor turns every
    stream into grpc.aio's intercepted call, which wraps each message in more Python
    (several milliseconds per decision across the pipeline's four streams), even when
    the filter then declines to trace it.
    """
    if not enabled():
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    interceptors: list[Any] = aio_client_interceptors(filter_=_traced_rpc)  # type: ignore[no-untyped-call]
    # The stubs' ClientInterceptor is a placeholder type: the check is made at run time.
    return [i for i in interceptors if isinstance(i, grpc.aio.UnaryUnaryClientInterceptor)]  # type: ignore[misc]


def _traced_rpc(details: Any) -> bool:
    """Trace unary RPCs only. A Subscribe stream lives as long as the pipeline and
    carries many decisions, each traced through its messages instead."""
    method = details.method
    return _is_traced(method.decode() if isinstance(method, bytes) else method)


@functools.cache
def _is_traced(full_method: str) -> bool:
    service_name, _, method_name = full_method.lstrip("/").rpartition("/")
    if service_name.startswith(("grpc.health.", "grpc.reflection.")):
        return False
    try:
        service = descriptor_pool.Default().FindServiceByName(service_name)
    except KeyError:
        return True
    method = service.methods_by_name.get(method_name)
    return method is None or not (method.client_streaming or method.server_streaming)

"""Tracing: configuration from OTEL_*, the decision sampler, trace context in messages.

The real services' spans are asserted end to end in tests/integration/test_order_path.py;
here the parts are checked one by one against the SDK's in-memory exporter.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased

from quantmesh.common.v1 import common_pb2
from quantmesh.observability import tracing
from quantmesh.observability.tracing import DecisionSampler, TracingConfigError


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """A provider whose routine spans are never sampled, as with a ratio of 0."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(sampler=DecisionSampler(ParentBased(ALWAYS_OFF)))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    monkeypatch.setattr(tracing, "_provider", provider)
    monkeypatch.setattr(tracing, "tracer", lambda: provider.get_tracer("quantmesh"))
    yield memory
    provider.shutdown()


def test_a_decision_is_recorded_whole_even_when_routine_spans_are_not(
    exported: InMemorySpanExporter,
) -> None:
    routine = tracing.routine_root("marketdata.tick_batch")
    assert not routine.is_recording()
    root = tracing.decision_root("features.row", {"quantmesh.symbol": "EURUSD"})
    message = common_pb2.TraceContext()
    tracing.trace_fields(root, message)
    # The next service continues from the message alone, as across a stream.
    child = tracing.child_of(message, "inference.predict")
    assert child is not None
    grandchild = tracing.child_of(_fields(child), "decision.policy")
    assert grandchild is not None
    for span in (grandchild, child, root):
        span.end()
    routine.end()
    spans = {span.name: span for span in exported.get_finished_spans()}
    assert set(spans) == {"features.row", "inference.predict", "decision.policy"}
    trace_ids = {span.context.trace_id for span in spans.values()}
    assert len(trace_ids) == 1
    assert spans["inference.predict"].parent.span_id == spans["features.row"].context.span_id
    assert spans["decision.policy"].parent.span_id == spans["inference.predict"].context.span_id
    assert message.tracestate == "quantmesh=decision"


def test_a_decision_root_starts_a_new_trace_inside_another_span(
    exported: InMemorySpanExporter,
) -> None:
    provider = TracerProvider(sampler=ALWAYS_ON)
    with provider.get_tracer("test").start_as_current_span("stream") as stream:
        root = tracing.decision_root("features.row")
        assert root.parent is None
        assert root.get_span_context().trace_id != stream.get_span_context().trace_id
        root.end()


def test_trace_context_round_trips_through_a_message(exported: InMemorySpanExporter) -> None:
    root = tracing.decision_root("features.row")
    message = _fields(root)
    assert message.traceparent == tracing.traceparent_of(root)
    assert message.traceparent.startswith(f"00-{root.get_span_context().trace_id:032x}-")
    link = tracing.link_to(message, role="tick batch")
    assert link is not None
    assert link.context.span_id == root.get_span_context().span_id
    root.end()


@pytest.mark.parametrize(
    "traceparent",
    ["", "garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"],
)
def test_a_message_without_a_valid_trace_names_no_parent(
    exported: InMemorySpanExporter, traceparent: str
) -> None:
    message = common_pb2.TraceContext(traceparent=traceparent)
    assert tracing.context_of(message) is None
    assert tracing.child_of(message, "inference.predict") is None
    assert tracing.link_to(message) is None


def test_tracing_is_off_without_anywhere_to_send_spans() -> None:
    assert tracing._exporter({}) is None
    assert tracing._exporter({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}) is None
    assert tracing._exporter({"OTEL_TRACES_EXPORTER": "none"}) is None


def test_an_endpoint_or_an_exporter_name_turns_tracing_on() -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    otlp = tracing._exporter({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"})
    assert isinstance(otlp, OTLPSpanExporter)
    assert isinstance(tracing._exporter({"OTEL_TRACES_EXPORTER": "console"}), ConsoleSpanExporter)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "zipkin is not supported"),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, "exports to one place"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            "OTLP over gRPC",
        ),
    ],
)
def test_unsupported_settings_are_refused_with_a_clear_message(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(TracingConfigError, match=message):
        tracing._exporter(environ)


def test_only_unary_rpcs_get_rpc_spans() -> None:
    # The contracts a process has imported say which methods stream.
    from quantmesh.execution.v1 import execution_pb2  # noqa: F401
    from quantmesh.features.v1 import features_pb2  # noqa: F401

    assert tracing._is_traced("/quantmesh.execution.v1.ExecutionService/SubmitOrder")
    assert not tracing._is_traced("/quantmesh.features.v1.FeaturesService/Subscribe")
    assert not tracing._is_traced("/grpc.health.v1.Health/Check")


def test_configure_installs_a_provider_with_the_service_resource(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    installed: list[TracerProvider] = []
    monkeypatch.setattr(trace, "set_tracer_provider", installed.append)
    monkeypatch.setattr(tracing, "_provider", None)
    assert not tracing.configure_tracing("risk", {})
    assert tracing.configure_tracing("risk", {"OTEL_TRACES_EXPORTER": "console"})
    try:
        (provider,) = installed
        attributes = provider.resource.attributes
        assert attributes["service.name"] == "risk"
        assert attributes["service.namespace"] == "quantmesh"
        assert attributes["service.version"]
        assert attributes["service.instance.id"]
        assert isinstance(provider.sampler, DecisionSampler)
    finally:
        tracing.shutdown_tracing()
    assert not tracing.enabled()


def _fields(span: trace.Span) -> common_pb2.TraceContext:
    message = common_pb2.TraceContext()
    tracing.trace_fields(span, message)
    return message


def test_up_says_where_the_traces_went() -> None:
    from quantmesh.cli.up import _tracing_state

    assert "traces: off" in _tracing_state({})
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4317"}
    assert "sent to http://jaeger:4317" in _tracing_state(endpoint)
    assert "traces: off" in _tracing_state(endpoint | {"OTEL_SDK_DISABLED": "true"})

"""An OTLP/gRPC trace receiver in process: where the tests and the bench send spans.

It implements ``opentelemetry.proto.collector.trace.v1.TraceService`` — what Jaeger and
the OpenTelemetry collector listen on at 4317 — and keeps every span it receives, with
its service's resource attributes, so a test can assert on the spans the real services
exported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Mapping
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

__all__ = ["ReceivedSpan", "ReceiverProcess", "SpanReceiver"]


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span, decoded enough to assert on."""

    service: str
    name: str
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # empty for a root
    kind: int
    attributes: Mapping[str, Any]
    links: tuple[tuple[str, str], ...]  # (trace id, span id)
    events: tuple[tuple[str, Mapping[str, Any]], ...]
    start_ns: int
    end_ns: int
    status_code: int


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: SpanReceiver) -> None:
        self._receiver = receiver

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received = []
        for resource_spans in request.resource_spans:
            service = str(_attributes(resource_spans.resource.attributes).get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                received += [_decode(service, span) for span in scope_spans.spans]
        self._receiver.add(received)
        return trace_service_pb2.ExportTraceServiceResponse()


def _decode(service: str, span: trace_pb2.Span) -> ReceivedSpan:
    return ReceivedSpan(
        service=service,
        name=span.name,
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex(),
        kind=span.kind,
        attributes=_attributes(span.attributes),
        links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
        events=tuple((event.name, _attributes(event.attributes)) for event in span.events),
        start_ns=span.start_time_unix_nano,
        end_ns=span.end_time_unix_nano,
        status_code=span.status.code,
    )


class SpanReceiver:
    """Receive OTLP/gRPC spans on ``127.0.0.1`` (a free port) while in a ``with`` block.

    Point services at it with ``OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint``.
    """

    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _TraceService(self), self._server
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self, schedule_delay_ms: int = 200) -> dict[str, str]:
        """The OTEL_* settings that send a service's spans here, promptly."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": str(schedule_delay_ms),
        }

    def add(self, spans: list[ReceivedSpan]) -> None:
        with self._lock:
            self._spans += spans

    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far."""
        with self._lock:
            return list(self._spans)

    def __enter__(self) -> SpanReceiver:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None)


class ReceiverProcess:
    """A :class:`SpanReceiver` in a process of its own, as Jaeger would be: decoding the
    spans does not compete with the measuring process for its interpreter lock.

    Counts spans by ``"<service>: <name>"``; :meth:`counts` is final after the block.
    """

    def __init__(self) -> None:
        self.port = 0
        self._counts: dict[str, int] = {}
        self._process: subprocess.Popen[str] | None = None

    def environment(self, schedule_delay_ms: int = 1000) -> dict[str, str]:
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.port}",
            "OTEL_BSP_SCHEDULE_DELAY": str(schedule_delay_ms),
        }

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    def __enter__(self) -> ReceiverProcess:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "quantmesh.observability.receiver"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        self.port = int(self._process.stdout.readline())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._process is not None
        output, _ = self._process.communicate(input="stop\n", timeout=60)
        self._counts = json.loads(output)


def _serve_counts() -> None:
    """Print the port, receive until stdin says stop, then print the counts as JSON."""
    with SpanReceiver() as receiver:
        print(receiver.port, flush=True)
        sys.stdin.readline()
        counts = Counter(f"{span.service}: {span.name}" for span in receiver.spans())
    print(json.dumps(dict(counts.most_common())), flush=True)


if __name__ == "__main__":
    _serve_counts()

"""Market data's spans: one per tick batch sent, for decisions to link back to.

A tick batch is routine — it is sampled as ``OTEL_TRACES_SAMPLER`` says — and its
context travels in ``TickBatch.trace``, so the features span of every bar built from
its ticks links to it.
"""

from __future__ import annotations

from quantmesh.marketdata.v1 import marketdata_pb2
from quantmesh.observability import tracing


def record_batch(batch: marketdata_pb2.TickBatch, stream: str) -> None:
    """Record a span for ``batch`` and put its context in ``batch.trace``."""
    count = len(batch.time_msc)
    if not count:
        return
    span = tracing.routine_root(
        "marketdata.tick_batch",
        attributes={
            "quantmesh.marketdata.stream": stream,
            "quantmesh.marketdata.seq_first": batch.seq,
            "quantmesh.marketdata.seq_last": batch.seq + count - 1,
            "quantmesh.marketdata.ticks": count,
            "quantmesh.marketdata.time_first_ms": batch.time_msc[0],
            "quantmesh.marketdata.time_last_ms": batch.time_msc[-1],
            "quantmesh.marketdata.symbols": list(batch.symbols),
        },
    )
    tracing.trace_fields(span, batch.trace)
    span.end()

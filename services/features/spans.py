"""The features service's part of a decision's trace: one root span per feature row.

A row's span is the root of the decision made on it (see
:mod:`quantmesh.observability.tracing`). It names the window the row was computed from
(its bar and the ticks' seqs) and links to the spans of the tick batches that carried
those ticks, so Jaeger leads from a decision back to its market data.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from opentelemetry.trace import Link

from quantmesh.features.v1 import features_pb2
from quantmesh.marketdata.v1 import marketdata_pb2
from quantmesh.observability import tracing
from quantmesh.services.features.core import NumberedRows
from quantmesh.services.features.schema import SCHEMA_VERSION

# A bar's ticks usually arrive in a few batches; past this many, the latest are linked.
MAX_LINKS = 16
# Tick batches remembered for linking: far more than one bar's worth at any batch size.
_REMEMBERED_BATCHES = 1024


@dataclass(frozen=True, slots=True)
class _TickBatch:
    first_seq: int
    last_seq: int
    link: Link | None
    received_ns: int


class RowSpans:
    """Start the decision trace of every row one feature stream sends."""

    def __init__(self, symbols: tuple[str, ...]) -> None:
        self._symbols = symbols
        self._batches: deque[_TickBatch] = deque(maxlen=_REMEMBERED_BATCHES)

    def on_tick_batch(self, batch: marketdata_pb2.TickBatch) -> None:
        """Remember a tick batch's span and seqs, for the rows its ticks go into."""
        count = len(batch.time_msc)
        if count:
            link = tracing.link_to(batch.trace)
            self._batches.append(_TickBatch(batch.seq, batch.seq + count - 1, link, time.time_ns()))

    def start_traces(self, numbered: NumberedRows, message: features_pb2.FeatureBatch) -> None:
        """Record each row's span and put its context in ``message.row_trace``."""
        rows = numbered.rows
        for i in range(len(rows)):
            first, last = int(rows.tick_seq_first[i]), int(rows.tick_seq_last[i])
            window = [b for b in self._batches if b.last_seq >= first and b.first_seq <= last]
            links = [b.link for b in window[-MAX_LINKS:] if b.link is not None]
            span = tracing.decision_root(
                "features.row",
                attributes={
                    "quantmesh.symbol": self._symbols[int(rows.symbol_index[i])],
                    "quantmesh.features.seq": numbered.seq + i,
                    "quantmesh.features.bar_close_ms": int(rows.time_msc[i]),
                    "quantmesh.features.bar_open_ms": int(rows.bar_open_ms[i]),
                    "quantmesh.features.tick_seq_first": first,
                    "quantmesh.features.tick_seq_last": last,
                    "quantmesh.features.tick_batches": len(window),
                    "quantmesh.features.schema_version": SCHEMA_VERSION,
                    "quantmesh.features.regime": int(rows.regime[i]),
                    "quantmesh.features.session_mask": int(rows.session_mask[i]),
                },
                links=links,
                # The row was computed when the batch holding its bar's last tick came.
                start_time=window[-1].received_ns if window else None,
            )
            tracing.trace_fields(span, message.row_trace.add())
            span.end()

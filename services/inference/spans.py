"""The inference service's part of a decision's trace: one span per prediction row.

Each prediction row's span is a child of its feature row's span (the decision's root,
sent in ``FeatureBatch.row_trace``) and says which model answered — name, version,
alias — on which input (its digest), what it answered, whether the cache did, and how
long the batch took.
"""

from __future__ import annotations

import time

from quantmesh.common.v1 import common_pb2
from quantmesh.features.v1 import features_pb2
from quantmesh.inference.v1 import inference_pb2
from quantmesh.observability import tracing
from quantmesh.services.inference.stream import PredictionColumns


class PredictionSpans:
    """Continue the decision traces of one feature stream through its predictions."""

    def __init__(self) -> None:
        self._row_traces: dict[int, common_pb2.TraceContext] = {}  # by feature seq

    def on_feature_batch(self, batch: features_pb2.FeatureBatch) -> None:
        """Remember the trace of each feature row, until its predictions are sent."""
        for offset, row_trace in enumerate(batch.row_trace):
            self._row_traces[batch.seq + offset] = row_trace

    def record(self, columns: PredictionColumns, message: inference_pb2.PredictionBatch) -> None:
        """Record each row's span and put its context in ``message.row_trace``."""
        if not self._row_traces:
            return
        ended = time.time_ns()
        started = ended - int(columns.seconds * 1e9)
        latency_ms = round(columns.seconds * 1e3, 3)
        for i in range(len(columns)):
            feature_seq = int(columns.feature_seq[i])
            model = columns.models[int(columns.model_index[i])]
            span = tracing.child_of(
                self._row_traces.get(feature_seq),
                "inference.predict",
                attributes={
                    "quantmesh.symbol": columns.symbols[int(columns.symbol_index[i])],
                    "quantmesh.features.seq": feature_seq,
                    "quantmesh.inference.seq": columns.seq + i,
                    "quantmesh.model.name": model.name,
                    "quantmesh.model.version": str(model.version),
                    "quantmesh.model.alias": model.alias,
                    "quantmesh.model.shadow": model.shadow,
                    "quantmesh.inference.input_digest": f"{int(columns.feature_digest[i]):016x}",
                    "quantmesh.inference.probability_up": float(columns.probability_up[i]),
                    "quantmesh.inference.predicted_class": inference_pb2.PredictedClass.Name(
                        inference_pb2.PredictedClass.ValueType(int(columns.predicted_class[i]))
                    ),
                    "quantmesh.inference.cache_hit": bool(columns.cache_hit[i]),
                    "quantmesh.inference.batch_latency_ms": latency_ms,
                    "quantmesh.inference.batch_rows": len(columns),
                },
                start_time=started,
            )
            row_trace = message.row_trace.add()
            if span is not None:
                tracing.trace_fields(span, row_trace)
                span.end(end_time=ended)
        for feature_seq in set(columns.feature_seq.tolist()):
            self._row_traces.pop(int(feature_seq), None)

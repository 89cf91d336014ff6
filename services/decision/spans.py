"""The decision service's part of a decision's trace: the policy's span.

Every prediction the policy decides on gets a span, a child of the prediction's span
(sent in ``PredictionBatch.row_trace``), with the action, confidence and reason — HOLD
included, so a trace also shows why nothing was traded. The signal a decision becomes
carries that span's context in ``Signal.trace`` to risk and beyond.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from quantmesh.common.v1 import common_pb2
from quantmesh.decision.v1 import decision_pb2
from quantmesh.inference.v1 import inference_pb2
from quantmesh.observability import tracing
from quantmesh.services.decision.policy import POLICY_NAME, Decision

# Contexts waiting for their decision or signal; a bound in case one never comes
# (a signal skipped on resume).
_MAX_PENDING = 10_000


class SignalSpans:
    """Continue the decision traces of one prediction stream through the policy."""

    def __init__(self) -> None:
        self._predictions: dict[int, common_pb2.TraceContext] = {}  # by prediction seq
        self._signals: dict[str, common_pb2.TraceContext] = {}  # by signal id

    async def observe(
        self, batches: AsyncIterator[inference_pb2.PredictionBatch]
    ) -> AsyncIterator[inference_pb2.PredictionBatch]:
        """Pass ``batches`` through, remembering each traded prediction's trace."""
        async for batch in batches:
            for i, row_trace in enumerate(batch.row_trace):
                if row_trace.traceparent and not batch.models[batch.model_index[i]].shadow:
                    self._predictions[batch.seq + i] = row_trace
            _bound(self._predictions)
            yield batch

    def on_decided(self, decisions: Sequence[Decision]) -> None:
        """Record the policy's span of each decision."""
        for decision in decisions:
            source = decision.source
            span = tracing.child_of(
                self._predictions.pop(source.prediction_seq, None),
                "decision.policy",
                attributes={
                    "quantmesh.decision.id": decision.signal_id,
                    "quantmesh.symbol": source.symbol,
                    "quantmesh.decision.action": decision.action.name,
                    "quantmesh.decision.confidence": decision.confidence,
                    "quantmesh.decision.reason": decision.reason,
                    "quantmesh.decision.policy": POLICY_NAME,
                    "quantmesh.model.name": source.model_name,
                    "quantmesh.model.version": str(source.model_version),
                    "quantmesh.inference.probability_up": source.probability_up,
                    "quantmesh.inference.seq": source.prediction_seq,
                    "quantmesh.features.seq": source.feature_seq,
                },
            )
            if span is None:
                continue
            context = common_pb2.TraceContext()
            tracing.trace_fields(span, context)
            self._signals[decision.signal_id] = context
            span.end()
        _bound(self._signals)

    def stamp(self, message: decision_pb2.SubscribeResponse) -> None:
        """Give each signal of ``message`` its decision's trace context."""
        for signal in message.batch.signals:
            context = self._signals.pop(signal.signal_id, None)
            if context is not None:
                signal.trace.CopyFrom(context)


def _bound(pending: dict[Any, common_pb2.TraceContext]) -> None:
    # Called per batch on the signal path: copy the keys only when over the bound.
    excess = len(pending) - _MAX_PENDING
    if excess > 0:
        for key in list(pending)[:excess]:
            del pending[key]

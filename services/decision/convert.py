"""The one place where the decision service's protobuf messages meet its domain types."""

from __future__ import annotations

from quantmesh.common.v1 import common_pb2
from quantmesh.decision.v1 import decision_pb2
from quantmesh.services.decision.core import NumberedSignals, SignalSubscription
from quantmesh.services.decision.policy import POLICY_NAME, Decision


def subscription_from_proto(message: decision_pb2.Subscription) -> SignalSubscription:
    return SignalSubscription(
        symbols=tuple(name.strip() for name in message.symbols),
        from_seq=message.from_seq,
        batch_size=message.batch_size,
        initial_credit=message.initial_credit,
        include_hold=message.include_hold,
    )


def signal_to_proto(decision: Decision, seq: int) -> decision_pb2.Signal:
    row = decision.source
    digits = row.digits

    def price(points: int | None) -> common_pb2.Price | None:
        return None if points is None else common_pb2.Price(points=points, digits=digits)

    return decision_pb2.Signal(
        signal_id=decision.signal_id,
        symbol=row.symbol,
        action=int(decision.action),  # type: ignore[arg-type]  # values mirror the enum
        confidence=decision.confidence,
        reference_price=price(decision.reference_points),
        stop_loss=price(decision.stop_loss_points),
        take_profit=price(decision.take_profit_points),
        model_name=row.model_name,
        model_version=row.model_version,
        model_alias=row.model_alias,
        feature_names=row.feature_names,
        feature_values=row.feature_values,
        output_names=["probability_up"],
        output_values=[row.probability_up],
        reason=decision.reason,
        policy=POLICY_NAME,
        time_msc=row.time_msc,
        prediction_seq=row.prediction_seq,
        feature_seq=row.feature_seq,
        seq=seq,
    )


def end_of_stream(next_seq: int) -> decision_pb2.SubscribeResponse:
    """The empty batch that marks the end of the stream."""
    return decision_pb2.SubscribeResponse(batch=decision_pb2.SignalBatch(seq=next_seq))


def encode(numbered: NumberedSignals) -> decision_pb2.SubscribeResponse:
    signals = [
        signal_to_proto(decision, numbered.seq + i) for i, decision in enumerate(numbered.decisions)
    ]
    return decision_pb2.SubscribeResponse(
        batch=decision_pb2.SignalBatch(seq=numbered.seq, signals=signals)
    )

"""The one place where the features service's protobuf messages meet its domain types."""

from __future__ import annotations

from quantmesh.common.v1 import common_pb2
from quantmesh.features.v1 import features_pb2
from quantmesh.services.features.core import FeaturePlan, FeatureSubscription, NumberedRows
from quantmesh.services.features.schema import FEATURE_SPECS, SCHEMA_VERSION, schema_digest


def subscription_from_proto(message: features_pb2.Subscription) -> FeatureSubscription:
    return FeatureSubscription(
        symbols=[name.strip() for name in message.symbols],
        from_seq=message.from_seq,
        batch_size=message.batch_size,
        initial_credit=message.initial_credit,
        feature_names=list(message.feature_names),
        trace_rows=message.trace_rows,
    )


def schema_to_proto() -> features_pb2.FeatureSchema:
    return features_pb2.FeatureSchema(
        version=SCHEMA_VERSION,
        digest=bytes.fromhex(schema_digest()),
        timeframe=common_pb2.TIMEFRAME_H1,
        features=[
            features_pb2.FeatureSpec(
                name=spec.name,
                description=spec.description,
                unit=spec.unit,
                warmup_bars=spec.warmup_bars,
            )
            for spec in FEATURE_SPECS
        ],
    )


class FeatureBatchEncoder:
    """Encodes :class:`NumberedRows` of one stream into ``SubscribeResponse`` messages."""

    def __init__(self, plan: FeaturePlan) -> None:
        self._plan = plan
        self._symbols = [symbol.name for symbol in plan.symbols]

    def __call__(self, numbered: NumberedRows) -> features_pb2.SubscribeResponse:
        rows = numbered.rows
        values = rows.values[:, self._plan.columns]
        batch = features_pb2.FeatureBatch(
            seq=numbered.seq,
            symbols=self._symbols,
            symbol_index=rows.symbol_index.tolist(),
            time_msc=rows.time_msc.tolist(),
            feature_names=self._plan.feature_names,
            values=values.ravel().tolist(),
            session_mask=rows.session_mask.tolist(),
            regime=rows.regime.tolist(),
            source_tick_seq_first=int(rows.tick_seq_first.min()),
            source_tick_seq_last=int(rows.tick_seq_last.max()),
            schema_version=SCHEMA_VERSION,
        )
        return features_pb2.SubscribeResponse(batch=batch)

    def end(self, next_seq: int) -> features_pb2.SubscribeResponse:
        """The empty batch that marks the end of the stream."""
        batch = features_pb2.FeatureBatch(
            seq=next_seq, symbols=self._symbols, schema_version=SCHEMA_VERSION
        )
        return features_pb2.SubscribeResponse(batch=batch)

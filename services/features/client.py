"""Consumer side of the feature stream, for inference, decision and tests."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from quantmesh.features.v1 import features_pb2, features_pb2_grpc
from quantmesh.runtime.subscriber import StreamSpec, StreamSubscriber


class FeatureSubscriber(StreamSubscriber[features_pb2.FeatureBatch]):
    """Read feature rows exactly once across reconnects (see :class:`StreamSubscriber`)."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        symbols: Sequence[str] = (),
        from_seq: int = 0,
        batch_size: int = 1_000,
        window: int = 16,
        feature_names: Sequence[str] = (),
        max_resumes: int = 10,
        trace_rows: bool = False,
    ) -> None:
        stub = features_pb2_grpc.FeaturesServiceStub(channel)

        def subscription(from_seq: int, initial_credit: int) -> features_pb2.Subscription:
            return features_pb2.Subscription(
                symbols=list(symbols),
                from_seq=from_seq,
                batch_size=batch_size,
                initial_credit=initial_credit,
                feature_names=list(feature_names),
                trace_rows=trace_rows,
            )

        spec: StreamSpec[features_pb2.FeatureBatch] = StreamSpec(
            open_call=stub.Subscribe,
            request_type=features_pb2.SubscribeRequest,
            subscription=subscription,
        )
        super().__init__(spec, from_seq=from_seq, window=window, max_resumes=max_resumes)

"""Consumer side of the signal stream, for risk, the CLI and tests."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from quantmesh.decision.v1 import decision_pb2, decision_pb2_grpc
from quantmesh.runtime.subscriber import StreamSpec, StreamSubscriber


class SignalSubscriber(StreamSubscriber[decision_pb2.SignalBatch]):
    """Read signals exactly once across reconnects (see :class:`StreamSubscriber`)."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        symbols: Sequence[str] = (),
        from_seq: int = 0,
        include_hold: bool = False,
        window: int = 16,
        max_resumes: int = 10,
    ) -> None:
        stub = decision_pb2_grpc.DecisionServiceStub(channel)

        def subscription(from_seq: int, initial_credit: int) -> decision_pb2.Subscription:
            return decision_pb2.Subscription(
                symbols=list(symbols),
                from_seq=from_seq,
                initial_credit=initial_credit,
                include_hold=include_hold,
            )

        spec: StreamSpec[decision_pb2.SignalBatch] = StreamSpec(
            open_call=stub.Subscribe,
            request_type=decision_pb2.SubscribeRequest,
            subscription=subscription,
            size=lambda batch: len(batch.signals),
        )
        super().__init__(spec, from_seq=from_seq, window=window, max_resumes=max_resumes)

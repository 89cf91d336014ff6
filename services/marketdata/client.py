"""Consumer side of the tick stream, for downstream services and the CLI."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from quantmesh.marketdata.v1 import marketdata_pb2, marketdata_pb2_grpc
from quantmesh.runtime.subscriber import StreamSpec, StreamSubscriber


class TickSubscriber(StreamSubscriber[marketdata_pb2.TickBatch]):
    """Read ticks exactly once across reconnects (see :class:`StreamSubscriber`).

    Parameters
    ----------
    channel:
        Channel to the market data service.
    symbols:
        Symbols to stream; empty for all.
    from_seq:
        First seq to read.
    batch_size:
        Ticks per batch asked of the server.
    window:
        Batches of credit kept outstanding.
    speed:
        Replay speed factor; 0 is as fast as possible.
    max_resumes:
        Reconnect attempts after a resumable error before giving up.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        symbols: Sequence[str] = (),
        from_seq: int = 0,
        batch_size: int = 1_000,
        window: int = 32,
        speed: float = 0.0,
        max_resumes: int = 10,
        trace_batches: bool = False,
    ) -> None:
        stub = marketdata_pb2_grpc.MarketDataServiceStub(channel)

        def subscription(from_seq: int, initial_credit: int) -> marketdata_pb2.Subscription:
            return marketdata_pb2.Subscription(
                symbols=list(symbols),
                from_seq=from_seq,
                batch_size=batch_size,
                speed=speed,
                initial_credit=initial_credit,
                trace_batches=trace_batches,
            )

        spec: StreamSpec[marketdata_pb2.TickBatch] = StreamSpec(
            open_call=stub.Subscribe,
            request_type=marketdata_pb2.SubscribeRequest,
            subscription=subscription,
        )
        super().__init__(spec, from_seq=from_seq, window=window, max_resumes=max_resumes)

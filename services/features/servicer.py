"""gRPC adapter of the features service: subscribes to market data, streams feature rows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from quantmesh.features.v1 import features_pb2, features_pb2_grpc
from quantmesh.marketdata.v1 import marketdata_pb2, marketdata_pb2_grpc
from quantmesh.mesh.transport import open_channel
from quantmesh.observability import tracing
from quantmesh.runtime.errors import Unavailable, abort_on_domain_error
from quantmesh.runtime.logging import get_logger
from quantmesh.runtime.streams import CreditFlow, first_subscription, produce, read_controls
from quantmesh.services.features import convert
from quantmesh.services.features.config import FeaturesSettings
from quantmesh.services.features.core import (
    FeaturePlan,
    NumberedRows,
    numbered_rows,
    plan_subscription,
)
from quantmesh.services.features.latest import LatestFeaturesPublisher
from quantmesh.services.features.spans import RowSpans
from quantmesh.services.marketdata.client import TickSubscriber
from quantmesh.services.marketdata.convert import symbol_from_proto, tick_columns_from_proto
from quantmesh.services.marketdata.sources import TickColumns

SERVICE_NAME = features_pb2.DESCRIPTOR.services_by_name["FeaturesService"].full_name

Context = grpc.aio.ServicerContext[Any, Any]

_log = get_logger("features")


class FeaturesServicer(features_pb2_grpc.FeaturesServiceServicer):
    """Streams feature rows computed from the market data service's ticks.

    With a ``latest`` publisher, every emitted batch also offers each symbol's last row
    as its latest feature vector (written to the cache off the stream's path).
    """

    def __init__(
        self,
        settings: FeaturesSettings,
        shutdown: asyncio.Event,
        latest: LatestFeaturesPublisher | None = None,
    ) -> None:
        self._settings = settings
        self._shutdown = shutdown
        self._latest = latest

    async def GetFeatureSchema(
        self, request: features_pb2.GetFeatureSchemaRequest, context: Context
    ) -> features_pb2.GetFeatureSchemaResponse:
        return features_pb2.GetFeatureSchemaResponse(schema=convert.schema_to_proto())

    async def Subscribe(
        self, request_iterator: AsyncIterator[features_pb2.SubscribeRequest], context: Context
    ) -> AsyncIterator[features_pb2.SubscribeResponse]:
        async with abort_on_domain_error(context):
            subscription = await first_subscription(request_iterator)
            if subscription is None:
                return
            peer = context.peer()  # read now: a cancelled call can no longer tell
            async with open_channel(self._settings.marketdata_address, "marketdata") as channel:
                plan = await self._plan(channel, subscription)
                flow = CreditFlow.starting_at(plan.from_seq, plan.initial_credit)
                reader = asyncio.create_task(read_controls(request_iterator, flow))
                _log.info(
                    "subscribed",
                    peer=peer,
                    symbols=[symbol.name for symbol in plan.symbols],
                    from_seq=plan.from_seq,
                )
                spans = (
                    RowSpans(tuple(s.name for s in plan.symbols)) if self._traced(plan) else None
                )
                try:
                    rows = numbered_rows(self._ticks(channel, plan, spans), plan)
                    encoder = convert.FeatureBatchEncoder(plan)
                    encode = encoder if spans is None else _traced(encoder, spans)
                    if self._latest is not None:
                        encode = _publishing(encode, self._latest, plan)
                    async for message in produce(
                        rows, flow, self._shutdown, encode, encoder.end, stream="features"
                    ):
                        yield message
                except grpc.aio.AioRpcError as error:
                    raise Unavailable(self._upstream_failure(error, flow)) from None
                finally:
                    reader.cancel()
                    _log.info("stream ended", peer=peer, sent_through=flow.sent_through)

    async def _plan(
        self, channel: grpc.aio.Channel, message: features_pb2.Subscription
    ) -> FeaturePlan:
        stub = marketdata_pb2_grpc.MarketDataServiceStub(channel)
        try:
            listing = await stub.ListSymbols(marketdata_pb2.ListSymbolsRequest(), timeout=10)
        except grpc.aio.AioRpcError as error:
            raise Unavailable(
                f"market data at {self._settings.marketdata_address} is unreachable "
                f"({error.code().name}); features cannot be computed"
            ) from None
        served = [symbol_from_proto(info) for info in listing.symbols]
        return plan_subscription(convert.subscription_from_proto(message), served)

    @staticmethod
    def _traced(plan: FeaturePlan) -> bool:
        return plan.trace_rows and tracing.enabled()

    async def _ticks(
        self, channel: grpc.aio.Channel, plan: FeaturePlan, spans: RowSpans | None
    ) -> AsyncIterator[TickColumns]:
        subscriber = TickSubscriber(
            channel,
            [symbol.name for symbol in plan.symbols],
            batch_size=self._settings.tick_batch_size,
            window=self._settings.tick_window,
            speed=self._settings.tick_speed,
            trace_batches=spans is not None,  # its rows' spans link to the batches
        )
        async for batch in subscriber.batches():
            if spans is not None:
                spans.on_tick_batch(batch)
            yield tick_columns_from_proto(batch)

    def _upstream_failure(self, error: grpc.aio.AioRpcError, flow: CreditFlow) -> str:
        return (
            f"market data at {self._settings.marketdata_address} failed ({error.code().name}: "
            f"{error.details()}); resubscribe with from_seq={flow.sent_through + 1}"
        )


def _traced(
    encoder: convert.FeatureBatchEncoder, spans: RowSpans
) -> Callable[[NumberedRows], features_pb2.SubscribeResponse]:
    def encode(numbered: NumberedRows) -> features_pb2.SubscribeResponse:
        message = encoder(numbered)
        spans.start_traces(numbered, message.batch)
        return message

    return encode


def _publishing(
    encode: Callable[[NumberedRows], features_pb2.SubscribeResponse],
    latest: LatestFeaturesPublisher,
    plan: FeaturePlan,
) -> Callable[[NumberedRows], features_pb2.SubscribeResponse]:
    symbols = [symbol.name for symbol in plan.symbols]  # the engine's symbol_index order

    def publish(numbered: NumberedRows) -> features_pb2.SubscribeResponse:
        message = encode(numbered)  # called only when the batch is sent
        latest.offer(symbols, numbered.rows)
        return message

    return publish

"""gRPC adapter of the market data service: validates, converts, calls the core."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from quantmesh.marketdata.v1 import marketdata_pb2, marketdata_pb2_grpc
from quantmesh.observability import tracing
from quantmesh.runtime.errors import InvalidArgument, abort_on_domain_error
from quantmesh.runtime.logging import get_logger
from quantmesh.runtime.streams import CreditFlow, first_subscription, produce, read_controls
from quantmesh.services.marketdata import convert, spans
from quantmesh.services.marketdata.core import MarketData, paced
from quantmesh.services.marketdata.sources import TickColumns

SERVICE_NAME = marketdata_pb2.DESCRIPTOR.services_by_name["MarketDataService"].full_name

_log = get_logger("marketdata")

Context = grpc.aio.ServicerContext[Any, Any]


class MarketDataServicer(marketdata_pb2_grpc.MarketDataServiceServicer):
    """Serves :class:`MarketData` over gRPC; ``shutdown`` drains open streams.

    ``on_batch``, when given, sees every tick batch just before it is sent: the
    benchmark uses it to time ticks through the pipeline.
    """

    def __init__(
        self,
        core: MarketData,
        shutdown: asyncio.Event,
        on_batch: Callable[[TickColumns], None] | None = None,
    ) -> None:
        self._core = core
        self._shutdown = shutdown
        self._on_batch = on_batch

    async def ListSymbols(
        self, request: marketdata_pb2.ListSymbolsRequest, context: Context
    ) -> marketdata_pb2.ListSymbolsResponse:
        return marketdata_pb2.ListSymbolsResponse(
            symbols=[convert.symbol_to_proto(symbol) for symbol in self._core.symbols]
        )

    async def GetSymbolInfo(
        self, request: marketdata_pb2.GetSymbolInfoRequest, context: Context
    ) -> marketdata_pb2.GetSymbolInfoResponse:
        async with abort_on_domain_error(context):
            if not request.symbol:
                raise InvalidArgument("symbol is required, e.g. EURUSD")
            info = self._core.symbol(request.symbol)
        return marketdata_pb2.GetSymbolInfoResponse(info=convert.symbol_to_proto(info))

    async def GetRates(
        self, request: marketdata_pb2.GetRatesRequest, context: Context
    ) -> marketdata_pb2.GetRatesResponse:
        async with abort_on_domain_error(context):
            timeframe = convert.timeframe_from_proto(request.timeframe)
            bars = self._core.rates(
                request.symbol,
                timeframe,
                request.from_time_ms,
                request.to_time_ms,
                request.limit,
            )
            assert timeframe is not None  # rates() rejects a missing timeframe
            symbol = self._core.symbol(request.symbol)
        return marketdata_pb2.GetRatesResponse(
            rates=convert.rates_to_proto(symbol, timeframe, bars)
        )

    async def Subscribe(
        self,
        request_iterator: AsyncIterator[marketdata_pb2.SubscribeRequest],
        context: Context,
    ) -> AsyncIterator[marketdata_pb2.SubscribeResponse]:
        async with abort_on_domain_error(context):
            subscription = await first_subscription(request_iterator)
            if subscription is None:
                return
            plan = self._core.plan(convert.subscription_from_proto(subscription))
            flow = CreditFlow.starting_at(plan.from_seq, plan.initial_credit)
            reader = asyncio.create_task(read_controls(request_iterator, flow))
            # Read the peer now: asking a cancelled call for it crashes grpc's core.
            peer = context.peer()
            _log.info(
                "subscribed",
                peer=peer,
                symbols=[symbol.name for symbol in plan.symbols],
                from_seq=plan.from_seq,
                batch_size=plan.batch_size,
                speed=plan.speed,
            )
            encoder = convert.TickBatchEncoder(plan.symbols, plan.total)
            encode: Callable[[TickColumns], marketdata_pb2.SubscribeResponse] = encoder
            observe = self._on_batch
            traced = subscription.trace_batches and tracing.enabled()
            if observe is not None or traced:

                def encode(columns: TickColumns) -> marketdata_pb2.SubscribeResponse:
                    if observe is not None:
                        observe(columns)
                    message = encoder(columns)
                    if traced:
                        spans.record_batch(message.batch, peer)
                    return message

            try:
                batches = paced(plan.batches(), plan.speed)
                async for message in produce(
                    batches, flow, self._shutdown, encode, encoder.end, stream="marketdata"
                ):
                    yield message
            finally:
                reader.cancel()
                _log.info("stream ended", peer=peer, sent_through=flow.sent_through)

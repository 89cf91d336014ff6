"""gRPC adapter of the decision service: joins features and predictions, streams signals."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from quantmesh.decision.v1 import decision_pb2, decision_pb2_grpc
from quantmesh.marketdata.v1 import marketdata_pb2, marketdata_pb2_grpc
from quantmesh.mesh.transport import open_channel
from quantmesh.observability import tracing
from quantmesh.runtime.errors import NotFound, Unavailable, abort_on_domain_error
from quantmesh.runtime.logging import get_logger
from quantmesh.runtime.streams import CreditFlow, first_subscription, produce, read_controls
from quantmesh.services.decision import convert
from quantmesh.services.decision.config import DecisionSettings
from quantmesh.services.decision.core import NumberedSignals, numbered_signals, validate
from quantmesh.services.decision.policy import DecisionPolicy, PolicyConfig
from quantmesh.services.decision.similar import SimilarStates, open_similar_store
from quantmesh.services.decision.spans import SignalSpans
from quantmesh.services.decision.upstream import PredictionSubscriber, joined_inputs
from quantmesh.services.features.client import FeatureSubscriber
from quantmesh.services.registry.core import ModelRegistry

SERVICE_NAME = decision_pb2.DESCRIPTOR.services_by_name["DecisionService"].full_name

Context = grpc.aio.ServicerContext[Any, Any]

_log = get_logger("decision")


class DecisionServicer(decision_pb2_grpc.DecisionServiceServicer):
    """Streams the policy's signals over the features and inference streams."""

    def __init__(self, settings: DecisionSettings, shutdown: asyncio.Event) -> None:
        self._settings = settings
        self._shutdown = shutdown
        self._registry = ModelRegistry(settings.registry_root)
        # Similar past states for the reasons: None (off) unless similar_states > 0.
        self._vectors = open_similar_store(settings)

    @functools.lru_cache(maxsize=64)  # noqa: B019 - one servicer per process; versions are immutable
    def _model_info(self, name: str, version: str) -> tuple[int, tuple[str, ...]]:
        model = self._registry.get(name, version=int(version))
        return model.data_to_ms, tuple(model.feature_names)

    def _policy(self) -> DecisionPolicy:
        settings = self._settings
        return DecisionPolicy(
            PolicyConfig(
                min_confidence=settings.min_confidence,
                stop_atr_multiple=settings.stop_atr_multiple,
                reward_risk=settings.reward_risk,
            )
        )

    async def Subscribe(
        self, request_iterator: AsyncIterator[decision_pb2.SubscribeRequest], context: Context
    ) -> AsyncIterator[decision_pb2.SubscribeResponse]:
        settings = self._settings
        async with abort_on_domain_error(context):
            subscription = await first_subscription(request_iterator)
            if subscription is None:
                return
            request = validate(convert.subscription_from_proto(subscription))
            peer = context.peer()  # read now: a cancelled call can no longer tell
            flow = CreditFlow.starting_at(request.from_seq, request.initial_credit)
            reader = asyncio.create_task(read_controls(request_iterator, flow))
            _log.info("subscribed", peer=peer, symbols=request.symbols, from_seq=request.from_seq)
            try:
                async with (
                    open_channel(settings.marketdata_address, "marketdata") as marketdata,
                    open_channel(settings.features_address, "features") as features,
                    open_channel(settings.inference_address, "inference") as inference,
                ):
                    digits = await self._digits(marketdata, request.symbols)
                    symbols = sorted(digits)
                    spans = SignalSpans() if tracing.enabled() else None
                    predictions = PredictionSubscriber(
                        inference, symbols, [settings.model_name]
                    ).batches()
                    inputs = joined_inputs(
                        FeatureSubscriber(features, symbols).batches(),
                        predictions if spans is None else spans.observe(predictions),
                        digits,
                        self._model_info,
                        similar=SimilarStates.over(self._vectors, settings),
                    )
                    signals = numbered_signals(
                        inputs,
                        self._policy(),
                        request,
                        on_decided=None if spans is None else spans.on_decided,
                    )
                    async for message in produce(
                        signals,
                        flow,
                        self._shutdown,
                        _encoder(spans),
                        convert.end_of_stream,
                        stream="decision",
                    ):
                        yield message
            except grpc.aio.AioRpcError as error:
                raise Unavailable(
                    f"an upstream service failed ({error.code().name}: {error.details()}); "
                    f"resubscribe with from_seq={flow.sent_through + 1}"
                ) from None
            finally:
                reader.cancel()
                _log.info("stream ended", peer=peer, sent_through=flow.sent_through)

    async def _digits(self, channel: grpc.aio.Channel, wanted: tuple[str, ...]) -> dict[str, int]:
        stub = marketdata_pb2_grpc.MarketDataServiceStub(channel)
        listing = await stub.ListSymbols(marketdata_pb2.ListSymbolsRequest(), timeout=10)
        served = {info.name: info.digits for info in listing.symbols}
        unknown = [name for name in wanted if name not in served]
        if unknown:
            raise NotFound(
                f"unknown symbol(s) {', '.join(map(repr, unknown))}; market data serves: "
                f"{', '.join(served)}"
            )
        return {name: served[name] for name in (wanted or tuple(served))}


def _encoder(
    spans: SignalSpans | None,
) -> Callable[[NumberedSignals], decision_pb2.SubscribeResponse]:
    if spans is None:
        return convert.encode

    def encode(numbered: NumberedSignals) -> decision_pb2.SubscribeResponse:
        message = convert.encode(numbered)
        spans.stamp(message)
        return message

    return encode

"""gRPC adapters of the inference service: Open Inference Protocol and quantmesh streaming.

Both servicers share one :class:`ModelServer`. Inference runs on the event loop: a
batch-1 session run takes ~10 µs, far less than a hop to a worker thread, and the
sessions use one intra-op thread, so they never fight the loop for the two cores.
Loading a model (SwitchModel) is slow and runs in a worker thread instead, so requests
keep flowing on the old version until the new one is swapped in.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import grpc

from quantmesh.features.v1 import features_pb2
from quantmesh.inference.v1 import (
    inference_pb2,
    inference_pb2_grpc,
    open_inference_pb2,
    open_inference_pb2_grpc,
)
from quantmesh.mesh.transport import open_channel
from quantmesh.observability import tracing
from quantmesh.runtime.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Unavailable,
    abort_on_domain_error,
)
from quantmesh.runtime.logging import get_logger
from quantmesh.runtime.streams import CreditFlow, first_subscription, produce, read_controls
from quantmesh.services.features.client import FeatureSubscriber
from quantmesh.services.inference import convert
from quantmesh.services.inference.core import PLATFORM, ModelServer
from quantmesh.services.inference.spans import PredictionSpans
from quantmesh.services.inference.stream import PendingBatch, StreamPredictor, plan_stream

OPEN_INFERENCE_SERVICE = open_inference_pb2.DESCRIPTOR.services_by_name[
    "GRPCInferenceService"
].full_name
INFERENCE_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
SERVER_NAME = "quantmesh-inference"

_log = get_logger("inference")

Context = grpc.aio.ServicerContext[Any, Any]


def _server_version() -> str:
    try:
        return version("quantmesh")
    except PackageNotFoundError:  # running from a source tree without an install
        return "0+unknown"


class OpenInferenceServicer(open_inference_pb2_grpc.GRPCInferenceServiceServicer):
    """The KServe v2 / Open Inference Protocol endpoints over a :class:`ModelServer`."""

    def __init__(self, core: ModelServer) -> None:
        self._core = core
        self._version = _server_version()

    async def ServerLive(
        self, request: open_inference_pb2.ServerLiveRequest, context: Context
    ) -> open_inference_pb2.ServerLiveResponse:
        return open_inference_pb2.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: open_inference_pb2.ServerReadyRequest, context: Context
    ) -> open_inference_pb2.ServerReadyResponse:
        served = self._core.served
        ready = bool(served) and all(model.ready for model in served)
        return open_inference_pb2.ServerReadyResponse(ready=ready)

    async def ModelReady(
        self, request: open_inference_pb2.ModelReadyRequest, context: Context
    ) -> open_inference_pb2.ModelReadyResponse:
        async with abort_on_domain_error(context):
            model = self._core.model(request.name, request.version)
        return open_inference_pb2.ModelReadyResponse(ready=model.ready)

    async def ServerMetadata(
        self, request: open_inference_pb2.ServerMetadataRequest, context: Context
    ) -> open_inference_pb2.ServerMetadataResponse:
        return open_inference_pb2.ServerMetadataResponse(
            name=SERVER_NAME, version=self._version, extensions=[]
        )

    async def ModelMetadata(
        self, request: open_inference_pb2.ModelMetadataRequest, context: Context
    ) -> open_inference_pb2.ModelMetadataResponse:
        async with abort_on_domain_error(context):
            model = self._core.model(request.name, request.version)
            versions = self._core.registry.list_versions(model.name)
        return convert.model_metadata(model, versions, PLATFORM)

    async def ModelInfer(
        self, request: open_inference_pb2.ModelInferRequest, context: Context
    ) -> open_inference_pb2.ModelInferResponse:
        async with abort_on_domain_error(context):
            model = self._core.model(request.model_name, request.model_version)
            features = model.check(convert.features_from_infer_request(request, model))
            outputs = convert.requested_outputs(request, model)
            if outputs == [model.probability]:
                # The usual request: through the prediction cache, shaped as the model's.
                prediction = self._core.predict_with(model, features)
                shape = (len(features), *model.probability.shape[1:])
                arrays = [prediction.probability_up.reshape(shape)]
            else:
                arrays = model.run(features, [spec.name for spec in outputs])
            return convert.infer_response(request, model, list(zip(outputs, arrays, strict=True)))


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """Streams predictions on the feature stream; switches and lists served models.

    Parameters
    ----------
    core:
        The model server shared with the Open Inference Protocol servicer.
    features_address:
        ``host:port`` of the features service that Subscribe reads.
    shutdown:
        Set when the service drains; open streams end at a batch boundary.
    stream_features:
        Columns the feature stream carries, to refuse a stream whose models need others.
    """

    def __init__(
        self,
        core: ModelServer,
        features_address: str,
        shutdown: asyncio.Event,
        stream_features: Collection[str] | None = None,
    ) -> None:
        self._core = core
        self._features_address = features_address
        self._shutdown = shutdown
        self._stream_features = stream_features

    async def SwitchModel(
        self, request: inference_pb2.SwitchModelRequest, context: Context
    ) -> inference_pb2.SwitchModelResponse:
        async with abort_on_domain_error(context):
            if request.role != inference_pb2.SERVING_ROLE_PRIMARY:
                raise InvalidArgument(
                    "role must be SERVING_ROLE_PRIMARY: canary and shadow serving are not "
                    f"implemented yet (got {inference_pb2.ServingRole.Name(request.role)})"
                )
            if request.traffic_bps:
                raise InvalidArgument("traffic_bps is only for SERVING_ROLE_CANARY; leave it 0")
            target = request.WhichOneof("target")
            if target is None:
                raise InvalidArgument("set the target: an alias (e.g. champion) or a version")
            # Loading takes milliseconds to seconds: off the loop, so inference goes on.
            switched = await asyncio.to_thread(
                self._core.switch,
                request.model_name,
                alias=request.alias,
                version=request.version,
            )
        _log.info(
            "model switched",
            model=switched.model.label,
            alias=switched.model.alias,
            previous=switched.previous.label if switched.previous else None,
        )
        return inference_pb2.SwitchModelResponse(
            model=convert.served_model_to_proto(switched.model),
            previous=convert.model_ref_to_proto(switched.previous) if switched.previous else None,
        )

    async def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: Context
    ) -> inference_pb2.ListModelsResponse:
        return inference_pb2.ListModelsResponse(
            models=[convert.served_model_to_proto(model) for model in self._core.served]
        )

    async def Subscribe(
        self,
        request_iterator: AsyncIterator[inference_pb2.SubscribeRequest],
        context: Context,
    ) -> AsyncIterator[inference_pb2.SubscribeResponse]:
        async with abort_on_domain_error(context):
            subscription = await first_subscription(request_iterator)
            if subscription is None:
                return
            request = convert.stream_request_from_proto(subscription)
            plan = plan_stream(request, self._core, self._stream_features)
            predict = StreamPredictor(self._core, plan)
            flow = CreditFlow.starting_at(plan.from_seq, plan.initial_credit)
            reader = asyncio.create_task(read_controls(request_iterator, flow))
            # Read the peer now: asking a cancelled call for it crashes grpc's core.
            peer = context.peer()
            _log.info("subscribed", peer=peer, models=plan.model_names, from_seq=plan.from_seq)
            address = self._features_address
            try:
                async with open_channel(address, "features") as channel:
                    # Each feature row starts a decision's trace when inference traces.
                    spans = PredictionSpans() if tracing.enabled() else None
                    subscriber = FeatureSubscriber(
                        channel,
                        plan.symbols,
                        from_seq=plan.feature_from_seq,
                        batch_size=plan.feature_batch_size,
                        trace_rows=spans is not None,
                    )
                    pending = _pending(subscriber.batches(), predict, spans)

                    def encode(batch: PendingBatch) -> inference_pb2.SubscribeResponse:
                        columns = predict(batch)
                        message = convert.prediction_batch_to_proto(columns)
                        if spans is not None:
                            spans.record(columns, message.batch)
                        return message

                    async for message in produce(
                        pending, flow, self._shutdown, encode, stream="inference"
                    ):
                        yield message
            except grpc.aio.AioRpcError as error:
                # The subscriber already retried what was retryable; the consumer may too.
                raise _upstream_error(error, address, flow.sent_through + 1) from error
            finally:
                reader.cancel()
                _log.info("stream ended", peer=peer, sent_through=flow.sent_through)


async def _pending(
    batches: AsyncIterator[features_pb2.FeatureBatch],
    predict: StreamPredictor,
    spans: PredictionSpans | None,
) -> AsyncIterator[PendingBatch]:
    # Predicted later, in encode(): produce() reads one batch ahead of the credit.
    async for batch in batches:
        if spans is not None:
            spans.on_feature_batch(batch)
        yield predict.pending(convert.feature_columns_from_proto(batch))


# Upstream statuses the consumer caused (its symbols, its from_seq) keep their meaning.
_UPSTREAM: dict[grpc.StatusCode, type[DomainError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
}


def _upstream_error(error: grpc.aio.AioRpcError, address: str, resume_from: int) -> DomainError:
    reason = f"features service at {address}: {error.details() or error.code().name}"
    kind = _UPSTREAM.get(error.code())
    if kind is None:
        return Unavailable(f"{reason}; resubscribe with from_seq={resume_from}")
    return kind(reason)

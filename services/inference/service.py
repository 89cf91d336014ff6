"""Assemble the inference service from its settings.

One server carries the Open Inference Protocol (``inference.GRPCInferenceService``),
quantmesh's streaming and model management (``quantmesh.inference.v1.InferenceService``)
and the model registry (``quantmesh.registry.v1.ModelRegistryService``), as the seed's
ml-processing service on port 8006 did.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from quantmesh.inference.v1 import inference_pb2_grpc, open_inference_pb2_grpc
from quantmesh.registry.v1 import registry_pb2_grpc
from quantmesh.runtime.errors import DomainError
from quantmesh.runtime.logging import get_logger
from quantmesh.runtime.server import ServiceRuntime
from quantmesh.services.features.schema import FEATURE_NAMES
from quantmesh.services.inference.cache import PredictionCache
from quantmesh.services.inference.config import ENV_PREFIX, InferenceSettings
from quantmesh.services.inference.core import ModelServer
from quantmesh.services.inference.servicer import (
    INFERENCE_SERVICE,
    OPEN_INFERENCE_SERVICE,
    InferenceServicer,
    OpenInferenceServicer,
)
from quantmesh.services.registry.core import ModelRegistry
from quantmesh.services.registry.servicer import SERVICE_NAME as REGISTRY_SERVICE
from quantmesh.services.registry.servicer import ModelRegistryServicer
from quantmesh.storage.cache import open_cache
from quantmesh.storage.resilience import Backoff

_log = get_logger("inference")
CACHE_URL_SETTING = f"{ENV_PREFIX}CACHE_URL"
# The hot path waits for the shared cache: a short backoff, then predict without it. At
# start-up, the store gets the usual few seconds (it may be starting beside us).
SHARED_CACHE_BACKOFF = Backoff(attempts=2, first_delay=0.05, max_delay=0.05)
SHARED_CACHE_CONNECT_BACKOFF = Backoff()


def build_model_server(settings: InferenceSettings, registry: ModelRegistry) -> ModelServer:
    """A model server serving ``settings.refs``; a ref that cannot load is logged.

    Raises
    ------
    StoreConfigError, StoreUnavailableError
        When ``cache_url`` is malformed or its store unreachable; the message names
        ``QUANTMESH_INFERENCE_CACHE_URL``.
    """
    server = ModelServer(
        registry, stream_feature_names=FEATURE_NAMES, cache=build_prediction_cache(settings)
    )
    for ref in settings.refs:
        try:
            switched = server.serve(ref)
        except DomainError as error:
            _log.warning(
                "model not served", ref=ref, registry=str(registry.root), reason=str(error)
            )
            continue
        _log.info("model served", ref=ref, model=switched.model.label)
    return server


def build_prediction_cache(settings: InferenceSettings) -> PredictionCache:
    """The in-process cache, in front of the shared store ``cache_url`` names if any."""
    shared = None
    if settings.cache_url:
        shared = open_cache(
            settings.cache_url,
            CACHE_URL_SETTING,
            backoff=SHARED_CACHE_BACKOFF,
            connect_backoff=SHARED_CACHE_CONNECT_BACKOFF,
        )
        _log.info("shared prediction cache", url=shared.url)
    return PredictionCache(settings.cache_size, shared, ttl_s=settings.cache_ttl_seconds)


def build_runtime(
    settings: InferenceSettings,
    registry: ModelRegistry | None = None,
    model_server: ModelServer | None = None,
) -> ServiceRuntime:
    """A runtime serving the models ``settings`` name from ``registry`` (default: its root).

    ``model_server`` replaces the one built from the settings (tests and benchmarks
    pass theirs to look at its cache); it must use the same registry.
    """
    if model_server is not None:
        registry = model_server.registry
    registry = registry or ModelRegistry(settings.registry_root)
    core = model_server or build_model_server(settings, registry)
    background: list[asyncio.Task[None]] = []  # held: the loop keeps only weak references

    def register(server: grpc.aio.Server, shutdown: asyncio.Event) -> None:
        open_inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            OpenInferenceServicer(core), server
        )
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(
            InferenceServicer(core, settings.features_address, shutdown, FEATURE_NAMES), server
        )
        registry_pb2_grpc.add_ModelRegistryServiceServicer_to_server(
            ModelRegistryServicer(
                registry,
                # An alias moved here is served before SetAlias answers, not at the next poll.
                on_alias_change=lambda: asyncio.to_thread(_refresh, core),
                is_followed=lambda name, alias: any(
                    model.name == name and model.alias == alias for model in core.served
                ),
            ),
            server,
        )
        if settings.alias_poll_seconds > 0:
            # register() runs inside ServiceRuntime.start(), so a loop is running.
            background.append(
                asyncio.get_running_loop().create_task(
                    _follow_aliases(core, settings.alias_poll_seconds, shutdown)
                )
            )

    async def close_cache_at_stop(shutdown: asyncio.Event) -> None:
        # Not at `shutdown`: RPCs draining in the grace period still read the cache. The
        # runtime cancels its jobs once the server has stopped.
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            core.cache.close()

    return ServiceRuntime(
        "inference",
        settings,
        [OPEN_INFERENCE_SERVICE, INFERENCE_SERVICE, REGISTRY_SERVICE],
        register,
        # A model server passed in is the caller's to close.
        background=[close_cache_at_stop]
        if model_server is None and core.cache.shared is not None
        else [],
    )


def _refresh(core: ModelServer) -> None:
    try:
        for switched in core.refresh():
            _log.info("alias moved, model switched", model=switched.model.label)
    except DomainError as error:  # e.g. the new version cannot load: keep the old one
        _log.warning("alias moved but the new version is not served", reason=str(error))


async def _follow_aliases(core: ModelServer, every: float, shutdown: asyncio.Event) -> None:
    """Re-read followed aliases every ``every`` seconds until the service drains."""
    while not shutdown.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(shutdown.wait(), timeout=every)
        if not shutdown.is_set():
            await asyncio.to_thread(_refresh, core)

"""Assemble the features service from its settings."""

from __future__ import annotations

import asyncio

import grpc

from quantmesh.features.v1 import features_pb2_grpc
from quantmesh.runtime.server import ServiceRuntime
from quantmesh.services.features.config import ENV_PREFIX, FeaturesSettings
from quantmesh.services.features.latest import LatestFeaturesPublisher
from quantmesh.services.features.servicer import SERVICE_NAME, FeaturesServicer
from quantmesh.storage.cache import open_cache

CACHE_URL_SETTING = f"{ENV_PREFIX}CACHE_URL"


def build_runtime(settings: FeaturesSettings) -> ServiceRuntime:
    """A runtime serving feature rows computed from ``settings.marketdata_address``.

    With ``cache_url`` set, the latest vector per symbol goes to that cache; a malformed
    URL or an unreachable store fails here, naming ``QUANTMESH_FEATURES_CACHE_URL``.
    """
    latest = None
    if settings.cache_url:
        latest = LatestFeaturesPublisher(open_cache(settings.cache_url, CACHE_URL_SETTING))

    def register(server: grpc.aio.Server, shutdown: asyncio.Event) -> None:
        features_pb2_grpc.add_FeaturesServiceServicer_to_server(
            FeaturesServicer(settings, shutdown, latest), server
        )

    background = [] if latest is None else [latest.run]
    return ServiceRuntime("features", settings, [SERVICE_NAME], register, background=background)

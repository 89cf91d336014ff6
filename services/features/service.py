"""Assemble the features service from its settings."""

from __future__ import annotations

import asyncio

import grpc

from quantmesh.features.v1 import features_pb2_grpc
from quantmesh.runtime.server import ServiceRuntime
from quantmesh.services.features.config import FeaturesSettings
from quantmesh.services.features.servicer import SERVICE_NAME, FeaturesServicer


def build_runtime(settings: FeaturesSettings) -> ServiceRuntime:
    """A runtime serving feature rows computed from ``settings.marketdata_address``."""

    def register(server: grpc.aio.Server, shutdown: asyncio.Event) -> None:
        features_pb2_grpc.add_FeaturesServiceServicer_to_server(
            FeaturesServicer(settings, shutdown), server
        )

    return ServiceRuntime("features", settings, [SERVICE_NAME], register)

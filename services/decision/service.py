"""Assemble the decision service from its settings."""

from __future__ import annotations

import asyncio

import grpc

from quantmesh.decision.v1 import decision_pb2_grpc
from quantmesh.runtime.server import ServiceRuntime
from quantmesh.services.decision.config import DecisionSettings
from quantmesh.services.decision.servicer import SERVICE_NAME, DecisionServicer


def build_runtime(settings: DecisionSettings) -> ServiceRuntime:
    """A runtime streaming signals over the configured features and inference services."""

    def register(server: grpc.aio.Server, shutdown: asyncio.Event) -> None:
        decision_pb2_grpc.add_DecisionServiceServicer_to_server(
            DecisionServicer(settings, shutdown), server
        )

    return ServiceRuntime("decision", settings, [SERVICE_NAME], register)

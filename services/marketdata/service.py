"""Assemble the market data service from its settings."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc

from quantmesh.marketdata.v1 import marketdata_pb2_grpc
from quantmesh.runtime.server import ServiceRuntime
from quantmesh.services.marketdata.config import MarketDataSettings
from quantmesh.services.marketdata.core import MarketData
from quantmesh.services.marketdata.servicer import SERVICE_NAME, MarketDataServicer
from quantmesh.services.marketdata.sources import ReplaySource, TickColumns, TickSource
from quantmesh.services.marketdata.synthetic import SyntheticSource


def build_source(settings: MarketDataSettings) -> TickSource:
    """The tick source the settings name."""
    if settings.source == "synthetic":
        return SyntheticSource(
            seed=settings.seed,
            correlation=settings.synthetic_correlation,
            duration_ms=int(settings.synthetic_hours * 3_600_000),
        )
    return ReplaySource.eurusd(seed=settings.seed, mean_ticks_per_bar=settings.mean_ticks_per_bar)


def build_runtime(
    settings: MarketDataSettings,
    source: TickSource | None = None,
    on_batch: Callable[[TickColumns], None] | None = None,
) -> ServiceRuntime:
    """A runtime serving market data from ``source`` (default: the one settings name)."""
    core = MarketData(source or build_source(settings))

    def register(server: grpc.aio.Server, shutdown: asyncio.Event) -> None:
        marketdata_pb2_grpc.add_MarketDataServiceServicer_to_server(
            MarketDataServicer(core, shutdown, on_batch), server
        )

    return ServiceRuntime("marketdata", settings, [SERVICE_NAME], register)

"""Assemble the risk service: durable store, engine, graph store, gRPC adapter and the driver."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import grpc

from quantmesh.execution.v1 import execution_pb2_grpc
from quantmesh.mesh.transport import open_channel
from quantmesh.observability.audit.decisions import DecisionLog
from quantmesh.risk.v1 import risk_pb2_grpc
from quantmesh.runtime.server import ServiceRuntime
from quantmesh.services.risk.config import GRAPH_URL_SETTING, KNOWN_SYMBOLS, RiskSettings
from quantmesh.services.risk.convert import QuoteBook
from quantmesh.services.risk.driver import RiskDriver
from quantmesh.services.risk.graph import RiskGraph
from quantmesh.services.risk.servicer import SERVICE_NAME, RiskServicer
from quantmesh.services.risk.store import DurableRiskEngine, RiskStore

SPIFFE_ID = "spiffe://quantmesh.local/risk"  # the producer of risk's audit records


@dataclass(frozen=True)
class RiskService:
    """The assembled service: its runtime, and the parts tests and metrics look into."""

    runtime: ServiceRuntime
    risk: DurableRiskEngine
    driver: RiskDriver
    graph: RiskGraph


def build_runtime(settings: RiskSettings) -> ServiceRuntime:
    """A runtime serving risk queries and, with ``drive``, trading the signal stream."""
    return build(settings).runtime


def build(settings: RiskSettings) -> RiskService:
    """Assemble the service. The store is read before anything serves: an engaged kill
    switch is engaged from the first request on.

    The graph store opens first, so a malformed or unreachable ``graph_url`` fails here
    (StoreConfigError, StoreUnavailableError naming ``QUANTMESH_RISK_GRAPH_URL``) before
    anything else is opened. The runtime's graph job closes it at shutdown.
    """
    graph = RiskGraph.open(
        settings.graph_url,
        GRAPH_URL_SETTING,
        KNOWN_SYMBOLS,
        refresh_s=settings.graph_refresh_seconds,
    )
    settings.folder.mkdir(parents=True, exist_ok=True)
    store = RiskStore(settings.folder / "risk.sqlite3")
    risk = DurableRiskEngine(store)
    quotes = QuoteBook(KNOWN_SYMBOLS)
    audit = (
        DecisionLog.open(SPIFFE_ID, settings.audit)
        if settings.audit is not None and settings.drive
        else None
    )
    driver = RiskDriver(
        risk,
        store,
        quotes,
        KNOWN_SYMBOLS,
        audit=audit,
        graph=graph,
        account_id=settings.account_id,
        subscribe=settings.symbols,
        deviation_points=settings.deviation_points,
        decision_address=settings.decision_address,
        execution_address=settings.execution_address,
    )
    channels: list[grpc.aio.Channel] = []

    def register(server: grpc.aio.Server, shutdown: asyncio.Event) -> None:
        # The queries' channel to execution; the driver opens its own, so that its
        # reconnects never disturb a query in flight.
        channel = open_channel(settings.execution_address, "execution")
        channels.append(channel)
        risk_pb2_grpc.add_RiskServiceServicer_to_server(
            RiskServicer(
                risk,
                execution_pb2_grpc.ExecutionServiceStub(channel),
                quotes,
                KNOWN_SYMBOLS,
                known_accounts={settings.account_id},
                graph=graph,
            ),
            server,
        )

    async def close_channels(shutdown: asyncio.Event) -> None:
        # Background jobs are cancelled once the server has stopped (in-flight queries
        # drained): that is when the channel may close.
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            for channel in channels:
                await channel.close(None)
            if audit is not None:
                await audit.close()  # commits what the driver queued

    # The graph's job records the provenance of the driver's decisions and the dry runs';
    # cancelled at shutdown, it records what is still pending, then closes the store.
    background: list[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = [
        close_channels,
        graph.run,
    ]
    if settings.drive:
        background.append(driver.run)
    runtime = ServiceRuntime("risk", settings, [SERVICE_NAME], register, background=background)
    return RiskService(runtime, risk, driver, graph)

"""Assemble the analytics service: store, recorders of fills and marks, servicer, and the
writer that attaches fills to their decisions' provenance when a graph store is set."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import grpc

from quantmesh.analytics.v1 import analytics_pb2_grpc
from quantmesh.observability.audit.decisions import DecisionLog
from quantmesh.runtime.server import ServiceRuntime
from quantmesh.services.analytics.config import GRAPH_URL_SETTING, AnalyticsSettings
from quantmesh.services.analytics.core import AccountAnalytics
from quantmesh.services.analytics.graph import FillProvenance
from quantmesh.services.analytics.recorder import record_marks, record_reports
from quantmesh.services.analytics.runs import Account
from quantmesh.services.analytics.servicer import SERVICE_NAME, AnalyticsServicer
from quantmesh.services.analytics.store import AnalyticsStore

STORE_FILE = "analytics.sqlite3"


SPIFFE_ID = "spiffe://quantmesh.local/analytics"  # the producer of its audit records


def build_runtime(settings: AnalyticsSettings) -> ServiceRuntime:
    """A runtime answering from the store while two jobs keep recording into it.

    The jobs resume from the cursors in the store, so a restart on the same folder
    continues where the last run stopped. With ``graph_url``, the graph store opens
    first, so a malformed or unreachable one fails here (StoreConfigError,
    StoreUnavailableError naming ``QUANTMESH_ANALYTICS_GRAPH_URL``) before anything else
    is opened; its job closes it at shutdown.
    """
    provenance = (
        FillProvenance.open(settings.graph_url, GRAPH_URL_SETTING) if settings.graph_url else None
    )
    settings.folder.mkdir(parents=True, exist_ok=True)
    store = AnalyticsStore(settings.folder / STORE_FILE)
    account = Account(settings.account_id, settings.currency, settings.starting_balance)
    analytics = AccountAnalytics(store, account)

    def register(server: grpc.aio.Server, shutdown: asyncio.Event) -> None:
        analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server(
            AnalyticsServicer(analytics), server
        )

    async def reports(shutdown: asyncio.Event) -> None:
        audit = None if settings.audit is None else DecisionLog.open(SPIFFE_ID, settings.audit)
        try:
            await record_reports(
                store,
                settings.execution_address,
                settings.report_batch_size,
                shutdown,
                audit,
                provenance,
            )
        finally:
            if audit is not None:
                await audit.close()

    async def marks(shutdown: asyncio.Event) -> None:
        await record_marks(
            store,
            settings.marketdata_address,
            settings.mark_symbols,
            settings.tick_batch_size,
            shutdown,
        )

    background: list[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = [reports, marks]
    if provenance is not None:
        # Cancelled at shutdown, it attaches what is still pending, then closes the store.
        background.append(provenance.run)
    return ServiceRuntime("analytics", settings, [SERVICE_NAME], register, background=background)

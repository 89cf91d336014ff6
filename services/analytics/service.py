"""Assemble the analytics service: store, recorders of fills and marks, servicer."""

from __future__ import annotations

import asyncio

import grpc

from quantmesh.analytics.v1 import analytics_pb2_grpc
from quantmesh.observability.audit.decisions import DecisionLog
from quantmesh.runtime.server import ServiceRuntime
from quantmesh.services.analytics.config import AnalyticsSettings
from quantmesh.services.analytics.core import AccountAnalytics
from quantmesh.services.analytics.recorder import record_marks, record_reports
from quantmesh.services.analytics.runs import Account
from quantmesh.services.analytics.servicer import SERVICE_NAME, AnalyticsServicer
from quantmesh.services.analytics.store import AnalyticsStore

STORE_FILE = "analytics.sqlite3"


SPIFFE_ID = "spiffe://quantmesh.local/analytics"  # the producer of its audit records


def build_runtime(settings: AnalyticsSettings) -> ServiceRuntime:
    """A runtime answering from the store while two jobs keep recording into it.

    The jobs resume from the cursors in the store, so a restart on the same folder
    continues where the last run stopped.
    """
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
                store, settings.execution_address, settings.report_batch_size, shutdown, audit
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

    return ServiceRuntime(
        "analytics", settings, [SERVICE_NAME], register, background=[reports, marks]
    )

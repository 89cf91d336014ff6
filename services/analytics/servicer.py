"""gRPC adapter of the analytics service: ranges in, performance, curves and reports out.

Every answer is computed from the recorded fills and marks (:mod:`.core`); analysing a
window replays the ledger, which takes a fraction of a second for a year of hourly
marks, so it runs in a worker thread and never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import UTC, datetime
from typing import Any

import grpc

from quantmesh.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from quantmesh.runtime.errors import FailedPrecondition, InvalidArgument, abort_on_domain_error
from quantmesh.runtime.metrics import timed
from quantmesh.services.analytics import convert
from quantmesh.services.analytics.core import AccountAnalytics, Window

SERVICE_NAME = analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"].full_name
MAX_REPORT_BYTES = 16 * 1024 * 1024  # the contract's bound on GenerateReport content

Context = grpc.aio.ServicerContext[Any, Any]


class AnalyticsServicer(analytics_pb2_grpc.AnalyticsServiceServicer):
    """Serves the analytics of one account."""

    def __init__(self, analytics: AccountAnalytics) -> None:
        self._analytics = analytics
        self._currency = analytics.account.currency

    async def _window(self, account_id: str, message: analytics_pb2.TimeRange) -> Window:
        self._analytics.check_account(account_id)
        from_ms, to_ms = convert.time_range(message)
        with timed("analytics"):
            return await asyncio.to_thread(self._analytics.window, from_ms, to_ms)

    async def GetEquityCurve(
        self, request: analytics_pb2.GetEquityCurveRequest, context: Context
    ) -> analytics_pb2.GetEquityCurveResponse:
        async with abort_on_domain_error(context):
            period_ms = convert.resolution_ms(request.resolution)
            window = await self._window(request.account_id, request.range)
        curve = convert.equity_curve_to_proto(window.analysis.ledger, self._currency, period_ms)
        return analytics_pb2.GetEquityCurveResponse(curve=curve)

    async def GetPerformance(
        self, request: analytics_pb2.GetPerformanceRequest, context: Context
    ) -> analytics_pb2.GetPerformanceResponse:
        async with abort_on_domain_error(context):
            window = await self._window(request.account_id, request.range)
        analysis = window.analysis
        return analytics_pb2.GetPerformanceResponse(
            performance=convert.performance_to_proto(analysis.ledger, analysis.overall)
        )

    async def GetModelPerformance(
        self, request: analytics_pb2.GetModelPerformanceRequest, context: Context
    ) -> analytics_pb2.GetModelPerformanceResponse:
        async with abort_on_domain_error(context):
            if not request.model_name:
                raise InvalidArgument("model_name is required, e.g. eurusd-h1-direction")
            from_ms, to_ms = convert.time_range(request.range)
            window, keys = await asyncio.to_thread(
                self._analytics.models,
                request.model_name,
                request.model_version,
                from_ms,
                to_ms,
            )
        return analytics_pb2.GetModelPerformanceResponse(
            models=[convert.model_performance_to_proto(window, key) for key in keys]
        )

    async def GenerateReport(
        self, request: analytics_pb2.GenerateReportRequest, context: Context
    ) -> analytics_pb2.GenerateReportResponse:
        async with abort_on_domain_error(context):
            convert.check_format(request.format)
            window = await self._window(request.account_id, request.range)
            generated_ms = int(time.time() * 1000)
            content = await asyncio.to_thread(
                convert.report_content,
                window,
                request.format,
                include_models=request.include_models,
                generated_time_ms=generated_ms,
                source=f"analytics service, {_range_text(window)}",
            )
            if len(content) > MAX_REPORT_BYTES:
                raise FailedPrecondition(
                    f"the report is {len(content):,} bytes, over the 16 MiB limit: "
                    "ask for a shorter range"
                )
        return analytics_pb2.GenerateReportResponse(
            content=content,
            content_type=convert.CONTENT_TYPES[request.format],
            sha256=hashlib.sha256(content).digest(),
            generated_time_ms=generated_ms,
        )


def _range_text(window: Window) -> str:
    def when(time_ms: int) -> str:
        return datetime.fromtimestamp(time_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")

    start = when(window.from_ms) if window.from_ms else "the first fill"
    end = when(window.to_ms) if window.to_ms is not None else "now"
    return f"range {start} → {end}"

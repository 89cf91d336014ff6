"""Assemble the recorder service: the timeseries store and the job that fills it.

The recorder serves no API of its own; its gRPC server answers health checks (and
reflection), so it is supervised like every other service.
"""

from __future__ import annotations

import asyncio

import grpc

from quantmesh.runtime.server import ServiceRuntime
from quantmesh.services.recorder.config import TIMESERIES_URL_SETTING, RecorderSettings
from quantmesh.services.recorder.job import record_ticks
from quantmesh.storage.timeseries import open_timeseries


def build_runtime(settings: RecorderSettings) -> ServiceRuntime:
    """A runtime recording market data's ticks into ``settings.timeseries_url``.

    The store opens here, so a malformed URL or an unreachable store fails at start-up,
    naming ``QUANTMESH_RECORDER_TIMESERIES_URL``. The job resumes from the store's
    cursor, so a restart continues where the last run's stored ticks end.
    """
    store = open_timeseries(settings.timeseries_url, TIMESERIES_URL_SETTING)

    def register(server: grpc.aio.Server, shutdown: asyncio.Event) -> None:
        """Nothing beyond the health and reflection services every runtime adds."""

    async def record(shutdown: asyncio.Event) -> None:
        try:
            await record_ticks(store, settings, shutdown)
        finally:
            await asyncio.to_thread(store.close)

    return ServiceRuntime("recorder", settings, [], register, background=[record])

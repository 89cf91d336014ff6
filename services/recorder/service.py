"""Assemble the recorder service: the stores and the job that fills them.

The recorder serves no API of its own; its gRPC server answers health checks (and
reflection), so it is supervised like every other service.
"""

from __future__ import annotations

import asyncio

import grpc

from quantmesh.runtime.server import ServiceRuntime
from quantmesh.services.recorder.config import (
    GRAPH_URL_SETTING,
    TIMESERIES_URL_SETTING,
    RecorderSettings,
)
from quantmesh.services.recorder.job import record
from quantmesh.storage.graph import open_graph
from quantmesh.storage.timeseries import open_timeseries


def build_runtime(settings: RecorderSettings) -> ServiceRuntime:
    """A runtime recording ticks and predictions into ``settings.timeseries_url``.

    The stores open here, so a malformed URL or an unreachable store fails at start-up,
    naming ``QUANTMESH_RECORDER_TIMESERIES_URL`` or ``QUANTMESH_RECORDER_GRAPH_URL``.
    The job resumes from the store's cursors, so a restart continues where the last
    run's stored ticks and predictions end.
    """
    store = open_timeseries(settings.timeseries_url, TIMESERIES_URL_SETTING)
    try:
        graph = open_graph(settings.graph_url, GRAPH_URL_SETTING)
    except Exception:
        store.close()
        raise

    def register(server: grpc.aio.Server, shutdown: asyncio.Event) -> None:
        """Nothing beyond the health and reflection services every runtime adds."""

    async def run(shutdown: asyncio.Event) -> None:
        try:
            await record(store, graph, settings, shutdown)
        finally:
            await asyncio.to_thread(graph.close)
            await asyncio.to_thread(store.close)

    return ServiceRuntime("recorder", settings, [], register, background=[run])

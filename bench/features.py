"""Feature throughput: the engine alone, and ticks through marketdata → features over gRPC.

The engine rows feed the whole shipped replay (621,187 ticks) through
:class:`FeatureEngine` in one process, at the batch sizes the service uses. The
pipeline row runs market data and features as two processes, as in production, and
times a consumer reading every feature row of the year: the tick rate that crosses
both services, including generation, two gRPC hops and the feature computation.

Target (DESIGN.md): at least 500,000 ticks/s through marketdata → features, batched.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

from quantmesh.mesh.launcher import local_pipeline
from quantmesh.runtime.config import quantmesh_home
from quantmesh.services.features.client import FeatureSubscriber
from quantmesh.services.features.engine import FeatureEngine
from quantmesh.services.marketdata.sources import EURUSD, ReplaySource, TickColumns

TARGET_TICKS_PER_S = 500_000


def _engine_row(batches: list[TickColumns], batch_size: int) -> dict[str, Any]:
    engine = FeatureEngine([EURUSD])
    started = time.perf_counter()
    rows = sum(len(engine.on_ticks(batch)) for batch in batches) + len(engine.finish())
    elapsed = time.perf_counter() - started
    ticks = sum(len(batch) for batch in batches)
    return {
        "path": "engine in process",
        "tick_batch": batch_size,
        "ticks": ticks,
        "rows": rows,
        "seconds": round(elapsed, 3),
        "ticks_per_s": round(ticks / elapsed),
        "target_ticks_per_s": TARGET_TICKS_PER_S,
    }


async def _read_all(address: str) -> tuple[int, float]:
    async with grpc.aio.insecure_channel(address) as channel:
        subscriber = FeatureSubscriber(channel, ["EURUSD"])
        started = time.perf_counter()
        rows = 0
        async for batch in subscriber.batches():
            rows += len(batch.time_msc)
        return rows, time.perf_counter() - started


def run() -> dict[str, Any]:
    """Measure feature throughput in process and across the two services."""
    source = ReplaySource.eurusd()
    results = []
    for batch_size in (1_000, 2_000):
        # Ticks are generated before timing: this row measures the engine alone.
        batches = list(source.read(["EURUSD"], batch_size=batch_size))
        results.append(_engine_row(batches, batch_size))
    ticks = source.tick_count(["EURUSD"])
    home = quantmesh_home()
    with local_pipeline(home, services=("marketdata", "features")) as running:
        for attempt in range(2):  # the first read also warms the services up
            rows, elapsed = asyncio.run(_read_all(running["features"].address))
            if attempt == 1:
                results.append(
                    {
                        "path": "marketdata → features (gRPC)",
                        "tick_batch": 2_000,
                        "ticks": ticks,
                        "rows": rows,
                        "seconds": round(elapsed, 3),
                        "ticks_per_s": round(ticks / elapsed),
                        "target_ticks_per_s": TARGET_TICKS_PER_S,
                    }
                )
        memory = {name: round(process.peak_rss_mb(), 1) for name, process in running.items()}
    return {"name": "features.throughput", "rows": results, "memory": {"peak_rss_mb": memory}}

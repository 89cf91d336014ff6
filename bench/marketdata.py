"""Tick streaming throughput of the market data service over gRPC, and its memory.

The service runs in its own process (as in production) and the consumer is the
:class:`TickSubscriber` every downstream service uses, with credit and acks, so the figure
is what a real consumer gets: generate → encode → gRPC → decode, across two processes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

from quantmesh.bench.harness import ServiceProcess, service_process
from quantmesh.services.marketdata.client import TickSubscriber

# Ticks read per batch size: enough for a stable rate, small enough for a quick suite.
TICK_BUDGET = {1: 20_000, 100: 300_000, 1_000: 0}  # 0 = the whole replay


async def _stream(address: str, batch_size: int, budget: int, window: int) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(address) as channel:
        subscriber = TickSubscriber(channel, ["EURUSD"], batch_size=batch_size, window=window)
        ticks = 0
        total = 0
        started = time.perf_counter()
        async for batch in subscriber.batches():
            ticks += len(batch.time_msc)
            total = batch.total
            if budget and ticks >= budget:
                break
        elapsed = time.perf_counter() - started
    return {
        "batch_size": batch_size,
        "ticks": ticks,
        "stream_total_ticks": total,
        "seconds": round(elapsed, 4),
        "ticks_per_s": round(ticks / elapsed),
        "batches_per_s": round(ticks / batch_size / elapsed),
    }


def run() -> dict[str, Any]:
    """Measure ticks/s at batch sizes 1, 100, 1000 and the server's memory while replaying."""
    rows = []
    with service_process("marketdata") as service:
        idle_rss = service.rss_mb()
        for batch_size, budget in TICK_BUDGET.items():
            window = 256 if batch_size == 1 else 32
            rows.append(asyncio.run(_stream(service.address, batch_size, budget, window)))
        replay = _memory_while_streaming(service, ["EURUSD"])
        replay["idle_rss_mb"] = round(idle_rss, 1)
        replay["peak_rss_mb"] = round(service.peak_rss_mb(), 1)
    # A stream ten times longer than the replay: a bounded server's memory stays flat.
    long_env = {
        "QUANTMESH_MARKETDATA_SOURCE": "synthetic",
        "QUANTMESH_MARKETDATA_SYNTHETIC_HOURS": "108",
    }
    with service_process("marketdata", env=long_env) as service:
        long_stream = _memory_while_streaming(service, [])
        long_stream["peak_rss_mb"] = round(service.peak_rss_mb(), 1)
    return {
        "name": "marketdata.tick_streaming",
        "rows": rows,
        "memory": {"replay": replay, "synthetic_10x_longer": long_stream},
    }


def _memory_while_streaming(service: ServiceProcess, symbols: list[str]) -> dict[str, Any]:
    # RSS after 10% of the stream vs at its end: a bounded stream keeps them equal.
    async def stream() -> dict[str, Any]:
        async with grpc.aio.insecure_channel(service.address) as channel:
            subscriber = TickSubscriber(channel, symbols, batch_size=1_000, window=32)
            readings: dict[str, Any] = {}
            ticks = 0
            started = time.perf_counter()
            async for batch in subscriber.batches():
                ticks += len(batch.time_msc)
                if "rss_mb_at_10pct" not in readings and ticks >= batch.total // 10:
                    readings["rss_mb_at_10pct"] = round(service.rss_mb(), 1)
            readings["rss_mb_at_end"] = round(service.rss_mb(), 1)
            readings["ticks"] = ticks
            readings["ticks_per_s"] = round(ticks / (time.perf_counter() - started))
            return readings

    return asyncio.run(stream())

"""The whole pipeline: tick-to-order-acknowledged latency, sustained ticks/s and memory.

**Latency.** Market data runs inside the benchmark process and notes when it hands each
tick batch to gRPC; features, inference, decision, risk and execution run as their own
processes. The benchmark follows execution's report stream: an order is acknowledged
when its ACCEPTED report arrives. Risk uses the signal id as the order's idempotency
key, and a signal id is a UUIDv7 carrying its bar's time, so each acknowledgement maps
back to the bar, and the bar to the tick that closed it:

    arrival of the ACCEPTED report − send time of the tick that closed the bar.

Execution reads its own copy of market data (a second, unlogged server replaying the
same ticks), so only the signal path's sends are timed. The replay is paced (a bar
every ``1/BARS_PER_SECOND`` s) so each figure is one decision's latency, not a backlog.

**Throughput and memory.** Every service, analytics included, replays the shipped year
as fast as it can, as ``quantmesh up --until-end`` does; then again with ten times as
many ticks per bar. Ticks/s is execution's count over the wall time; memory is the sum
of every service's peak RSS, compared between the two replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from quantmesh.bench.harness import percentiles_us
from quantmesh.bench.signal_path import _SendLog
from quantmesh.cli.dashboard import Dashboard, latency_rows
from quantmesh.execution.v1 import execution_pb2
from quantmesh.mesh.launcher import PIPELINE, Mesh, free_port, local_pipeline
from quantmesh.services.execution.client import ExecutionReportSubscriber
from quantmesh.services.features.engine import FeatureEngine
from quantmesh.services.features.schema import FeatureRows
from quantmesh.services.inference.testing import (
    MODEL_NAME,
    register_tiny_model,
    train_direction_model,
)
from quantmesh.services.marketdata.config import MarketDataSettings
from quantmesh.services.marketdata.service import build_runtime
from quantmesh.services.marketdata.sources import EURUSD, ReplaySource
from quantmesh.services.registry.core import ModelRegistry

BARS_PER_SECOND = 15.0  # a bar every 67 ms: the pipeline is idle when the next one closes
SPEED = 3_600.0 * BARS_PER_SECOND
ORDERS = 60  # acknowledged orders timed
WARMUP_ORDERS = 3
MAX_WALL_SECONDS = 300.0
TARGET = {"p50_us": 2_000, "p99_us": 5_000}
MEMORY_LIMIT_MB = 1_536
YEAR_BARS = 6_225  # H1 bars in the shipped year: one decision each
TICKS_PER_BAR = (100, 1_000)  # the shipped replay, then one ten times longer
ENV = {"QUANTMESH_EXECUTION_CLOCK": "pipeline", "QUANTMESH_RISK_DEVIATION_POINTS": "50"}
QUIET = {f"QUANTMESH_{name.upper()}_LOG_LEVEL": "WARNING" for name in PIPELINE}


def _bar_closing_seqs() -> dict[int, int]:
    """Feature row time (ms) → seq of the tick that closed that H1 bar."""
    engine = FeatureEngine([EURUSD])
    parts = [engine.on_ticks(batch) for batch in ReplaySource.eurusd().read(["EURUSD"])]
    rows = FeatureRows.concat([*parts, engine.finish()])
    times = np.asarray(rows.time_msc)
    closing = np.asarray(rows.tick_seq_last) + 1
    return {int(t): int(c) for t, c in zip(times, closing, strict=True)}


def signal_time_ms(signal_id: str) -> int | None:
    """The time a UUIDv7 signal id carries (its top 48 bits); None for another key."""
    try:
        value = uuid.UUID(signal_id).int
    except ValueError:
        return None
    return value >> 80


async def acknowledgements(
    open_channel: Callable[[], grpc.aio.Channel], count: int
) -> list[tuple[str, int]]:
    """(idempotency key, arrival ns) of the first ``count`` ACCEPTED reports."""
    acks: list[tuple[str, int]] = []

    async def follow() -> None:
        async with open_channel() as channel:
            subscriber = ExecutionReportSubscriber(channel, batch_size=1)
            async for batch in subscriber.batches():
                now = time.monotonic_ns()
                for report in batch.reports:
                    if report.state == execution_pb2.ORDER_STATE_ACCEPTED:
                        acks.append((report.idempotency_key, now))
                if len(acks) >= count:
                    return

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(follow(), timeout=MAX_WALL_SECONDS)
    return acks


def latencies_of(acks: list[tuple[str, int]], log: _SendLog) -> list[int]:
    """Each acknowledgement's latency (ns) from the send of the tick that closed its bar."""
    closing = _bar_closing_seqs()
    latencies = []
    for key, arrived_ns in acks[WARMUP_ORDERS:]:
        bar_ms = signal_time_ms(key.split(":")[0])
        seq = closing.get(bar_ms) if bar_ms is not None else None
        sent_ns = log.last_send_ns(seq) if seq is not None else None
        if sent_ns is not None:
            latencies.append(arrived_ns - sent_ns)
    return latencies


# Market data runs in the benchmark's process; these run as their own processes.
TIMED_SERVICES = ("features", "inference", "decision", "execution", "risk")


def paced_env(untimed_port: int) -> dict[str, str]:
    """The services' environment for a latency run: a paced replay, and execution fed
    by the untimed copy of market data, so only the signal path's sends are timed."""
    return (
        ENV
        | QUIET
        | {
            "QUANTMESH_FEATURES_TICK_SPEED": str(SPEED),
            "QUANTMESH_EXECUTION_MARKETDATA_ADDRESS": f"127.0.0.1:{untimed_port}",
        }
    )


@dataclass(frozen=True)
class PacedMarketData:
    """Market data in the benchmark's process: the timed copy the signal path reads
    (its sends logged), and an untimed copy for execution's own feed."""

    log: _SendLog
    port: int
    env: dict[str, str]  # the services' environment for the run (paced_env)


@contextlib.asynccontextmanager
async def paced_market_data() -> AsyncIterator[PacedMarketData]:
    log = _SendLog()
    port = free_port()
    timed = build_runtime(MarketDataSettings(port=port), on_batch=log)
    untimed = build_runtime(MarketDataSettings(port=0))
    await timed.start()
    untimed_port = await untimed.start()
    try:
        yield PacedMarketData(log, port, paced_env(untimed_port))
    finally:
        await timed.stop(grace=0.2)
        await untimed.stop(grace=0.2)


async def _measure_latency(home: Path) -> tuple[list[int], dict[str, Any]]:
    async with paced_market_data() as market:
        with local_pipeline(
            home,
            services=TIMED_SERVICES,
            env=market.env,
            metrics=True,
            external={"marketdata": market.port},
        ) as running:
            acks = await acknowledgements(
                lambda: grpc.aio.insecure_channel(running["execution"].address),
                ORDERS + WARMUP_ORDERS,
            )
            dashboard = Dashboard(running)
            stages = latency_rows(dashboard.refresh())
    stage_figures = {stage: {"p50_ms": p50, "p99_ms": p99} for stage, p50, p99 in stages}
    return latencies_of(acks, market.log), stage_figures


def replay_everything(home: Path, ticks_per_bar: int, mesh: Mesh = "plaintext") -> dict[str, Any]:
    """Run every service over the whole replay as fast as possible, as ``up --until-end``."""
    env = ENV | QUIET | {"QUANTMESH_MARKETDATA_MEAN_TICKS_PER_BAR": str(ticks_per_bar)}
    with local_pipeline(
        home, services=tuple(PIPELINE), env=env, metrics=True, mesh=mesh
    ) as running:
        # The replay starts when risk, the last link of the chain, subscribes.
        started = running["risk"].serving_since
        dashboard = Dashboard(running)
        while time.monotonic() - started < MAX_WALL_SECONDS:
            time.sleep(0.25)
            dashboard.refresh()
            if dashboard.replay_done:
                break
            for process in running.supervised():
                if process.exited:  # a benchmark reports a crash, it does not hide it
                    raise RuntimeError(
                        f"{process.name} exited during the replay:\n{process.logs()}"
                    )
        elapsed = (dashboard.finished_at or time.monotonic()) - started
        peak = {name: process.peak_rss_mb() for name, process in running.items()}
        proxies = list(running.proxies.values())
        proxy_memory = {
            "proxies": len(proxies),
            "proxies_peak_rss_mb": round(sum(p.peak_rss_mb() for p in proxies), 1),
            "proxies_pss_mb": round(sum(p.pss_mb() for p in proxies), 1),
        }
    return {
        "ticks_per_bar": ticks_per_bar,
        "ticks": int(dashboard.ticks),
        "seconds": round(elapsed, 1),
        "ticks_per_s": round(dashboard.ticks / elapsed),
        "bars_per_s": round(YEAR_BARS / elapsed),
        "finished": dashboard.replay_done,
        "peak_rss_mb": {name: round(mb, 1) for name, mb in peak.items()},
        "total_peak_rss_mb": round(sum(peak.values()), 1),
        **(proxy_memory if proxies else {}),
    }


def run() -> dict[str, Any]:
    """Tick-to-order latency through every stage, then throughput and memory."""
    with tempfile.TemporaryDirectory(prefix="quantmesh-bench-") as tmp:
        root = Path(tmp)
        homes = [root / "latency", *(root / f"replay-{n}" for n in TICKS_PER_BAR)]
        model = train_direction_model()
        for home in homes:
            register_tiny_model(ModelRegistry(home / "registry"), MODEL_NAME, model, ["champion"])
        latencies, stages = asyncio.run(_measure_latency(homes[0]))
        replays = [replay_everything(h, n) for h, n in zip(homes[1:], TICKS_PER_BAR, strict=True)]
    short, long = replays
    growth = long["total_peak_rss_mb"] / short["total_peak_rss_mb"] - 1
    row = {"path": "tick → order acknowledged (6 services)", "orders": len(latencies)}
    row |= percentiles_us(latencies)
    row |= {f"target_{key}": value for key, value in TARGET.items()}
    throughput = [{k: v for k, v in replay.items() if k != "peak_rss_mb"} for replay in replays]
    return {
        "name": "order_path",
        "rows": [row],
        "throughput": throughput,
        "stages_ms": stages,
        "memory": {
            "peak_rss_mb_by_service": [replay["peak_rss_mb"] for replay in replays],
            "total_peak_rss_mb": [replay["total_peak_rss_mb"] for replay in replays],
            "growth_10x_replay": f"{growth * 100:+.1f} %",
            "limit_mb": MEMORY_LIMIT_MB,
        },
    }

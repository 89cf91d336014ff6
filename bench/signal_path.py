"""Tick-to-signal latency through marketdata → features → inference → decision.

Market data runs inside the benchmark process and notes the monotonic time at which it
hands each tick batch to gRPC; features, inference and decision run as their own
processes, as in production; the benchmark reads the decision stream and notes when each
signal arrives. A bar's signal can only exist once the tick that closes the bar (the
first tick at or after the bar's end) has been sent, so a signal's latency is

    arrival of the signal − send time of the tick that closed its bar.

Features subscribes to market data twice (once for inference, once for decision, which
joins both streams); the later of the two sends of the closing tick is used, since the
signal needs both. The replay is paced (``SPEED``× market time, a bar every 100 ms) so
that the pipeline is idle when a bar closes: the figure is the latency of one decision,
not the time a backlog takes to drain.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from quantmesh.bench.harness import percentiles_us
from quantmesh.mesh.launcher import local_pipeline
from quantmesh.services.decision.client import SignalSubscriber
from quantmesh.services.features.engine import FeatureEngine
from quantmesh.services.features.schema import FeatureRows
from quantmesh.services.inference.testing import (
    MODEL_NAME,
    register_tiny_model,
    train_direction_model,
)
from quantmesh.services.marketdata.config import MarketDataSettings
from quantmesh.services.marketdata.service import build_runtime
from quantmesh.services.marketdata.sources import EURUSD, ReplaySource, TickColumns
from quantmesh.services.registry.core import ModelRegistry

SPEED = 36_000.0  # one H1 bar every 100 ms of wall time
SIGNALS = 160  # bars timed (weekends add idle time, not samples)
WARMUP_SIGNALS = 10  # connections and caches warming up
TARGET = {"p50_us": 2_000, "p99_us": 5_000}  # DESIGN.md, tick → order through the mesh


class _SendLog:
    """When each tick batch was handed to gRPC: (first seq, last seq, monotonic ns)."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int, int]] = []

    def __call__(self, columns: TickColumns) -> None:
        self.batches.append((columns.seq, columns.seq + len(columns) - 1, time.monotonic_ns()))

    def last_send_ns(self, seq: int) -> int | None:
        """The latest send of ``seq`` over every subscription; None if never sent."""
        sends = [sent for first, last, sent in self.batches if first <= seq <= last]
        return max(sends) if sends else None


def _closing_seqs(rows: int) -> np.ndarray:
    """Seq of the tick that closes each H1 bar (the first tick of the next bar)."""
    engine = FeatureEngine([EURUSD])
    parts = [engine.on_ticks(batch) for batch in ReplaySource.eurusd().read(["EURUSD"])]
    tail = FeatureRows.concat([*parts, engine.finish()])
    return tail.tick_seq_last[:rows] + 1


async def _signal_arrivals(address: str, count: int) -> list[tuple[int, int]]:
    arrivals: list[tuple[int, int]] = []
    async with grpc.aio.insecure_channel(address) as channel:
        subscriber = SignalSubscriber(channel, ["EURUSD"], include_hold=True, window=4)
        async for batch in subscriber.batches():
            now = time.monotonic_ns()
            arrivals.extend((signal.feature_seq, now) for signal in batch.signals)
            if len(arrivals) >= count:
                break
    return arrivals[:count]


async def _measure(home: Path, log: _SendLog) -> tuple[list[tuple[int, int]], dict[str, float]]:
    marketdata = build_runtime(MarketDataSettings(port=0), on_batch=log)
    port = await marketdata.start()
    try:
        env = {
            "QUANTMESH_FEATURES_MARKETDATA_ADDRESS": f"127.0.0.1:{port}",
            "QUANTMESH_FEATURES_TICK_SPEED": str(SPEED),
            "QUANTMESH_FEATURES_TICK_BATCH_SIZE": "1000",
            "QUANTMESH_DECISION_MARKETDATA_ADDRESS": f"127.0.0.1:{port}",
            "QUANTMESH_INFERENCE_LOG_LEVEL": "WARNING",
        }
        services = ("features", "inference", "decision")
        with local_pipeline(home, services=services, env=env) as running:
            decision = running["decision"].address
            arrivals = await _signal_arrivals(decision, SIGNALS + WARMUP_SIGNALS)
            memory = {name: round(process.peak_rss_mb(), 1) for name, process in running.items()}
    finally:
        await marketdata.stop(grace=0.5)
    return arrivals, memory


def run() -> dict[str, Any]:
    """Time SIGNALS bar-closing ticks from market data to their signal."""
    log = _SendLog()
    with tempfile.TemporaryDirectory(prefix="quantmesh-bench-") as tmp:
        home = Path(tmp)
        registry = ModelRegistry(home / "registry")
        register_tiny_model(registry, MODEL_NAME, train_direction_model(), ["champion"])
        arrivals, memory = asyncio.run(_measure(home, log))
    closing = _closing_seqs(len(arrivals))
    latencies = []
    for feature_seq, arrived_ns in arrivals[WARMUP_SIGNALS:]:
        sent_ns = log.last_send_ns(int(closing[feature_seq]))
        if sent_ns is not None:
            latencies.append(arrived_ns - sent_ns)
    row = {"path": "tick → signal (4 services, 3 processes + bench)", "speed": SPEED}
    row |= percentiles_us(latencies)
    row |= {f"target_{key}": value for key, value in TARGET.items()}
    return {"name": "signal_path.tick_to_signal", "rows": [row], "memory": {"peak_rss_mb": memory}}

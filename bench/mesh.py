"""What the zero-trust mesh costs: plaintext, proxyless mTLS and Envoy mTLS in one run.

For each way services reach each other (``quantmesh.mesh.launcher.local_pipeline``'s
``mesh``), the same three measurements, one mode after the other on the same machine:

- **tick → order acknowledged**, p50/p99, exactly as the ``order_path`` suite measures
  it (market data inside this process, timed sends, a paced replay so each figure is
  one decision, not a backlog). Under Envoy, market data gets its sidecar like any
  service, and every hop of the signal path crosses two proxies;
- **time inside each service** (each stage's own latency histogram), p50 / p99 ms, so
  what is left of the tick-to-order figure is the hops between them;
- **one unary hop** (features asking market data for its symbols, sequentially), which
  says what a single call costs in each mode: the tick-to-order path makes a dozen such
  hops (streams and unary calls), so this is where Envoy's extra time goes;
- **throughput**: every service replaying the shipped year as fast as it can, as
  ``quantmesh up --until-end`` does; ticks/s over the wall time, the services' peak RSS
  and, under Envoy, the proxies' memory. RSS counts the Envoy binary's shared pages once
  per proxy; PSS (proportional set size) divides them among the proxies and is the
  memory the proxies really add.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from quantmesh.bench.harness import percentiles_us
from quantmesh.bench.order_path import (
    TIMED_SERVICES,
    WARMUP_ORDERS,
    acknowledgements,
    latencies_of,
    paced_market_data,
    replay_everything,
)
from quantmesh.cli.dashboard import Dashboard, latency_rows
from quantmesh.marketdata.v1 import marketdata_pb2, marketdata_pb2_grpc
from quantmesh.mesh import direct, transport
from quantmesh.mesh.launcher import Mesh, RunningPipeline, local_pipeline
from quantmesh.mesh.pki import ensure_pki
from quantmesh.services.inference.testing import (
    MODEL_NAME,
    register_tiny_model,
    train_direction_model,
)
from quantmesh.services.registry.core import ModelRegistry

MODES: tuple[Mesh, ...] = ("plaintext", "direct", "envoy")
ORDERS = 30  # acknowledged orders timed per mode (about two minutes of paced replay)
HOPS = 500  # unary calls timed per mode
TARGET = {"p99_us": 5_000}  # tick → order through Envoy (the mesh issue)
PROXY_MEMORY_LIMIT_MB = 300


@contextlib.contextmanager
def _this_process_in_mesh(mode: Mesh, pki: Path) -> Iterator[None]:
    """Make this process market data's identity for proxyless mode (its servers' TLS)."""
    if mode != "direct":
        yield
        return
    keys = {
        "QUANTMESH_MESH_MODE": "direct",
        "QUANTMESH_MESH_PKI": str(pki),
        "QUANTMESH_MESH_IDENTITY": "marketdata",
    }
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update(keys)
    transport.mesh_settings.cache_clear()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        transport.mesh_settings.cache_clear()


def _execution_channel(running: RunningPipeline) -> Callable[[], grpc.aio.Channel]:
    """How the benchmark follows execution's reports: as close to execution as allowed.

    Under Envoy it reads execution's loopback port, as execution's own sidecar does, so
    the figure is the pipeline's hops and not an extra edge hop of the observer's.
    """
    if running.mesh == "envoy":
        return lambda: grpc.aio.insecure_channel(running["execution"].address)
    return lambda: running.channel("execution")


def _marketdata_from_features(running: RunningPipeline) -> grpc.aio.Channel:
    """A channel to market data exactly as features has it in this mode."""
    address = running["features"].env["QUANTMESH_FEATURES_MARKETDATA_ADDRESS"]
    if running.mesh != "direct":
        return grpc.aio.insecure_channel(address)  # loopback; under Envoy, its sidecar
    assert running.pki is not None
    return direct.peer_channel(address, running.pki, "features", "marketdata")


async def _unary_hops(running: RunningPipeline) -> dict[str, Any]:
    async with _marketdata_from_features(running) as channel:
        stub = marketdata_pb2_grpc.MarketDataServiceStub(channel)
        request = marketdata_pb2.ListSymbolsRequest()
        for _ in range(20):  # connect, handshake, warm up
            await stub.ListSymbols(request, timeout=5)
        took = []
        for _ in range(HOPS):
            started = time.perf_counter_ns()
            await stub.ListSymbols(request, timeout=5)
            took.append(time.perf_counter_ns() - started)
    return percentiles_us(took)


async def _latency(home: Path, mode: Mesh) -> tuple[list[int], dict[str, Any], dict[str, str]]:
    with _this_process_in_mesh(mode, home / "pki"):
        async with paced_market_data() as market:
            with local_pipeline(
                home,
                TIMED_SERVICES,
                env=market.env,
                metrics=True,
                mesh=mode,
                external={"marketdata": market.port},
            ) as running:
                acks = await acknowledgements(_execution_channel(running), ORDERS + WARMUP_ORDERS)
                hop = await _unary_hops(running)
                # Time inside each service (its own histogram); the rest is the hops.
                stages = {
                    stage: f"{p50} / {p99}"
                    for stage, p50, p99 in latency_rows(Dashboard(running).refresh())
                }
    return latencies_of(acks, market.log), hop, stages


def _throughput(home: Path, mode: Mesh) -> dict[str, Any]:
    replay = replay_everything(home, 100, mesh=mode)
    row = {k: v for k, v in replay.items() if k not in ("peak_rss_mb", "ticks_per_bar")}
    return row


def run() -> dict[str, Any]:
    """Each mode in turn: tick-to-order latency, one unary hop, then throughput."""
    rows: list[dict[str, Any]] = []
    hops: list[dict[str, Any]] = []
    throughput: list[dict[str, Any]] = []
    stage_ms: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="quantmesh-bench-mesh-") as tmp:
        model = train_direction_model()
        for mode in MODES:
            homes = [Path(tmp) / f"{mode}-latency", Path(tmp) / f"{mode}-replay"]
            for home in homes:
                register_tiny_model(
                    ModelRegistry(home / "registry"), MODEL_NAME, model, ["champion"]
                )
                if mode != "plaintext":
                    ensure_pki(home / "pki")
            latencies, hop, stages = asyncio.run(_latency(homes[0], mode))
            stage_ms.append({"mesh": mode, **stages})
            row: dict[str, Any] = {"mesh": mode, "orders": len(latencies)}
            row |= percentiles_us(latencies)
            if mode == "envoy":
                row |= {f"target_{key}": value for key, value in TARGET.items()}
            rows.append(row)
            hops.append({"mesh": mode, **hop})
            throughput.append({"mesh": mode, **_throughput(homes[1], mode)})
    plain = rows[0]["p50_us"]
    return {
        "name": "mesh",
        "rows": rows,
        "unary_hop_us": hops,
        "stage_ms_p50_p99": stage_ms,
        "throughput": throughput,
        "overhead_p50_vs_plaintext": {
            row["mesh"]: f"{row['p50_us'] / plain:.2f}x" for row in rows if plain
        },
        "proxy_memory_limit_mb": PROXY_MEMORY_LIMIT_MB,
    }

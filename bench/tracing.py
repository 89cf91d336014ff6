"""What explaining every decision costs: tick → order with the audit log and tracing.

The same paced measurement as the ``order_path`` suite (market data in this process,
the other services as their own processes, through the Envoy mTLS mesh that
``quantmesh up`` runs), three times on one machine, one after the other:

- **bare**: no audit log, no tracing;
- **audit**: risk appends every signal, verdict and order to the hash-chained log and
  commits it before its stream cursor moves (the default);
- **audit + tracing**: also every service exports its spans over OTLP/gRPC, to an
  in-process receiver standing in for Jaeger, every decision recorded whole.

The figure the observability issue sets is tracing's cost at p50: under 10 % over the
audited run.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from quantmesh.bench.harness import percentiles_us
from quantmesh.bench.mesh import _execution_channel
from quantmesh.bench.order_path import (
    TIMED_SERVICES,
    WARMUP_ORDERS,
    acknowledgements,
    latencies_of,
    paced_market_data,
)
from quantmesh.mesh.launcher import local_pipeline
from quantmesh.mesh.pki import ensure_pki
from quantmesh.observability import tracing
from quantmesh.observability.receiver import ReceiverProcess
from quantmesh.services.inference.testing import (
    MODEL_NAME,
    register_tiny_model,
    train_direction_model,
)
from quantmesh.services.registry.core import ModelRegistry

ORDERS = 40  # acknowledged orders timed per run
TARGET_P50_OVERHEAD = 0.10  # tracing's cost over the audited run, at p50
NO_AUDIT = {"QUANTMESH_RISK_AUDIT": ""}
RUNS = ("bare", "audit", "audit + tracing")


async def _latency(home: Path, env: dict[str, str]) -> list[int]:
    async with paced_market_data() as market:
        with local_pipeline(
            home,
            TIMED_SERVICES,
            env=market.env | env,
            metrics=True,
            mesh="envoy",
            external={"marketdata": market.port},
        ) as running:
            acks = await acknowledgements(_execution_channel(running), ORDERS + WARMUP_ORDERS)
    return latencies_of(acks, market.log)


def run() -> dict[str, Any]:
    """Bare, audited, then audited and traced (last: a process installs one provider)."""
    rows: list[dict[str, Any]] = []
    spans: Counter[str] = Counter()
    with tempfile.TemporaryDirectory(prefix="quantmesh-bench-tracing-") as tmp:
        model = train_direction_model()
        for name in RUNS:
            home = Path(tmp) / name.replace(" + ", "-")
            register_tiny_model(ModelRegistry(home / "registry"), MODEL_NAME, model, ["champion"])
            ensure_pki(home / "pki")
            if name == "bare":
                latencies = asyncio.run(_latency(home, NO_AUDIT))
            elif name == "audit":
                latencies = asyncio.run(_latency(home, {}))
            else:
                with ReceiverProcess() as receiver:
                    # Market data runs here: its tick batches are traced like the rest.
                    tracing.configure_tracing("marketdata", receiver.environment())
                    try:
                        latencies = asyncio.run(_latency(home, receiver.environment()))
                    finally:
                        tracing.shutdown_tracing()
                spans.update(receiver.counts())
            rows.append({"run": name, "orders": len(latencies)} | percentiles_us(latencies))
    bare, audit, traced = (row["p50_us"] for row in rows)
    overhead = traced / audit - 1 if audit else float("nan")
    return {
        "name": "tracing",
        "rows": rows,
        "p50_overhead": {
            "audit vs bare": f"{(audit / bare - 1) * 100:+.1f} %" if bare else "n/a",
            "tracing vs audit": f"{overhead * 100:+.1f} %",
            "target": f"< {TARGET_P50_OVERHEAD * 100:.0f} %",
            "met": overhead < TARGET_P50_OVERHEAD,
        },
        "spans_received": dict(spans.most_common()),
    }

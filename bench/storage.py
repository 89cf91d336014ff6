"""The relational and cache ports on their embedded default and on a real server.

Each figure comes from one run on the same machine, SQLite against a PostgreSQL 15 and
the in-process cache against a redis-server, both started here on free ports (the same
servers the contract tests use; PostgreSQL runs with fsync off, as in the tests, so its
commit figures leave out the disk):

- **audit append**: one record per transaction (what a lone decision costs) and batches
  of 100 (what the audit writer does under load), records/s;
- **order + report**: the order-path write of execution, one order and its report in one
  transaction, p50/p99;
- **order read by key**: the idempotency lookup, p50/p99;
- **prediction cache**: a 1,000-row lookup and a batch-1 lookup, p50/p99;
- **market states** (numpy, embedded): k=12 nearest of 50,000 states of 32 dimensions,
  filtered to outcomes known at query time, p50/p99;
- **provenance** (networkx, journalled to a file): one decision's graph recorded, and
  read back by its id, p50/p99.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from quantmesh.bench.harness import percentiles_us
from quantmesh.observability.audit.chain import RecordKind
from quantmesh.observability.audit.store import AuditStore, NewRecord
from quantmesh.services.execution.orders import (
    OrderRequest,
    OrderType,
    Origin,
    Side,
    TimeInForce,
    new_order,
)
from quantmesh.services.execution.store import ExecutionStore, report_of
from quantmesh.storage.cache import open_cache
from quantmesh.storage.graph import decision_provenance, open_graph
from quantmesh.storage.local_servers import LocalPostgres, LocalRedis
from quantmesh.storage.vectors import open_vectors
from quantmesh.storage.vectors.port import MarketState

SINGLE_RECORDS = 300
BATCHES = 30
BATCH = 100
ORDERS = 300
LOOKUPS = 300
STATES = 50_000
DIMENSIONS = 32
NEAREST = 12
HOUR_MS = 3_600_000


def _record(n: int) -> NewRecord:
    return NewRecord(
        decision_id=f"sig-{n}",
        kind=RecordKind.SIGNAL,
        payload={"Signal": {"signal_id": f"sig-{n}", "confidence": 0.42}},
        producer="spiffe://quantmesh.local/risk",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        time_ns=1_700_000_000_000_000_000 + n,
    )


def _timed(action: Callable[[int], object], count: int) -> list[int]:
    samples = []
    for n in range(count):
        started = time.perf_counter_ns()
        action(n)
        samples.append(time.perf_counter_ns() - started)
    return samples


def _audit(location: Path | str) -> dict[str, Any]:
    store = AuditStore(location)
    started = time.perf_counter()
    for n in range(SINGLE_RECORDS):
        store.append(_record(n))
    single = SINGLE_RECORDS / (time.perf_counter() - started)
    started = time.perf_counter()
    for b in range(BATCHES):
        store.append_many([_record(10_000 + b * BATCH + i) for i in range(BATCH)])
    batched = BATCHES * BATCH / (time.perf_counter() - started)
    verified = store.verify().ok
    store.close()
    return {
        "records_per_s_one_per_commit": round(single),
        "records_per_s_batches_of_100": round(batched),
        "chain_verified": verified,
    }


def _orders(path: Path, database: str | None) -> dict[str, Any]:
    store = ExecutionStore(path, database=database)

    def place(n: int) -> None:
        request = OrderRequest(
            idempotency_key=f"k{n}",
            symbol="EURUSD",
            side=Side.BUY,
            volume=Decimal("0.10"),
            type=OrderType.MARKET,
            time_in_force=TimeInForce.GTC,
        )
        order = new_order(request, f"O{n}", "paper", 1_000 + n, Origin.CLIENT)
        with store.transaction() as tx:
            tx.insert_order(order)
            tx.append_report(report_of(order, 1_000 + n))

    placed = _timed(place, ORDERS)
    looked_up = _timed(lambda n: store.order_by_key("paper", f"k{n}"), ORDERS)
    store.close()
    return {
        "order_and_report_txn": percentiles_us(placed),
        "order_by_key": percentiles_us(looked_up),
    }


def _cache(url: str) -> dict[str, Any]:
    cache = open_cache(url)
    rng = np.random.default_rng(3)
    digests = [int(d) for d in rng.integers(0, 2**63, 1_000, dtype=np.int64)]
    cache.put_predictions("model-sha", digests, [0.5] * len(digests), 3_600)
    batch = _timed(lambda n: cache.get_predictions("model-sha", digests), LOOKUPS)
    single = _timed(lambda n: cache.get_predictions("model-sha", digests[n : n + 1]), LOOKUPS)
    cache.close()
    return {"lookup_1000_rows": percentiles_us(batch), "lookup_1_row": percentiles_us(single)}


def _vectors() -> dict[str, Any]:
    store = open_vectors("memory://")
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(STATES, DIMENSIONS))
    start = 1_500_000_000_000
    states = [
        MarketState.of("EURUSD", start + n * HOUR_MS, vectors[n], float(rng.normal()), HOUR_MS)
        for n in range(STATES)
    ]
    started = time.perf_counter()
    store.upsert(states)
    upserted = STATES / (time.perf_counter() - started)
    queries = rng.normal(size=(LOOKUPS, DIMENSIONS))
    now = start + STATES * HOUR_MS
    searched = _timed(
        lambda n: store.nearest(queries[n], NEAREST, symbol="EURUSD", before_ms=now), LOOKUPS
    )
    store.close()
    return {"upsert_per_s": round(upserted), "nearest_k12_of_50k": percentiles_us(searched)}


def _provenance(path: Path) -> dict[str, Any]:
    graph = open_graph(f"file:///{path.as_posix()}")  # an absolute path: file:////tmp/…

    def record(n: int) -> None:
        graph.record_provenance(
            decision_provenance(
                f"risk-{n}",
                signal_id=f"sig-{n}",
                prediction_id=f"eurusd-h1-direction@3:EURUSD@{n}",
                model_name="eurusd-h1-direction",
                model_version="3",
                feature_row=f"EURUSD@{n}",
                orders={f"O{n}": [f"F{n}"]},
            )
        )

    recorded = _timed(record, ORDERS)
    read = _timed(lambda n: graph.provenance(f"risk-{n}"), ORDERS)
    graph.close()
    return {"record_decision": percentiles_us(recorded), "read_decision": percentiles_us(read)}


def run() -> dict[str, Any]:
    """SQLite vs PostgreSQL (audit, orders), in-process vs Redis (prediction cache)."""
    with (
        tempfile.TemporaryDirectory(prefix="quantmesh-bench-storage-") as tmp,
        LocalPostgres() as postgres,
        LocalRedis() as redis,
    ):
        root = Path(tmp)
        relational = {
            "sqlite": {
                "audit": _audit(root / "audit.sqlite3"),
                **_orders(root / "execution.sqlite3", None),
            },
            "postgresql": {
                "audit": _audit(postgres.create_database("bench_audit")),
                **_orders(root / "unused.sqlite3", postgres.create_database("bench_orders")),
            },
        }
        cache = {"in-process": _cache("memory://"), "redis": _cache(redis.url)}
        vectors = _vectors()
        provenance = _provenance(root / "graph.jsonl")
    rows = [
        {"store": engine, "what": what, **figures}
        for engine, parts in relational.items()
        for what, figures in parts.items()
        if what != "audit"
    ] + [
        {"store": engine, "what": what, **figures}
        for engine, parts in cache.items()
        for what, figures in parts.items()
    ]
    rows.append(
        {"store": "numpy", "what": "nearest_k12_of_50k", **vectors.pop("nearest_k12_of_50k")}
    )
    rows += [{"store": "networkx", "what": what, **figures} for what, figures in provenance.items()]
    return {
        "name": "storage",
        "rows": rows,
        "audit_append": {engine: parts["audit"] for engine, parts in relational.items()},
        "vectors_upsert_per_s": vectors["upsert_per_s"],
        "note": "PostgreSQL runs with fsync off (as in the tests): commit figures leave out "
        "the disk; SQLite fsyncs every commit",
    }

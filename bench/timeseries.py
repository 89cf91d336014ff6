"""Tick ingest into chDB and the 1-minute OHLC rollup over what was ingested.

Ten million synthetic ticks (four symbols merged in time order, random-walk bids, one
week of market time) go through the timeseries port's ``insert_ticks`` in batches of
a million, as a recorder catching up on a backlog would write them, into a fresh chDB
folder. The rate counts everything the port does per batch: reading the stream's
cursor, building the Arrow table, the insert itself. Then ``ohlc`` rolls each symbol's
ticks into 1-minute bars, and once more the whole week into 1-hour bars.

chDB merges parts in the background while the inserts run; on this 2-core box those
merges compete with the inserts, so the rate varies from run to run.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from quantmesh.storage.timeseries import TickRows
from quantmesh.storage.timeseries.chdb import ChdbTimeseries

TICKS = 10_000_000
BATCH = 1_000_000
SYMBOLS = ("EURGBP", "EURUSD", "GBPUSD", "USDJPY")
START_MS = 1_704_067_200_000  # 2024-01-01 UTC
WEEK_MS = 7 * 86_400_000
M1_MS = 60_000
H1_MS = 3_600_000
TARGET_TICKS_PER_S = 1_000_000


def synthetic_ticks(count: int, seed: int = 7) -> TickRows:
    """``count`` ticks of :data:`SYMBOLS` over one week, merged in time order."""
    rng = np.random.default_rng(seed)
    symbol_index = rng.integers(0, len(SYMBOLS), count).astype(np.uint32)
    time_msc = START_MS + np.sort(rng.integers(0, WEEK_MS, count)).astype(np.int64)
    steps = rng.integers(-3, 4, count).astype(np.int64)
    bid = np.empty(count, dtype=np.int64)
    for k in range(len(SYMBOLS)):
        # Each symbol walks on its own from its own level.
        at = symbol_index == k
        bid[at] = 100_000 + 10_000 * k + np.cumsum(steps[at])
    ask = bid + rng.integers(8, 20, count)
    volume = np.round(rng.uniform(0.01, 5.0, count), 2)
    return TickRows(SYMBOLS, symbol_index, time_msc, bid, ask, volume)


def run() -> dict[str, Any]:
    """Ingest rate of 10M ticks into chDB, then 1-minute and 1-hour rollup times."""
    ticks = synthetic_ticks(TICKS)
    with tempfile.TemporaryDirectory(prefix="quantmesh-bench-timeseries-") as folder:
        path = Path(folder) / "timeseries"
        store = ChdbTimeseries(path, url=f"chdb:///{path}", setting="bench")
        try:
            batch_seconds = []
            started = time.perf_counter()
            for first in range(0, TICKS, BATCH):
                batch_started = time.perf_counter()
                store.insert_ticks("bench", first, ticks.rows(first, first + BATCH))
                batch_seconds.append(time.perf_counter() - batch_started)
            elapsed = time.perf_counter() - started
            stored = store.last_seq("bench")
            rollups = _rollups(store)
        finally:
            store.close()
        disk_mb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
    rate = TICKS / elapsed
    return {
        "name": "timeseries.chdb",
        "ingest": {
            "ticks": TICKS,
            "batch": BATCH,
            "seconds": round(elapsed, 3),
            "ticks_per_s": round(rate),
            "target_ticks_per_s": TARGET_TICKS_PER_S,
            "meets_target": rate >= TARGET_TICKS_PER_S,
            "slowest_batch_s": round(max(batch_seconds), 3),
            "last_seq": stored,
            "disk_mb": round(disk_mb, 1),
        },
        "rollup": rollups,
    }


def _rollups(store: ChdbTimeseries) -> dict[str, Any]:
    # The first rollup runs right after the ingest, beside its background merges and
    # on cold caches; the best of three shows the steady state.
    end = START_MS + WEEK_MS
    results: dict[str, Any] = {}
    for label, timeframe in (("m1", M1_MS), ("h1", H1_MS)):
        rounds = []
        for _ in range(3):
            bars = rolled = 0
            started = time.perf_counter()
            for symbol in SYMBOLS:
                chart = store.ohlc(symbol, timeframe, START_MS, end)
                bars += len(chart)
                rolled += int(chart.ticks.sum())
            rounds.append(time.perf_counter() - started)
        results[label] = {
            "first_s": round(rounds[0], 3),
            "best_of_3_s": round(min(rounds), 3),
            "ticks_rolled": rolled,
            "bars": bars,
        }
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))

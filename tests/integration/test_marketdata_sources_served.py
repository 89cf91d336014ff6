"""Paced replay and the synthetic multi-symbol source, served end to end."""

from __future__ import annotations

import time

import grpc
import numpy as np

from quantmesh.services.marketdata.client import TickSubscriber
from quantmesh.services.marketdata.config import MarketDataSettings
from quantmesh.services.marketdata.service import build_runtime


async def test_paced_replay_never_delivers_a_tick_before_its_market_time() -> None:
    speed = 3_600.0 * 20  # twenty market hours per wall second
    runtime = build_runtime(MarketDataSettings(port=0))
    port = await runtime.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            subscriber = TickSubscriber(channel, ["EURUSD"], batch_size=1_000, speed=speed)
            first_market_ms, started, lateness = None, 0.0, []
            async for batch in subscriber.batches():
                now = time.monotonic()
                if first_market_ms is None:
                    first_market_ms, started = batch.time_msc[0], now
                # The newest tick of a batch must already be due when it arrives.
                due = started + (batch.time_msc[-1] - first_market_ms) / 1000.0 / speed
                lateness.append(now - due)
                if batch.time_msc[-1] - first_market_ms >= 10 * 3_600_000:
                    break
        elapsed = time.monotonic() - started
    finally:
        await runtime.stop(grace=0.2)
    assert min(lateness) >= -0.005  # clock granularity only: never early
    assert elapsed >= 10 * 3_600 / speed * 0.95  # ten market hours took their paced time


async def test_synthetic_source_streams_correlated_symbols_merged_in_time_order() -> None:
    runtime = build_runtime(MarketDataSettings(port=0, source="synthetic", synthetic_hours=2))
    port = await runtime.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            subscriber = TickSubscriber(channel, ["GBPUSD", "EURUSD"], batch_size=5_000)
            batches = [batch async for batch in subscriber.batches()]
    finally:
        await runtime.stop(grace=0.2)
    assert batches[0].symbols == ["EURUSD", "GBPUSD"]
    index = np.concatenate([np.array(b.symbol_index) for b in batches])
    times = np.concatenate([np.array(b.time_msc) for b in batches])
    mids = np.concatenate(
        [(np.array(b.bid, dtype=np.float64) + np.array(b.ask)) / 2 for b in batches]
    )
    assert np.all(np.diff(times) >= 0)
    assert batches[-1].total == len(times) == 2 * 2 * 3_600 * 4  # two symbols, 250 ms steps
    # One-minute returns: per-step moves are about a point, drowned by spread rounding.
    returns = [np.diff(np.log(mids[index == i][::240])) for i in (0, 1)]
    correlation = np.corrcoef(returns[0], returns[1])[0, 1]
    assert 0.4 < correlation < 0.8  # configured 0.6, over 120 one-minute returns

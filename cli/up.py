"""``quantmesh up``: run the platform locally on embedded defaults.

Today the platform is the market data service: ``up`` starts it, streams the whole
shipped replay through a real gRPC consumer with progress, prints what it saw, and keeps
serving for ``quantmesh ticks``, ``buf curl`` or ``grpcurl`` until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import grpc
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from quantmesh.runtime.logging import configure_logging
from quantmesh.runtime.server import StartupError
from quantmesh.services.marketdata.client import TickSubscriber
from quantmesh.services.marketdata.config import MarketDataSettings
from quantmesh.services.marketdata.service import build_runtime

_out = Console()


def up(
    port: Annotated[int, typer.Option(help="Market data port; 0 picks a free one.")] = 8001,
    exit_when_done: Annotated[
        bool, typer.Option("--exit-when-done", help="Stop after the replay instead of serving.")
    ] = False,
) -> None:
    """Start the platform and replay the shipped EUR/USD year through it."""
    configure_logging("WARNING")
    try:
        asyncio.run(_up(port, exit_when_done))
    except StartupError as error:
        _out.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None


async def _up(port: int, exit_when_done: bool) -> None:
    runtime = build_runtime(MarketDataSettings(port=port))
    bound = await runtime.start()
    address = f"127.0.0.1:{bound}"
    _out.print(f"[green]marketdata[/green] serving on {address} (health + reflection)")
    try:
        await _replay(address)
        if exit_when_done:
            return
        _out.print(
            f"serving until Ctrl-C; try: quantmesh ticks EURUSD --address {address} --limit 10"
        )
        await asyncio.Event().wait()
    finally:
        await runtime.stop(grace=1.0)


async def _replay(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        subscriber = TickSubscriber(channel, ["EURUSD"], batch_size=1_000)
        low, high, first_ms, last_ms, ticks = 1 << 62, 0, 0, 0, 0
        started = time.perf_counter()
        with Progress(
            TextColumn("replaying EURUSD 2017"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=_out,
        ) as progress:
            task = progress.add_task("ticks", total=None)
            async for batch in subscriber.batches():
                progress.update(task, total=batch.total, advance=len(batch.time_msc))
                ticks += len(batch.time_msc)
                low, high = min(low, min(batch.bid)), max(high, max(batch.ask))
                first_ms = first_ms or batch.time_msc[0]
                last_ms = batch.time_msc[-1]
        elapsed = time.perf_counter() - started
    _out.print(
        f"replayed {ticks:,} ticks in {subscriber.stats.batches:,} batches in {elapsed:.2f} s "
        f"({ticks / elapsed:,.0f} ticks/s); bid low {low / 1e5:.5f}, "
        f"ask high {high / 1e5:.5f}; {(last_ms - first_ms) / 86_400_000:.0f} market days"
    )

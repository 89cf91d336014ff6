"""``quantmesh up``: run the platform locally on embedded defaults.

It trains a model if the registry has no champion yet, starts the signal path as real
processes (marketdata → features → inference → decision, on the seed's ports), replays
the shipped EUR/USD year through it with progress, prints what the platform decided,
and keeps serving for ``quantmesh ticks``, ``buf curl`` or ``grpcurl`` until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import grpc
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from quantmesh.decision.v1 import decision_pb2
from quantmesh.mesh.launcher import PIPELINE, ServiceProcess, local_pipeline
from quantmesh.runtime.config import quantmesh_home
from quantmesh.runtime.errors import NotFound
from quantmesh.services.decision.client import SignalSubscriber
from quantmesh.services.registry.core import ModelRegistry

_out = Console()

# The seed's ports where it had one (DESIGN.md), so users find services where they expect.
DEFAULT_PORTS = {"marketdata": 8001, "features": 8002, "decision": 8003, "inference": 8006}
MODEL_NAME = "eurusd-h1-direction"
BARS_IN_REPLAY = 6_225


def up(
    free_ports: Annotated[
        bool, typer.Option("--free-ports", help="Use free ports instead of 8001-8006.")
    ] = False,
    exit_when_done: Annotated[
        bool, typer.Option("--exit-when-done", help="Stop after the replay instead of serving.")
    ] = False,
) -> None:
    """Start the platform and replay the shipped EUR/USD year through it."""
    home = quantmesh_home()
    _ensure_champion(home)
    ports = None if free_ports else DEFAULT_PORTS
    with ExitStack() as stack:
        with _out.status("starting marketdata, features, inference and decision …"):
            try:
                pipeline = local_pipeline(home, services=tuple(PIPELINE), ports=ports)
                running = stack.enter_context(pipeline)
            except (RuntimeError, TimeoutError) as error:
                _out.print(f"[red]the platform did not start: {error}[/red]")
                raise typer.Exit(2) from None
        stack.callback(_out.print, "stopped: every service drained and exited")
        _run(running, exit_when_done)


def _run(running: dict[str, ServiceProcess], exit_when_done: bool) -> None:
    for name, process in running.items():
        _out.print(f"[green]{name:<10}[/green] serving on {process.address} (pid {process.pid})")
    asyncio.run(_replay(running["decision"].address))
    if exit_when_done:
        return
    address = running["marketdata"].address
    _out.print(
        "serving until Ctrl-C; try: "
        f"quantmesh ticks EURUSD --address {address} --limit 10, or "
        f"buf curl --protocol grpc --http2-prior-knowledge --list-services http://{address}"
    )
    try:
        while all(p.process and p.process.poll() is None for p in running.values()):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass


def _ensure_champion(home: Path) -> None:
    registry = ModelRegistry(home / "registry")
    try:
        model = registry.get(MODEL_NAME, alias="champion")
    except NotFound:
        _out.print(f"no champion model in {home / 'registry'}: training one first")
        from quantmesh.cli.train import train

        train(registry=home / "registry", report=home / "training.json")
        return
    _out.print(f"model {model.ref} is the champion (sha256 {model.sha256[:12]}…)")


async def _replay(address: str) -> None:
    counts: Counter[str] = Counter()
    latest: list[decision_pb2.Signal] = []
    started = time.perf_counter()
    async with grpc.aio.insecure_channel(address) as channel:
        subscriber = SignalSubscriber(channel, ["EURUSD"], include_hold=False)
        with Progress(
            TextColumn("deciding on EURUSD 2017, bar by bar"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=_out,
        ) as progress:
            task = progress.add_task("bars", total=BARS_IN_REPLAY)
            async for batch in subscriber.batches():
                for signal in batch.signals:
                    counts[decision_pb2.Action.Name(signal.action)] += 1
                    latest = [*latest[-4:], signal]
                    progress.update(task, completed=signal.feature_seq + 1)
            progress.update(task, completed=BARS_IN_REPLAY)
    elapsed = time.perf_counter() - started
    table = Table("time (UTC)", "action", "confidence", "reason", title="last signals")
    for signal in latest:
        stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(signal.time_msc / 1000))
        action = decision_pb2.Action.Name(signal.action).removeprefix("ACTION_")
        table.add_row(stamp, action, f"{signal.confidence:.3f}", signal.reason)
    _out.print(table)
    summary = ", ".join(f"{n} {a.removeprefix('ACTION_')}" for a, n in sorted(counts.items()))
    _out.print(
        f"decided on {BARS_IN_REPLAY:,} H1 bars in {elapsed:.1f} s: "
        f"{summary or 'no trades'} (HOLD decisions are not streamed by default)"
    )

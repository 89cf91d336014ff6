"""``quantmesh up``: run the whole platform locally on embedded defaults.

It trains a model if the registry has no champion yet, then starts every pipeline
service as its own supervised process (marketdata → features → inference → decision →
risk → execution, and analytics beside them), each behind its own Envoy sidecar with
mutual TLS and the mesh policy's RBAC, and the edge proxy for outside callers. It
replays the shipped EUR/USD year through them and shows a live view of ticks/s,
signals, orders, fills, equity and stage latencies. A service or proxy that crashes is
restarted on the same port; its peers resume their streams from where they stopped.
Ctrl-C stops risk first, so no order is in flight when execution drains; every order is
already on disk.

State lives under ``QUANTMESH_HOME`` (``./var``): running ``up`` again continues the
replay where it stopped; ``--fresh`` starts a new run (the model is kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from quantmesh.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from quantmesh.cli.dashboard import Dashboard, latency_rows, total
from quantmesh.execution.v1 import execution_pb2, execution_pb2_grpc
from quantmesh.mesh.launcher import PLATFORM, RunningPipeline, ServiceProcess, local_pipeline
from quantmesh.observability.audit.store import AuditStore
from quantmesh.runtime.config import quantmesh_home
from quantmesh.runtime.errors import NotFound
from quantmesh.services.execution.convert import money_from_proto as money
from quantmesh.services.registry.core import ModelRegistry
from quantmesh.storage.relational import DatabaseError

_out = Console()

MODEL_NAME = "eurusd-h1-direction"
ACCOUNT = "paper"
# Per-run state; the registry (the trained model) is kept across runs.
RUN_FOLDERS = ("execution", "risk", "analytics", "audit")
# The replay is history: execution trades at each signal's moment (services/execution/clock.py).
UP_ENV = {"QUANTMESH_EXECUTION_CLOCK": "pipeline"}
PROGRESS_SECONDS = 5.0


class MeshChoice(StrEnum):
    """How services reach each other (quantmesh.mesh.launcher.local_pipeline)."""

    envoy = "envoy"
    direct = "direct"
    plaintext = "plaintext"


# a progress line this often without the live view


def up(
    until_end: Annotated[
        bool,
        typer.Option("--until-end", help="Finish the replay, print a summary and stop."),
    ] = False,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Start a new run: clear orders, risk and analytics.")
    ] = False,
    free_ports: Annotated[
        bool,
        typer.Option(
            "--free-ports",
            help="Use free ports instead of the policy's (services 8001-8009, "
            "proxies 9001-9009, edge 9443).",
        ),
    ] = False,
    view: Annotated[bool, typer.Option("--view/--no-view", help="Show the live view.")] = True,
    mesh: Annotated[
        MeshChoice,
        typer.Option(
            help="envoy: every hop through Envoy sidecars over mutual TLS, outside callers "
            "through the edge; direct: gRPC's own mutual TLS, no proxies; plaintext: "
            "loopback only, no identities (debugging)."
        ),
    ] = MeshChoice.envoy,
) -> None:
    """Start the platform and replay the shipped EUR/USD year through it."""
    home = quantmesh_home()
    _ensure_champion(home)
    _prepare_run(home, fresh)
    with ExitStack() as stack:
        with _out.status("starting " + ", ".join(PLATFORM) + " …"):
            try:
                pipeline = local_pipeline(
                    home,
                    services=tuple(PLATFORM),
                    env=UP_ENV | _store_env(home),
                    policy_ports=not free_ports,
                    metrics=True,
                    mesh=mesh.value,
                )
                running = stack.enter_context(pipeline)
            except (RuntimeError, TimeoutError, FileNotFoundError) as error:
                _out.print(f"[red]the platform did not start: {error}[/red]")
                raise typer.Exit(2) from None
        stack.callback(_out.print, "stopped: every service drained and exited")
        _print_topology(running)
        dashboard = Dashboard(running)
        try:
            _supervise(
                dashboard, running, until_end, view, lambda: _summary(running, dashboard, home)
            )
        except KeyboardInterrupt:
            _out.print(
                "Ctrl-C: stopping every service (risk before execution); every order is on disk"
            )


def _store_env(home: Path) -> dict[str, str]:
    """Embedded stores that outlive a process: risk's graph (its symbols' edges and every
    decision's provenance) is journalled under the run's ``risk`` folder. A graph server
    named by ``QUANTMESH_GRAPH_URL`` (shared with the recorder's correlations) wins."""
    if os.environ.get("QUANTMESH_GRAPH_URL") or os.environ.get("QUANTMESH_RISK_GRAPH_URL"):
        return {}
    # One journal per process: a networkx journal has a single writer.
    return {"QUANTMESH_RISK_GRAPH_URL": f"file:///{(home / 'risk' / 'graph.jsonl').as_posix()}"}


def _print_topology(running: RunningPipeline) -> None:
    for name, process in running.items():
        sidecar = running.proxies.get(name)
        through = f", its Envoy on :{sidecar.listens_on[0]}" if sidecar is not None else ""
        _out.print(f"[green]{name:<10}[/green] {process.address} (pid {process.pid}{through})")
    if running.mesh == "envoy":
        pki = running.pki
        _out.print(
            f"[green]{'edge':<10}[/green] 127.0.0.1:{running.edge_port}: mutual TLS; call it "
            f"with {pki}/client/cert.pem and key.pem (README: grpcurl through the edge)"
        )
    elif running.mesh == "direct":
        _out.print(f"proxyless mutual TLS: certificates in {running.pki}")


def _prepare_run(home: Path, fresh: bool) -> None:
    existing = [home / name for name in RUN_FOLDERS if (home / name).exists()]
    if fresh:
        for folder in existing:
            shutil.rmtree(folder)
        _out.print("a fresh run: orders, risk state and analytics cleared")
    elif existing:
        _out.print(f"continuing the run in {home} where it stopped (--fresh starts over)")


def _supervise(
    dashboard: Dashboard,
    running: RunningPipeline,
    until_end: bool,
    view: bool,
    on_done: Callable[[], None],
) -> None:
    """Refresh the view and restart crashed services until Ctrl-C, or until the replay
    ends with ``until_end``; ``on_done`` runs once when the replay has finished."""
    live = Live(dashboard.render(), console=_out, refresh_per_second=2) if view else None
    done = False
    last_line = time.monotonic()
    with live or contextlib.nullcontext():
        while True:
            time.sleep(0.5)
            dashboard.refresh()
            for process in running.supervised():
                if process.exited:
                    name = process.name
                    code = process.process.returncode if process.process else None
                    _note(dashboard, live, f"{name} exited ({code}); restarting it")
                    try:
                        process.restart()
                    except (RuntimeError, TimeoutError) as error:
                        _note(dashboard, live, f"{name} did not come back: {error}")
                    else:
                        where = (
                            f" on {process.address}" if isinstance(process, ServiceProcess) else ""
                        )
                        _note(dashboard, live, f"{name} is back{where}")
            if live is not None:
                live.update(dashboard.render())
            elif time.monotonic() - last_line > PROGRESS_SECONDS:
                last_line = time.monotonic()
                _out.print(dashboard.progress_line())
            if not done and dashboard.replay_done:
                done = True
                if live is not None:
                    live.stop()
                on_done()
                if until_end:
                    return
                _out.print("serving until Ctrl-C: try quantmesh report, grpcurl or buf curl")
                if live is not None:
                    live.start()


def _note(dashboard: Dashboard, live: Live | None, text: str) -> None:
    # The live view shows the latest notes; without it they are printed as they come.
    dashboard.notes.append(text)
    if live is None:
        _out.print(f"[yellow]{text}[/yellow]")


def _summary(running: RunningPipeline, dashboard: Dashboard, home: Path) -> None:
    account, performance, report, states = asyncio.run(_results(running))
    dashboard.refresh()  # the recorder may have written more while the books settled
    path = home / "report.html"
    path.write_bytes(report.content)
    table = Table(title="replay finished", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    start = _starting_balance()
    # Execution's balance and analytics' ledger are two computations of one truth.
    reconciled = money(performance.realized_pnl) == money(account.balance) - start
    rows = [
        ("equity", f"{money(account.equity):,.2f} {account.currency}"),
        ("return", f"{(money(account.equity) / start - 1) * 100:.2f} %" if start else "—"),
        ("realized P&L (net)", f"{money(performance.realized_pnl):,.2f}"),
        ("unrealized P&L", f"{money(performance.unrealized_pnl):,.2f}"),
        ("commission", f"{money(performance.commission):,.2f}"),
        ("orders", _order_counts(states)),
        ("trades", f"{performance.trade_count:,}"),
        ("win rate", f"{performance.win_rate_bps / 100:.1f} %"),
        ("profit factor", f"{performance.profit_factor:.2f}"),
        ("Sharpe (daily, annualized)", f"{performance.sharpe:.2f}"),
        ("max drawdown", f"{performance.max_drawdown_bps / 100:.2f} %"),
        ("ticks executed", f"{dashboard.ticks:,.0f}"),
        ("replay time", f"{dashboard.finished_at - running['risk'].serving_since:.1f} s"),
        ("accounting", "reconciled" if reconciled else "[red]NOT reconciled[/red]"),
        ("audit log", _audit_state(home)),
        ("recorded by this run", _recorded(dashboard)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    for stage, p50, p99 in latency_rows(dashboard.samples):
        table.add_row(f"{stage} latency p50 / p99", f"{p50} / {p99} ms")
    _out.print(table)
    _out.print(f"report: {path} (open it in a browser; it needs no server)")
    _out.print("a decision's story: quantmesh audit show <signal id> (ids: quantmesh audit export)")
    _out.print(_tracing_state(os.environ))


def _tracing_state(environ: Mapping[str, str]) -> str:
    """Where the run's traces went, or how to get them."""
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if environ.get("OTEL_SDK_DISABLED", "").lower() != "true" and endpoint:
        return (
            f"traces: sent to {endpoint}; in Jaeger, open a decision by the trace id its "
            "audit records show"
        )
    return "traces: off (set OTEL_EXPORTER_OTLP_ENDPOINT, e.g. to a Jaeger on :4317)"


def _audit_state(home: Path) -> str:
    """How many decision records the run has, and whether their hash chain is intact."""
    try:
        location = os.environ.get("QUANTMESH_DATABASE_URL") or home / "audit" / "audit.sqlite3"
        with AuditStore(location, create=False) as store:
            report = store.verify()
    except (FileNotFoundError, sqlite3.Error, DatabaseError) as error:
        return f"[yellow]not readable: {error}[/yellow]"
    check = report.check
    if check.ok:
        return f"{check.checked:,} records, chain intact"
    return f"[red]chain broken at record {check.broken_index}: {check.reason}[/red]"


def _recorded(dashboard: Dashboard) -> str:
    """What the recorder has stored since it started (a run that continues another
    records only what the store lacks; the recorder may still be writing its last batch)."""
    counts = [
        f"{total(dashboard.samples, 'quantmesh_recorded_rows_total', kind=kind):,.0f} {kind}"
        for kind in ("ticks", "predictions")
    ]
    return ", ".join(counts)


def _order_counts(states: Counter[str]) -> str:
    placed = sum(states.values())
    parts = [f"{placed:,} placed"]
    for state in ("FILLED", "REJECTED", "CANCELLED", "EXPIRED"):
        if states[state]:
            parts.append(f"{states[state]:,} {state.lower()}")
    return ", ".join(parts)


async def _order_states(
    execution: execution_pb2_grpc.ExecutionServiceAsyncStub,
) -> Counter[str]:
    states: Counter[str] = Counter()
    token = ""
    while True:
        request = execution_pb2.ListOrdersRequest(page_size=1_000, page_token=token)
        page = await execution.ListOrders(request)
        states.update(
            execution_pb2.OrderState.Name(order.state).removeprefix("ORDER_STATE_")
            for order in page.orders
        )
        token = page.next_page_token
        if not token:
            return states


async def _results(
    running: RunningPipeline,
) -> tuple[
    execution_pb2.Account,
    analytics_pb2.Performance,
    analytics_pb2.GenerateReportResponse,
    Counter[str],
]:
    async with (
        running.channel("execution") as execution_channel,
        running.channel("analytics") as analytics_channel,
    ):
        execution = execution_pb2_grpc.ExecutionServiceStub(execution_channel)
        analytics = analytics_pb2_grpc.AnalyticsServiceStub(analytics_channel)
        account = (await execution.GetAccount(execution_pb2.GetAccountRequest())).account
        request = analytics_pb2.GetPerformanceRequest(account_id=ACCOUNT)
        # Analytics follows execution's report stream; wait until it has every fill.
        deadline = time.monotonic() + 30
        while True:
            performance = (await analytics.GetPerformance(request)).performance
            booked = money(performance.realized_pnl)
            if booked == money(account.balance) - _starting_balance():
                break
            if time.monotonic() > deadline:
                _out.print("[yellow]analytics has not caught up with execution yet[/yellow]")
                break
            await asyncio.sleep(0.25)
        report = await analytics.GenerateReport(
            analytics_pb2.GenerateReportRequest(
                account_id=ACCOUNT,
                format=analytics_pb2.REPORT_FORMAT_HTML,
                include_models=True,
            )
        )
        states = await _order_states(execution)
    return account, performance, report, states


def _starting_balance() -> Decimal:
    # The deposit execution was configured with (same settings, same environment).
    from quantmesh.services.execution.config import ExecutionSettings

    return ExecutionSettings().starting_balance


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

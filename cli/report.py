"""``quantmesh report``: one self-contained HTML performance report from a run's fills."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from quantmesh.services.analytics.performance import Analysis

_out = Console()
_err = Console(stderr=True)


def report(
    run_file: Annotated[
        Path | None,
        typer.Argument(
            help="A run's fills and marks: JSON or SQLite (format: quantmesh.services."
            "analytics.runs.load_run).",
            show_default=False,
        ),
    ] = None,
    demo: Annotated[
        bool,
        typer.Option(
            "--demo",
            help="Report on a demo run instead: EMA(10/30) and EMA(20/60) crosses on the "
            "shipped EUR/USD H1 2017 bars, next-open fills.",
        ),
    ] = False,
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write.")] = Path(
        "reports/report.html"
    ),
    save_run: Annotated[
        Path | None,
        typer.Option(help="Also write the run that was reported (.json, or .sqlite/.db)."),
    ] = None,
    title: Annotated[str, typer.Option(help="Title of the page.")] = (
        "quantmesh performance report"
    ),
    from_service: Annotated[
        str | None,
        typer.Option(
            "--from-service",
            metavar="ADDRESS",
            help="Ask a running analytics service (host:port) for the report of the "
            "account it records, instead of reading a run.",
        ),
    ] = None,
) -> None:
    """Write an HTML report: equity, drawdown, trades on price, metrics overall and per model.

    The page is one file with inline SVG plots; it opens in any browser without a server
    or a network connection.
    """
    started = time.perf_counter()
    if demo + (run_file is not None) + (from_service is not None) != 1:
        _err.print("[red]give one of a run file, --demo or --from-service[/red]")
        raise typer.Exit(2)
    if from_service is not None:
        if save_run is not None:
            _err.print("[red]--save-run needs a run: the service keeps its fills itself[/red]")
            raise typer.Exit(2)
        content = _report_from_service(from_service)
        _write(output, content)
        elapsed = time.perf_counter() - started
        _out.print(f"wrote {output} ({len(content) / 1024:,.0f} KB) in {elapsed:.1f} s")
        return
    # Imported here so that the rest of the CLI does not pay for numpy-heavy modules.
    from quantmesh.services.analytics.performance import analyse
    from quantmesh.services.analytics.report import render_report
    from quantmesh.services.analytics.runs import demo_run, load_run
    from quantmesh.services.analytics.runs import save_run as write_run

    try:
        run = demo_run() if run_file is None else load_run(run_file)
        analysis = analyse(run)
    except (OSError, ValueError, sqlite3.Error) as error:
        _err.print(f"[red]cannot report: {error}[/red]")
        raise typer.Exit(1) from None
    source = "demo: EMA crosses on EUR/USD H1 2017" if demo else str(run_file)
    page = render_report(
        run, analysis, title=title, source=source, generated_time_ms=int(time.time() * 1000)
    )
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(page, encoding="utf-8")
        if save_run is not None:
            save_run.parent.mkdir(parents=True, exist_ok=True)
            write_run(run, save_run)
    except OSError as error:
        _err.print(f"[red]cannot write: {error}[/red]")
        raise typer.Exit(1) from None
    _print_summary(analysis)
    elapsed = time.perf_counter() - started
    _out.print(f"wrote {output} ({len(page.encode()) / 1024:,.0f} KB) in {elapsed:.1f} s")


def _report_from_service(address: str) -> bytes:
    """The HTML report of everything the analytics service at ``address`` recorded."""
    import grpc

    from quantmesh.analytics.v1 import analytics_pb2, analytics_pb2_grpc

    request = analytics_pb2.GenerateReportRequest(
        format=analytics_pb2.REPORT_FORMAT_HTML, include_models=True
    )
    try:
        with grpc.insecure_channel(address) as channel:
            stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
            response = stub.GenerateReport(request, timeout=120)
    except grpc.RpcError as error:
        code, details = error.code(), error.details()
        _err.print(f"[red]cannot report from {address}: {code.name}: {details}[/red]")
        raise typer.Exit(1) from None
    content: bytes = response.content
    return content


def _write(output: Path, content: bytes) -> None:
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(content)
    except OSError as error:
        _err.print(f"[red]cannot write: {error}[/red]")
        raise typer.Exit(1) from None


def _print_summary(analysis: Analysis) -> None:
    table = Table(box=None, padding=(0, 1), pad_edge=False, title="Performance")
    table.add_column("", no_wrap=True)
    for name in ("trades", "win", "hit", "PF", "expect.", "net PnL", "max DD", "Sharpe"):
        table.add_column(name, justify="right", no_wrap=True)
    rows = [("overall", analysis.overall)]
    rows += [(f"{m.model_name} {m.model_version}".strip(), m.performance) for m in analysis.models]
    for label, p in rows:
        t, worst = p.trades, p.max_relative_drawdown
        table.add_row(
            label,
            f"{t.count:,}",
            f"{100 * t.win_rate:.1f}%",
            f"{100 * t.hit_rate:.1f}%",
            "inf" if t.profit_factor == float("inf") else f"{t.profit_factor:.2f}",
            f"{t.expectancy:,.2f}",
            f"{p.net_pnl:,.2f}",
            "-" if worst is None else f"{-100 * worst.fraction:.1f}%",
            f"{p.sharpe:.2f}",
            style="bold" if label == "overall" else None,
        )
    _out.print(table)

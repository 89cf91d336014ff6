"""``quantmesh bench``: run the benchmark suite, print a table, write JSON."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

_out = Console()


def _suites() -> dict[str, Callable[[], dict[str, Any]]]:
    from quantmesh.bench import (
        features,
        inference,
        marketdata,
        mesh,
        order_path,
        signal_path,
        storage,
        timeseries,
        tracing,
    )

    return {
        "marketdata": marketdata.run,
        "features": features.run,
        "inference": inference.run,
        "signal_path": signal_path.run,
        "order_path": order_path.run,
        "mesh": mesh.run,
        "tracing": tracing.run,
        "timeseries": timeseries.run,
        "storage": storage.run,
    }


def bench(
    suites: Annotated[
        list[str] | None, typer.Argument(help="Suites to run (default: all): marketdata.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where to write the JSON results.")] = Path(
        "reports/bench.json"
    ),
) -> None:
    """Measure the platform's performance figures on this machine."""
    available = _suites()
    chosen = suites or list(available)
    unknown = [name for name in chosen if name not in available]
    if unknown:
        _out.print(f"[red]unknown suite(s) {unknown}; choose from {list(available)}[/red]")
        raise typer.Exit(2)
    results = []
    for name in chosen:
        with _out.status(f"running {name} …"):
            results.append(available[name]())
        _print(results[-1])
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    _out.print(f"wrote {out}")


def _print(result: dict[str, Any]) -> None:
    rows = result["rows"]
    table = Table(*rows[0].keys(), title=result["name"])
    for row in rows:
        table.add_row(
            *(f"{value:,}" if isinstance(value, int) else str(value) for value in row.values())
        )
    _out.print(table)
    for key, value in result.items():
        if key not in ("name", "rows"):
            _out.print(f"{key}:", value)

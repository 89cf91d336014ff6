"""``quantmesh train``: walk-forward train the EUR/USD H1 direction model and register it."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from quantmesh.runtime.config import quantmesh_home

if TYPE_CHECKING:
    from quantmesh.services.trainer.pipeline import TrainingResult

_out = Console()
_err = Console(stderr=True)


def default_registry() -> Path:
    """``$QUANTMESH_HOME/registry``, with ``QUANTMESH_HOME`` defaulting to ``./var``."""
    return quantmesh_home() / "registry"


def train(
    horizon: Annotated[
        int, typer.Option(min=1, max=500, help="Predict the close this many H1 bars ahead.")
    ] = 1,
    folds: Annotated[int, typer.Option(min=1, max=50, help="Walk-forward test windows.")] = 8,
    seed: Annotated[int, typer.Option(min=0, help="Seed of every random draw.")] = 7,
    registry: Annotated[
        Path | None,
        typer.Option(help="Model registry directory [default: $QUANTMESH_HOME/registry]."),
    ] = None,
    report: Annotated[Path, typer.Option(help="Where to write the JSON report.")] = Path(
        "reports/training.json"
    ),
    name: Annotated[str, typer.Option(help="Registry model name.")] = "eurusd-h1-direction",
) -> None:
    """Train a torch direction model on EUR/USD H1 2017 with walk-forward evaluation.

    Every window is scored out of sample next to naive baselines; the final model is
    fitted on all rows, exported to ONNX (verified against torch), and registered as
    `champion` if the model has none, else as `challenger`.
    """
    started = time.perf_counter()
    # Imported here: torch and scikit-learn take a second to import, and the other
    # commands of the CLI should not pay for them.
    from quantmesh.runtime.errors import DomainError
    from quantmesh.services.registry.core import ModelRegistry, validate_name
    from quantmesh.services.trainer.pipeline import TrainConfig, TrainProgress, train_model
    from quantmesh.services.trainer.report import build_report

    config = TrainConfig(horizon_bars=horizon, folds=folds, seed=seed, model_name=name)
    try:
        validate_name(name)
        store = ModelRegistry(registry or default_registry())
    except (DomainError, OSError) as error:
        _err.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None

    max_epochs = config.hyper.max_epochs
    columns = (
        TextColumn("{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=_out) as progress:
        stages = progress.add_task("folds", total=folds + 1, info="walk-forward + final fit")
        epochs = progress.add_task("fold 0", total=max_epochs, info="")

        def on_progress(event: TrainProgress) -> None:
            if event.log is None:
                progress.advance(stages)
                after = event.fold + 1
                label = "final fit" if after >= event.folds else f"fold {after}"
                progress.reset(epochs, total=max_epochs, description=label, info="")
                return
            label = "final fit" if event.stage == "final" else f"fold {event.fold}"
            progress.update(
                epochs,
                description=label,
                completed=event.log.epoch + 1,
                info=f"loss {event.log.train_loss:.4f} val {event.log.val_loss:.4f}",
            )

        try:
            result = train_model(config, store, on_progress=on_progress)
        except (DomainError, ValueError) as error:
            _err.print(f"[red]training failed: {error}[/red]")
            raise typer.Exit(1) from None
        progress.update(epochs, visible=False)

    elapsed = time.perf_counter() - started
    document = build_report(result, total_seconds=elapsed)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(document, indent=2) + "\n")
    _print_table(result)
    mv = result.model_version
    if mv is not None:
        _out.print(
            f"registered [bold]{mv.ref}[/bold] as [bold]{result.alias}[/bold] in {store.root} "
            f"(sha256 {mv.sha256[:16]}…, {len(result.onnx_bytes):,} bytes)"
        )
    n_features = len(result.data.feature_names)
    _out.print(
        f"ONNX: features float32 \\[batch, {n_features}] → probability_up float32 \\[batch, 1]; "
        f"max |onnx - torch| = {result.onnx_max_abs_diff:.2g} over {len(result.data):,} rows"
    )
    _out.print(f"wrote {report} in {elapsed:.1f} s")


def _print_table(result: TrainingResult) -> None:
    from quantmesh.services.trainer.report import metric_table_rows

    table = Table(
        "window",
        "test period (UTC)",
        "rows",
        "model acc",
        "log loss",
        "hit rate (cover)",
        "always up",
        "majority",
        "prev move",
        "logistic",
        "logistic ll",
        title="Out-of-sample direction metrics vs baselines (accuracy unless noted)",
    )
    for label, period, metrics in metric_table_rows(result):
        model = metrics["model"]
        style = "bold" if label == "overall" else None
        table.add_row(
            label,
            period,
            f"{model.samples:,}",
            _pct(model.accuracy),
            _num(model.log_loss),
            f"{_pct(model.hit_rate)} ({_pct(model.coverage)})",
            _pct(metrics["always_up"].accuracy),
            _pct(metrics["majority"].accuracy),
            _pct(metrics["previous_move"].accuracy),
            _pct(metrics["logistic"].accuracy),
            _num(metrics["logistic"].log_loss),
            style=style,
        )
    _out.print(table)


def _pct(value: float) -> str:
    return "—" if math.isnan(value) else f"{100 * value:.1f}%"


def _num(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.4f}"

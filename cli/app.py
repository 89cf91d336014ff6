"""Entry point of the ``quantmesh`` console command."""

from __future__ import annotations

import typer

from quantmesh.cli import audit, bench, health, mesh, pki, report, serve, ticks, train, up

app = typer.Typer(
    name="quantmesh",
    no_args_is_help=True,
    help="quantmesh: an AI forex trading platform on a gRPC service mesh.",
    pretty_exceptions_show_locals=False,
)
app.add_typer(serve.app, name="serve")
app.add_typer(pki.app, name="pki")
app.add_typer(mesh.app, name="mesh")
app.add_typer(audit.app, name="audit")
app.command("ticks")(ticks.ticks)
app.command("bench")(bench.bench)
app.command("up")(up.up)
app.command("health")(health.health)
app.command("train")(train.train)
app.command("report")(report.report)


def main() -> None:
    """Run the CLI."""
    app()

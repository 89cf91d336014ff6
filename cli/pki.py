"""``quantmesh pki``: the mesh's certificates — create a CA, rotate and show certificates."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from quantmesh.mesh import pki
from quantmesh.runtime.config import quantmesh_home

app = typer.Typer(no_args_is_help=True, help="The mesh PKI: a CA and short-lived certificates.")
_out = Console()
_err = Console(stderr=True)


def _default_dir() -> Path:
    home: Path = quantmesh_home()
    return home / "pki"


DirOption = Annotated[
    Path | None,
    typer.Option("--dir", help="PKI folder [default: $QUANTMESH_HOME/pki, else var/pki]."),
]


def _fail(message: str) -> typer.Exit:
    _err.print(f"[red]{message}[/red]")
    return typer.Exit(2)


def _service_names(given: list[str] | None) -> list[str]:
    # Both `--services a --services b` and `--services a,b` work.
    if not given:
        return list(pki.DEFAULT_SERVICES)
    names = [name.strip() for item in given for name in item.split(",") if name.strip()]
    return list(dict.fromkeys(names))


def _format_remaining(remaining: timedelta | None) -> str:
    if remaining is None:
        return "-"
    seconds = int(remaining.total_seconds())
    if seconds <= 0:
        return "expired"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days}d {hours}h" if days else f"{hours}h {rest // 60}m"


@app.command("init")
def init(
    directory: DirOption = None,
    services: Annotated[
        list[str] | None,
        typer.Option(
            "--services",
            help="Services to issue certificates to (repeat or comma-separate) "
            f"[default: {', '.join(pki.DEFAULT_SERVICES)}].",
            show_default=False,
        ),
    ] = None,
    ca_cert: Annotated[
        Path | None,
        typer.Option("--ca-cert", help="Your CA certificate (PEM) instead of a dev CA."),
    ] = None,
    ca_key: Annotated[
        Path | None, typer.Option("--ca-key", help="The private key of --ca-cert (PEM).")
    ] = None,
    hours: Annotated[
        float, typer.Option("--hours", help="Lifetime of service certificates, in hours.")
    ] = 24.0,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing CA and its certificates.")
    ] = False,
) -> None:
    """Create a dev CA (or use yours) and issue each service its SPIFFE certificate.

    Private keys are written 0600 in 0700 folders. A CA you bring is used in place: its
    key is not copied, only where it lives is remembered for `pki rotate`.
    """
    target = directory if directory is not None else _default_dir()
    if (ca_cert is None) != (ca_key is None):
        raise _fail("give both --ca-cert and --ca-key, or neither for a dev CA")
    names = _service_names(services)
    try:
        authority = pki.load_ca(ca_cert, ca_key) if ca_cert and ca_key else None
        created = pki.init_pki(
            target, names, ca=authority, lifetime=timedelta(hours=hours), force=force
        )
    except FileExistsError:
        raise _fail(
            f"a CA already exists in {target}: replacing it invalidates every certificate "
            "it signed; pass --force to do it anyway, or `quantmesh pki rotate` to renew"
        ) from None
    except (ValueError, OSError) as error:
        raise _fail(str(error)) from None
    origin = "dev CA" if created.owned else f"your CA ({ca_cert})"
    _out.print(f"{origin} in {target}: issued {len(names)} certificates ({hours:g} h each)")


@app.command("rotate")
def rotate(
    directory: DirOption = None,
    within_hours: Annotated[
        float | None,
        typer.Option(
            "--within-hours",
            help="Renew certificates that expire within this many hours "
            "[default: the last third of each certificate's lifetime].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Renew the certificates close to expiry; Envoy reloads them without a restart."""
    target = directory if directory is not None else _default_dir()
    renew_before = None if within_hours is None else timedelta(hours=within_hours)
    try:
        renewed = pki.rotate(target, renew_before=renew_before)
    except (ValueError, OSError) as error:
        raise _fail(str(error)) from None
    if renewed:
        _out.print(f"renewed {len(renewed)}: {', '.join(renewed)}")
    else:
        _out.print("nothing to renew")


@app.command("ensure")
def ensure(directory: DirOption = None) -> None:
    """Make the PKI ready for a run: create a dev CA if there is none (an existing CA,
    yours or a previous one, is kept), then issue every missing certificate and renew
    those due. What `quantmesh up` and the compose stack's mesh-init do."""
    target = directory if directory is not None else _default_dir()
    try:
        issued = pki.ensure_pki(target)
    except (ValueError, OSError) as error:
        raise _fail(str(error)) from None
    done = ", ".join(issued) or "nothing"
    _out.print(f"PKI ready in {target}; issued or renewed: {done}", soft_wrap=True)


@app.command("show")
def show(directory: DirOption = None) -> None:
    """List each service's SPIFFE id, expiry, and whether it chains to the CA."""
    target = directory if directory is not None else _default_dir()
    try:
        report = pki.inspect(target)
    except (ValueError, OSError) as error:
        raise _fail(str(error)) from None
    kind = "dev CA" if report.ca_owned else "external CA"
    _out.print(f"{kind}: {report.ca_subject}, valid until {report.ca_not_after:%Y-%m-%d %H:%M} UTC")
    with_problems = any(status.problem for status in report.services)
    table = Table(title=f"certificates in {target}")
    # The SPIFFE id names the service, so no separate column: the table fits 80 columns.
    table.add_column("SPIFFE id", no_wrap=True)
    table.add_column("expires (UTC)", no_wrap=True)
    table.add_column("left", justify="right", no_wrap=True)
    table.add_column("chains", justify="center", no_wrap=True)
    if with_problems:
        table.add_column("problem")
    for status in report.services:
        cells = [
            status.spiffe_id or f"{status.service} (no SPIFFE id)",
            "-" if status.not_after is None else f"{status.not_after:%Y-%m-%d %H:%M}",
            _format_remaining(status.remaining),
            "[green]yes[/green]" if status.chains_to_ca else "[red]no[/red]",
        ]
        if with_problems:
            cells.append("" if status.problem is None else f"[red]{status.problem}[/red]")
        table.add_row(*cells)
    _out.print(table)

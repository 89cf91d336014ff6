"""``quantmesh mesh``: check the mesh policy and render the Envoy sidecars from it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from quantmesh.mesh.envoy import MeshLayout, write_sidecar_configs
from quantmesh.mesh.policy import MeshPolicy, PolicyError, load_policy
from quantmesh.runtime.config import quantmesh_home

app = typer.Typer(no_args_is_help=True, help="The mesh policy and the Envoy configurations.")
_out = Console()
_err = Console(stderr=True)

PolicyOption = Annotated[
    Path | None, typer.Option("--policy", help="Policy file (default: the shipped one).")
]


def _load(path: Path | None) -> MeshPolicy:
    try:
        return load_policy(path)
    except PolicyError as error:
        _err.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None


@app.command("check")
def check(policy_path: PolicyOption = None) -> None:
    """Check the policy against the contracts and print who may call what."""
    policy = _load(policy_path)
    layout = MeshLayout.of(policy)
    for name, service in policy.services.items():
        calls = ", ".join(f"{p} (via :{layout.outbound(name, p)})" for p in service.calls)
        _out.print(
            f"[bold cyan]{name}[/bold cyan] serves on :{service.port}, mesh :{service.mesh_port}; "
            f"calls {calls or 'nothing'}"
        )
        for pattern, callers in service.grants.items():
            _out.print(f"  {pattern}  ← {', '.join(callers)}", soft_wrap=True)
    _out.print(f"shared with every identity: {', '.join(policy.everyone)}")
    _out.print(
        f"[bold cyan]edge[/bold cyan] listens on :{policy.edge.port} for "
        f"{', '.join(policy.edge.clients)}"
    )


@app.command("envoy")
def envoy(
    policy_path: PolicyOption = None,
    pki: Annotated[
        Path | None, typer.Option(help="PKI folder (default: $QUANTMESH_HOME/pki).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Where to write (default: $QUANTMESH_HOME/mesh/envoy).")
    ] = None,
    compose: Annotated[
        bool,
        typer.Option(
            "--compose",
            help="For docker compose: listen on every interface, reach peers by service name.",
        ),
    ] = False,
) -> None:
    """Render one Envoy sidecar configuration per service, and the edge's, from the policy."""
    layout = MeshLayout.of(_load(policy_path), compose=compose)
    home = quantmesh_home()
    written = write_sidecar_configs(layout, pki or home / "pki", out or home / "mesh" / "envoy")
    for name, path in written.items():
        _out.print(f"[green]{name:<10}[/green] {path}")

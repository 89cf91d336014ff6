"""``quantmesh serve <service>``: run one service until SIGTERM."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from quantmesh.runtime.config import format_config_error
from quantmesh.runtime.logging import configure_logging
from quantmesh.runtime.server import StartupError

app = typer.Typer(no_args_is_help=True, help="Run one quantmesh service.")
_err = Console(stderr=True)


def _settings_or_exit(settings_type: type[Any], env_prefix: str, **flags: Any) -> Any:
    # Flags given on the command line win over the environment; unset flags defer to it.
    given = {name: value for name, value in flags.items() if value is not None}
    try:
        return settings_type(**given)
    except ValidationError as error:
        _err.print(f"[red]{format_config_error(error, env_prefix)}[/red]")
        raise typer.Exit(2) from None


@app.command("marketdata")
def marketdata(
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port; 0 picks a free one.")] = None,
    source: Annotated[str | None, typer.Option(help="replay or synthetic.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the tick generator.")] = None,
    log_format: Annotated[str | None, typer.Option(help="console or json.")] = None,
) -> None:
    """Serve ticks, bars and symbol info (default port 8001)."""
    from quantmesh.services.marketdata.config import ENV_PREFIX, MarketDataSettings
    from quantmesh.services.marketdata.service import build_runtime

    settings = _settings_or_exit(
        MarketDataSettings,
        ENV_PREFIX,
        host=host,
        port=port,
        source=source,
        seed=seed,
        log_format=log_format,
    )
    configure_logging(settings.log_level, settings.log_format)
    try:
        runtime = build_runtime(settings)
    except ValueError as error:
        _err.print(f"[red]invalid configuration: {error}[/red]")
        raise typer.Exit(2) from None
    try:
        asyncio.run(runtime.run_until_signal())
    except StartupError as error:
        _err.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None

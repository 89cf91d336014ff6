"""``quantmesh serve <service>``: run one service until SIGTERM."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from quantmesh.mesh.transport import MeshConfigError, set_identity
from quantmesh.observability.tracing import (
    TracingConfigError,
    configure_tracing,
    shutdown_tracing,
)
from quantmesh.runtime.config import format_config_error
from quantmesh.runtime.logging import configure_logging
from quantmesh.runtime.server import ServiceRuntime, StartupError
from quantmesh.storage.urls import StoreUnavailableError

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


def _serve(
    settings_type: type[Any], env_prefix: str, build: Callable[[Any], ServiceRuntime], **flags: Any
) -> None:
    settings = _settings_or_exit(settings_type, env_prefix, **flags)
    configure_logging(settings.log_level, settings.log_format)
    try:
        runtime = build(settings)
    except StoreUnavailableError as error:  # names the store's setting
        _err.print(f"[red]cannot start: {error}[/red]")
        raise typer.Exit(2) from None
    except (ValueError, OSError) as error:
        _err.print(f"[red]invalid configuration: {error}[/red]")
        raise typer.Exit(2) from None
    set_identity(runtime.name)  # its certificate, when the mesh is proxyless
    try:
        configure_tracing(runtime.name)
        asyncio.run(runtime.run_until_signal())
    except (StartupError, MeshConfigError, TracingConfigError) as error:
        _err.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    finally:
        shutdown_tracing()  # export the spans still buffered


HostOption = Annotated[str | None, typer.Option(help="Interface to listen on.")]
PortOption = Annotated[int | None, typer.Option(help="TCP port; 0 picks a free one.")]
LogFormatOption = Annotated[str | None, typer.Option(help="console or json.")]


@app.command("marketdata")
def marketdata(
    host: HostOption = None,
    port: PortOption = None,
    source: Annotated[str | None, typer.Option(help="replay or synthetic.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the tick generator.")] = None,
    log_format: LogFormatOption = None,
) -> None:
    """Serve ticks, bars and symbol info (default port 8001)."""
    from quantmesh.services.marketdata.config import ENV_PREFIX, MarketDataSettings
    from quantmesh.services.marketdata.service import build_runtime

    _serve(
        MarketDataSettings,
        ENV_PREFIX,
        build_runtime,
        host=host,
        port=port,
        source=source,
        seed=seed,
        log_format=log_format,
    )


@app.command("features")
def features(
    host: HostOption = None,
    port: PortOption = None,
    marketdata_address: Annotated[
        str | None, typer.Option(help="host:port of the market data service.")
    ] = None,
    log_format: LogFormatOption = None,
) -> None:
    """Serve feature rows computed from market data's ticks (default port 8002)."""
    from quantmesh.services.features.config import ENV_PREFIX, FeaturesSettings
    from quantmesh.services.features.service import build_runtime

    _serve(
        FeaturesSettings,
        ENV_PREFIX,
        build_runtime,
        host=host,
        port=port,
        marketdata_address=marketdata_address,
        log_format=log_format,
    )


@app.command("decision")
def decision(
    host: HostOption = None,
    port: PortOption = None,
    features_address: Annotated[
        str | None, typer.Option(help="host:port of the features service.")
    ] = None,
    inference_address: Annotated[
        str | None, typer.Option(help="host:port of the inference service.")
    ] = None,
    log_format: LogFormatOption = None,
) -> None:
    """Serve signals: model predictions plus policy (default port 8003)."""
    from quantmesh.services.decision.config import ENV_PREFIX, DecisionSettings
    from quantmesh.services.decision.service import build_runtime

    _serve(
        DecisionSettings,
        ENV_PREFIX,
        build_runtime,
        host=host,
        port=port,
        features_address=features_address,
        inference_address=inference_address,
        log_format=log_format,
    )


@app.command("inference")
def inference(
    host: HostOption = None,
    port: PortOption = None,
    registry_root: Annotated[
        Path | None, typer.Option(help="Model registry folder ($QUANTMESH_HOME/registry).")
    ] = None,
    model_refs: Annotated[
        str | None,
        typer.Option(help="Models to serve: name, name@alias or name:version, comma-separated."),
    ] = None,
    features_address: Annotated[
        str | None, typer.Option(help="host:port of the features service.")
    ] = None,
    cache_size: Annotated[int | None, typer.Option(help="Prediction cache entries.")] = None,
    log_format: LogFormatOption = None,
) -> None:
    """Serve ONNX models over the Open Inference Protocol and stream predictions (port 8006)."""
    from quantmesh.services.inference.config import ENV_PREFIX, InferenceSettings
    from quantmesh.services.inference.service import build_runtime

    _serve(
        InferenceSettings,
        ENV_PREFIX,
        build_runtime,
        host=host,
        port=port,
        registry_root=registry_root,
        model_refs=model_refs,
        features_address=features_address,
        cache_size=cache_size,
        log_format=log_format,
    )


@app.command("execution")
def execution(
    host: HostOption = None,
    port: PortOption = None,
    marketdata_address: Annotated[
        str | None, typer.Option(help="host:port of the market data service (fills, stops).")
    ] = None,
    log_format: LogFormatOption = None,
) -> None:
    """Serve orders on the paper broker, positions and the account (default port 8007)."""
    from quantmesh.services.execution.config import ENV_PREFIX, ExecutionSettings
    from quantmesh.services.execution.service import build_runtime

    _serve(
        ExecutionSettings,
        ENV_PREFIX,
        build_runtime,
        host=host,
        port=port,
        marketdata_address=marketdata_address,
        log_format=log_format,
    )


@app.command("analytics")
def analytics(
    host: HostOption = None,
    port: PortOption = None,
    execution_address: Annotated[
        str | None, typer.Option(help="host:port of the execution service (fills).")
    ] = None,
    marketdata_address: Annotated[
        str | None, typer.Option(help="host:port of the market data service (marks).")
    ] = None,
    log_format: LogFormatOption = None,
) -> None:
    """Serve equity, performance and reports from execution's fills (default port 8008)."""
    from quantmesh.services.analytics.config import ENV_PREFIX, AnalyticsSettings
    from quantmesh.services.analytics.service import build_runtime

    _serve(
        AnalyticsSettings,
        ENV_PREFIX,
        build_runtime,
        host=host,
        port=port,
        execution_address=execution_address,
        marketdata_address=marketdata_address,
        log_format=log_format,
    )


@app.command("risk")
def risk(
    host: HostOption = None,
    port: PortOption = None,
    decision_address: Annotated[
        str | None, typer.Option(help="host:port of the decision service (signals).")
    ] = None,
    execution_address: Annotated[
        str | None, typer.Option(help="host:port of the execution service (orders).")
    ] = None,
    log_format: LogFormatOption = None,
) -> None:
    """Serve limits and kill switches and trade approved signals (default port 8004)."""
    from quantmesh.services.risk.config import ENV_PREFIX, RiskSettings
    from quantmesh.services.risk.service import build_runtime

    _serve(
        RiskSettings,
        ENV_PREFIX,
        build_runtime,
        host=host,
        port=port,
        decision_address=decision_address,
        execution_address=execution_address,
        log_format=log_format,
    )


@app.command("recorder")
def recorder(
    host: HostOption = None,
    port: PortOption = None,
    marketdata_address: Annotated[
        str | None, typer.Option(help="host:port of the market data service (ticks).")
    ] = None,
    inference_address: Annotated[
        str | None, typer.Option(help="host:port of the inference service (predictions).")
    ] = None,
    timeseries_url: Annotated[
        str | None, typer.Option(help="Timeseries store: chdb:///path or clickhouse://….")
    ] = None,
    graph_url: Annotated[
        str | None,
        typer.Option(help="Graph store for correlations: memory://, file:///…, arangodb://…."),
    ] = None,
    log_format: LogFormatOption = None,
) -> None:
    """Record ticks and predictions into the timeseries store, and weight the currency
    graph with rolling correlations (health on port 8009)."""
    from quantmesh.services.recorder.config import ENV_PREFIX, RecorderSettings
    from quantmesh.services.recorder.service import build_runtime

    _serve(
        RecorderSettings,
        ENV_PREFIX,
        build_runtime,
        host=host,
        port=port,
        marketdata_address=marketdata_address,
        inference_address=inference_address,
        timeseries_url=timeseries_url,
        graph_url=graph_url,
        log_format=log_format,
    )

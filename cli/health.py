"""``quantmesh health``: ask a service's grpc.health.v1 whether it is SERVING."""

from __future__ import annotations

from typing import Annotated

import grpc
import typer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console

_out = Console()


def health(
    address: Annotated[str, typer.Argument(help="host:port of the service.")],
    service: Annotated[str, typer.Option(help="Full gRPC service name; empty = server.")] = "",
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 3.0,
) -> None:
    """Exit 0 when the service answers SERVING, 1 otherwise (for healthchecks)."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as error:
            _out.print(f"[red]{address}: {error.code().name}: {error.details()}[/red]")
            raise typer.Exit(1) from None
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    _out.print(f"{address} {service or '(server)'}: {status}")
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise typer.Exit(1)

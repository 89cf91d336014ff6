"""Service configuration: typed settings read from environment variables and CLI flags.

Every service subclasses :class:`ServiceSettings` and sets its own ``env_prefix``, e.g.
``QUANTMESH_MARKETDATA_PORT=8001``. Flags given on the command line override the
environment. Invalid values fail at start-up with a message naming the setting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


def quantmesh_home() -> Path:
    """Where quantmesh keeps its embedded state: ``$QUANTMESH_HOME``, else ``./var``.

    The model registry lives in ``registry/``, the execution store in ``execution/``.
    """
    return Path(os.environ.get("QUANTMESH_HOME") or "var")


class ServiceSettings(BaseSettings):
    """Settings shared by every service.

    Attributes
    ----------
    host:
        Interface to listen on. Loopback by default: in the mesh, only the local Envoy
        reaches a service, never the network directly.
    port:
        TCP port; 0 picks a free port (the bound port is logged).
    log_level:
        Minimum level of log records.
    log_format:
        ``console`` for people, ``json`` for log pipelines.
    grace_seconds:
        How long in-flight RPCs may take to finish after SIGTERM.
    metrics_port:
        Port of the Prometheus ``/metrics`` endpoint on ``host``; unset serves none,
        0 picks a free port.
    """

    model_config = SettingsConfigDict(env_prefix="QUANTMESH_", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["console", "json"] = "console"
    grace_seconds: float = Field(default=5.0, ge=0.0, le=600.0)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)

    @property
    def address(self) -> str:
        """``host:port`` as gRPC expects it (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"


def format_config_error(error: ValidationError, env_prefix: str) -> str:
    """Turn a pydantic validation error into a message that names each bad setting."""
    lines = ["invalid configuration:"]
    for problem in error.errors():
        field = ".".join(str(part) for part in problem["loc"])
        env_name = f"{env_prefix}{field}".upper()
        lines.append(f"  {field} (env {env_name}): {problem['msg']} (got {problem.get('input')!r})")
    return "\n".join(lines)

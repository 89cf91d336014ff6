"""The service runtime every quantmesh service shares: config, logging and the grpc.aio server."""

from quantmesh.runtime.config import ServiceSettings, format_config_error
from quantmesh.runtime.server import ServiceRuntime, StartupError

__all__ = ["ServiceRuntime", "ServiceSettings", "StartupError", "format_config_error"]

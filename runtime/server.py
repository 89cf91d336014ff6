"""The grpc.aio server every service runs in: health, reflection, draining shutdown.

A service hands the runtime a function that adds its servicers to the server and the
full names of its gRPC services. The runtime adds ``grpc.health.v1`` and server
reflection (so ``buf curl``/``grpcurl`` work with no .proto at hand), binds the port with
a clear error when it cannot, and on SIGTERM drains: health turns NOT_SERVING, open
streams are told to stop at a batch boundary (``shutdown`` event), and in-flight RPCs get
``grace_seconds`` to finish.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from quantmesh.mesh import transport
from quantmesh.observability import tracing
from quantmesh.runtime.config import ServiceSettings
from quantmesh.runtime.logging import get_logger
from quantmesh.runtime.metrics import serve_metrics

# Adds a service's servicers to the server; the event is set when the service drains.
Registrar = Callable[[grpc.aio.Server, asyncio.Event], None]

# SO_REUSEPORT would let a second server silently share a busy port; we want an error.
_SERVER_OPTIONS = [
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


class StartupError(RuntimeError):
    """A service could not start; the message says why and what to change."""


class ServiceRuntime:
    """Run one service's servicers in a grpc.aio server.

    Parameters
    ----------
    name:
        Service name used in logs and errors, e.g. ``marketdata``.
    settings:
        Host, port and grace period.
    service_names:
        Full gRPC service names registered by ``register`` (for health and reflection).
    register:
        Adds the service's servicers to the server, given the ``shutdown`` event that
        long-lived streams watch to end at a batch boundary.
    background:
        Jobs that run beside the server (e.g. a tick feed), started after it and
        cancelled when it stops; each gets the ``shutdown`` event.
    """

    def __init__(
        self,
        name: str,
        settings: ServiceSettings,
        service_names: Sequence[str],
        register: Registrar,
        interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
        background: Sequence[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = (),
    ) -> None:
        self.name = name
        self.settings = settings
        self.service_names = list(service_names)
        self.shutdown = asyncio.Event()
        self.port = 0
        self._register = register
        self._interceptors = list(interceptors)
        self._background = list(background)
        self._tasks: list[asyncio.Task[None]] = []
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]  # stubs lag grpcio
        self._log = get_logger(name)

    async def start(self) -> int:
        """Bind, start serving and return the bound port."""
        # The mesh's policy check (proxyless mode) runs before any service interceptor;
        # then the RPC's server span, so the service's own spans are its children.
        interceptors = [
            *transport.server_interceptors(),
            *tracing.server_interceptors(),
            *self._interceptors,
        ]
        server = grpc.aio.server(interceptors=interceptors, options=_SERVER_OPTIONS)
        self._register(server, self.shutdown)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        try:
            port = transport.add_port(server, self.settings.address)
        except RuntimeError as error:
            raise StartupError(self._bind_failure()) from error
        if port == 0:
            raise StartupError(self._bind_failure())
        await server.start()
        for service_name in ["", *self.service_names]:
            await self._health.set(service_name, health_pb2.HealthCheckResponse.SERVING)
        self._server, self.port = server, port
        self._tasks = [asyncio.create_task(job(self.shutdown)) for job in self._background]
        self._log.info("serving", address=f"{self.settings.host}:{port}")
        if self.settings.metrics_port is not None:
            try:
                metrics_port = serve_metrics(self.settings.host, self.settings.metrics_port)
            except OSError as error:
                await self.stop(grace=0)
                raise StartupError(
                    f"{self.name} cannot serve metrics on port {self.settings.metrics_port} "
                    f"({error.strerror}); set QUANTMESH_{self.name.upper()}_METRICS_PORT"
                ) from None
            self._log.info("metrics", url=f"http://{self.settings.host}:{metrics_port}/metrics")
        return port

    def _bind_failure(self) -> str:
        return (
            f"{self.name} cannot listen on {self.settings.address}: the port is in use or "
            f"not permitted. Choose another with --port, or set "
            f"QUANTMESH_{self.name.upper()}_PORT (0 picks a free port)."
        )

    async def stop(self, grace: float | None = None) -> None:
        """Drain: report NOT_SERVING, ask streams to end, then stop with a grace period."""
        if self._server is None:
            return
        grace = self.settings.grace_seconds if grace is None else grace
        self._log.info("draining", grace_seconds=grace)
        await self._health.enter_graceful_shutdown()
        self.shutdown.set()
        await self._server.stop(grace)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._server, self._tasks = None, []
        self._log.info("stopped")

    async def run_until_signal(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then drain and stop."""
        await self.start()
        stop_requested = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop_requested.set)
        await stop_requested.wait()
        await self.stop()

    async def __aenter__(self) -> ServiceRuntime:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop(grace=0.5)

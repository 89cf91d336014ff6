"""The local launcher: run quantmesh services, and their mesh, as real processes.

Each service runs in its own process, as in production, started with
``python -m quantmesh.cli serve <name>`` and wired to its peers by environment variables.
Under the Envoy mesh each service also gets its sidecar, and the edge proxy runs in front
of them all; proxies are supervised like services.
The launcher waits for ``grpc.health.v1`` to answer SERVING before it reports a service
up, keeps each service's log in a file (a pipe nobody reads would block the service once
full), and stops services with SIGTERM so they drain.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Literal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quantmesh.mesh import direct
from quantmesh.mesh.envoy import MeshLayout, envoy_binary, write_sidecar_configs
from quantmesh.mesh.pki import ensure_pki
from quantmesh.mesh.policy import load_policy

# How services reach each other: see local_pipeline.
Mesh = Literal["plaintext", "direct", "envoy"]

# The whole pipeline, each service after the peers it calls: service → those peers.
PIPELINE: dict[str, tuple[str, ...]] = {
    "marketdata": (),
    "features": ("marketdata",),
    "inference": ("features",),
    "decision": ("marketdata", "features", "inference"),
    "execution": ("marketdata",),
    "risk": ("decision", "execution"),
    "analytics": ("execution", "marketdata"),
}
# Beside the pipeline, off the trading path: records ticks and predictions into the
# timeseries store. ``quantmesh up`` runs it; tests of trading leave it out.
RECORDER: dict[str, tuple[str, ...]] = {"recorder": ("marketdata", "inference")}
# Every service of the platform (the mesh policy's services), each after its peers.
PLATFORM: dict[str, tuple[str, ...]] = PIPELINE | RECORDER
# The signal path alone: ticks to signals, no trading.
SIGNAL_PATH = ("marketdata", "features", "inference", "decision")


_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port that was free a moment ago, and not handed out before by this process.

    A mesh takes dozens of ports before any is bound; the kernel could offer a port it
    just offered again, so the ports given out are remembered.
    """
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


@dataclass
class SupervisedProcess:
    """A process the launcher starts, watches, restarts and stops: a service or a proxy."""

    name: str
    log: IO[bytes] = field(default_factory=tempfile.TemporaryFile)
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} is not running"
        return self.process.pid

    def start(self, timeout: float = 60.0) -> None:
        """Start the process and wait until it is ready."""
        self.process = subprocess.Popen(
            self.command(),
            env={**os.environ, **self.environment()},
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        self.wait_ready(timeout)

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return {}

    def wait_ready(self, timeout: float) -> None:
        raise NotImplementedError

    @property
    def exited(self) -> bool:
        """True if the process was started and has exited (crashed, or killed from outside)."""
        return self.process is not None and self.process.poll() is not None

    def restart(self, timeout: float = 60.0) -> None:
        """Start it again on the same ports after it exited."""
        self.process = None
        self.restarts += 1
        self.start(timeout)

    def stop(self, kill: bool = False) -> int:
        """Stop with SIGTERM (a drain) or SIGKILL (a crash); return the exit code."""
        if self.process is None:
            return 0
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            code = self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.process = None
        return code

    def logs(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def rss_mb(self) -> float:
        return _proc_status_kb(self.pid, "VmRSS") / 1024

    def peak_rss_mb(self) -> float:
        return _proc_status_kb(self.pid, "VmHWM") / 1024

    def pss_mb(self) -> float:
        """Proportional set size: shared pages (a binary's code) split among their users."""
        with open(f"/proc/{self.pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
        raise KeyError("Pss")

    def _check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.logs()}")


@dataclass
class ServiceProcess(SupervisedProcess):
    """One service running in its own process."""

    port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    metrics_port: int | None = None
    serving_since: float = 0.0  # time.monotonic() when it last answered SERVING
    # Proxyless mode: the PKI, and the identity the launcher checks health as.
    tls: tuple[Path, str] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str | None:
        """URL of the service's Prometheus metrics, if it serves them."""
        return (
            None if self.metrics_port is None else f"http://127.0.0.1:{self.metrics_port}/metrics"
        )

    def command(self) -> list[str]:
        return [sys.executable, "-m", "quantmesh.cli", "serve", self.name, "--port", str(self.port)]

    def environment(self) -> dict[str, str]:
        return self.env

    def _health_channel(self) -> grpc.Channel:
        if self.tls is None:
            return grpc.insecure_channel(self.address)
        credentials = direct.channel_credentials(*self.tls)
        return grpc.secure_channel(
            self.address, credentials, options=direct.peer_options(self.name)
        )

    def wait_ready(self, timeout: float) -> None:
        """Wait until the service answers SERVING on grpc.health.v1."""
        deadline = time.monotonic() + timeout
        with self._health_channel() as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                self._check_alive()
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        self.serving_since = time.monotonic()
                        return
                except grpc.RpcError:
                    time.sleep(0.1)
        raise TimeoutError(f"{self.name} at {self.address} not SERVING after {timeout}s")


@dataclass
class ProxyProcess(SupervisedProcess):
    """One Envoy (a service's sidecar, or the edge), supervised like the services."""

    config: Path = Path()
    listens_on: tuple[int, ...] = ()  # it is ready once every one of them accepts

    def command(self) -> list[str]:
        # One worker thread: the proxies share two cores with the services. No hot
        # restart, so several Envoys on one machine need no shared-memory ids.
        return [
            str(envoy_binary()),
            "-c",
            str(self.config),
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--log-level",
            "warning",
        ]

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(self.listens_on)
        while waiting:
            self._check_alive()
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", waiting[0])) == 0:
                    waiting.pop(0)
                    continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not listening on {waiting} after {timeout}s")
            time.sleep(0.05)


def _proc_status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


@contextmanager
def service_process(
    service: str, env: Mapping[str, str] | None = None, timeout: float = 60.0
) -> Iterator[ServiceProcess]:
    """Run one service on a free port for the duration of the block."""
    running = ServiceProcess(service, port=free_port(), env=dict(env or {}))
    with running.log:
        try:
            running.start(timeout)
            yield running
        finally:
            running.stop()


class RunningPipeline(dict[str, ServiceProcess]):
    """The services of a running pipeline by name, with its proxies and how to reach it."""

    def __init__(self, mesh: Mesh, pki: Path | None) -> None:
        super().__init__()
        self.mesh = mesh
        self.pki = pki
        self.proxies: dict[str, ProxyProcess] = {}
        self.edge_port: int | None = None

    def supervised(self) -> list[SupervisedProcess]:
        """Every process to watch and restart: the services, then the proxies."""
        return [*self.values(), *self.proxies.values()]

    def channel(self, service: str) -> grpc.aio.Channel:
        """A channel to ``service`` as an operator reaches it.

        Through the edge with the ``client`` certificate under Envoy; with the edge's
        identity over gRPC's mTLS when proxyless; plainly on loopback otherwise.
        """
        if self.mesh == "plaintext":
            return grpc.aio.insecure_channel(self[service].address)
        assert self.pki is not None
        if self.mesh == "envoy":
            address, identity, server = f"127.0.0.1:{self.edge_port}", "client", "edge"
        else:
            address, identity, server = self[service].address, "edge", service
        return direct.peer_channel(address, self.pki, identity, server)


@contextmanager
def local_pipeline(
    home: Path,
    services: Sequence[str] = SIGNAL_PATH,
    env: Mapping[str, str] | None = None,
    policy_ports: bool = False,
    metrics: bool = False,
    mesh: Mesh = "plaintext",
    external: Mapping[str, int] | None = None,
) -> Iterator[RunningPipeline]:
    """Run pipeline services, each wired to its peers, for the block.

    ``home`` is ``QUANTMESH_HOME``: the model registry, every service's embedded store
    and the PKI (``pki/``) live under it. Ports are free ones, so pipelines run side by
    side, unless ``policy_ports`` asks for the policy's (8001-8009, 9001-9009, 9443);
    with ``metrics`` each service also serves Prometheus metrics on a free port.
    ``external`` names services already running elsewhere (a benchmark's own process) at
    a loopback port: they are wired in, and get their sidecar, but are not started.
    ``env`` is given to every service and wins over the peer addresses computed here.
    ``mesh`` is how services reach each other:

    - ``plaintext``: directly, on loopback (tests of a service's behaviour, benches);
    - ``direct``: gRPC's own mutual TLS and policy checks, no proxies;
    - ``envoy``: every hop through the services' Envoy sidecars over mutual TLS, and an
      edge proxy for outside callers; services listen on loopback for their sidecar only.

    Services stop in reverse order (risk before execution, so no order is in flight when
    execution drains), each before its sidecar.
    """
    policy = load_policy()
    pki = home / "pki" if mesh != "plaintext" else None
    if pki is not None:
        ensure_pki(pki, [*policy.services, *policy.external])
    layout = MeshLayout.of(policy) if policy_ports else MeshLayout.on_free_ports(policy, free_port)
    outside = dict(external or {})
    layout = replace(layout, service_ports={**layout.service_ports, **outside})
    chosen = {name: layout.service_ports[name] for name in [*outside, *services]}
    if mesh == "envoy":
        configs = write_sidecar_configs(layout, pki or home / "pki", home / "mesh" / "envoy")

    def peer_address(name: str, peer: str) -> str:
        port = layout.outbound(name, peer) if mesh == "envoy" else chosen[peer]
        return f"127.0.0.1:{port}"

    shared = {"QUANTMESH_HOME": str(home)}
    if mesh == "direct":
        shared |= {"QUANTMESH_MESH_MODE": "direct", "QUANTMESH_MESH_PKI": str(pki)}
    running = RunningPipeline(mesh, pki)
    with ExitStack() as stack:

        def start_sidecar(name: str) -> None:
            outbound = [layout.outbound(name, peer) for peer in policy.services[name].calls]
            sidecar = ProxyProcess(
                f"{name}-envoy",
                config=configs[name],
                listens_on=(layout.mesh_ports[name], *outbound),
            )
            stack.enter_context(sidecar.log)
            stack.callback(sidecar.stop)
            sidecar.start()  # before its service, whose first calls go through it
            running.proxies[name] = sidecar

        for name in outside:
            if mesh == "envoy":
                start_sidecar(name)
        for name in services:
            peers = {
                f"QUANTMESH_{name.upper()}_{peer.upper()}_ADDRESS": peer_address(name, peer)
                for peer in PLATFORM.get(name, ())
                if peer in chosen
            }
            process = ServiceProcess(
                name, port=chosen[name], env={**shared, **peers, **(env or {})}
            )
            if mesh == "direct":
                process.env["QUANTMESH_MESH_IDENTITY"] = name
                process.tls = (pki or home / "pki", "edge")
            if metrics:
                process.metrics_port = free_port()
                process.env[f"QUANTMESH_{name.upper()}_METRICS_PORT"] = str(process.metrics_port)
            if mesh == "envoy":
                start_sidecar(name)
            stack.enter_context(process.log)
            stack.callback(process.stop)
            process.start()
            running[name] = process
        if mesh == "envoy":
            edge = ProxyProcess("edge", config=configs["edge"], listens_on=(layout.edge_port,))
            stack.enter_context(edge.log)
            stack.callback(edge.stop)
            edge.start()
            running.proxies["edge"] = edge
            running.edge_port = layout.edge_port
        yield running

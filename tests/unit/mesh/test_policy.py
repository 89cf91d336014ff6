"""The mesh policy: the shipped file is consistent, and mistakes in it are caught."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from quantmesh.mesh.launcher import PLATFORM
from quantmesh.mesh.policy import PolicyError, default_policy_path, load_policy

SUBMIT = "/quantmesh.execution.v1.ExecutionService/SubmitOrder"


def test_only_risk_may_submit_orders_and_health_is_open_to_the_mesh() -> None:
    policy = load_policy()
    callers = [name for name in policy.identities if policy.allowed(name, SUBMIT)]
    assert callers == ["risk"]
    assert not policy.allowed("analytics", SUBMIT)
    assert not policy.allowed("edge", SUBMIT)
    assert policy.allowed("analytics", "grpc.health.v1.Health/Check")
    assert not policy.allowed("stranger", "grpc.health.v1.Health/Check")
    assert policy.spiffe_id("risk") == "spiffe://quantmesh.local/risk"


def test_administration_is_reachable_only_through_the_edge() -> None:
    policy = load_policy()
    for method in ("SetLimits", "SetKillSwitch"):
        full = f"quantmesh.risk.v1.RiskService/{method}"
        assert [name for name in policy.identities if policy.allowed(name, full)] == ["edge"]


# Where README and users find each service (the seed's ports where it had one).
DOCUMENTED_PORTS = {
    "marketdata": 8001,
    "features": 8002,
    "decision": 8003,
    "risk": 8004,
    "inference": 8006,
    "execution": 8007,
    "analytics": 8008,
    "recorder": 8009,
}


def test_the_policy_wires_the_same_pipeline_as_the_launcher_on_documented_ports() -> None:
    policy = load_policy()
    assert set(policy.services) == set(PLATFORM)
    for name, service in policy.services.items():
        assert set(service.calls) == set(PLATFORM[name]), name
        assert service.port == DOCUMENTED_PORTS[name], name


def broken(tmp_path: Path, change: str, value: object) -> Path:
    document = yaml.safe_load(default_policy_path().read_text())
    target = document
    *parents, last = change.split(".")
    for part in parents:
        target = target[part]
    target[last] = value
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize(
    ("change", "value", "message"),
    [
        (
            "services.execution.grants",
            {"quantmesh.execution.v1.ExecutionService/PlaceOrder": ["risk"]},
            "matches no method",
        ),
        (
            "services.risk.grants",
            {"quantmesh.risk.v1.RiskService/GetLimits": ["mallory"]},
            "unknown identity 'mallory'",
        ),
        ("services.risk.port", 8001, "8001 is already marketdata.port"),
        ("services.analytics.calls", ["execution", "marketdata", "risk"], "risk grants analytics"),
        (
            "services.execution.grants",
            {"quantmesh.execution.v1.ExecutionService/SubmitOrder": ["features"]},
            "to features, which does not call execution",
        ),
        ("services.features.calls", ["market-data"], "unknown service 'market-data'"),
        ("services.features.proxy", 1, "Extra inputs are not permitted"),
    ],
)
def test_a_mistake_in_the_policy_is_refused_with_its_place_named(
    tmp_path: Path, change: str, value: object, message: str
) -> None:
    with pytest.raises(PolicyError) as raised:
        load_policy(broken(tmp_path, change, value))
    assert message in str(raised.value)
    assert str(tmp_path) in str(raised.value)


def test_an_unreadable_policy_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("services: [unclosed")
    with pytest.raises(PolicyError, match=r"policy\.yaml"):
        load_policy(path)
    with pytest.raises(PolicyError, match=r"missing\.yaml"):
        load_policy(tmp_path / "missing.yaml")

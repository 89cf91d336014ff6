"""docker-compose.yml is valid for users with Docker: we cannot run it here, so check it."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from quantmesh.cli.app import app
from quantmesh.cli.serve import app as serve_app

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_services_build_from_existing_dockerfile_and_copy_every_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    import tomllib

    mapped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    for folder in mapped.values():
        top = folder.split("/")[0]
        assert f"COPY {top} {top}" in dockerfile, f"Dockerfile does not copy {top}/"
    for name, service in _compose()["services"].items():
        assert service["build"] == ".", name


def test_compose_commands_name_real_cli_services_and_ports_are_unique() -> None:
    servable = {command.name for command in serve_app.registered_commands}
    host_ports = []
    for name, service in _compose()["services"].items():
        command = service["command"]
        if command[0] == "train":  # the one-shot job that fills the registry volume
            assert service["restart"] == "no"
            continue
        assert command[:2] == ["serve", name]
        assert name in servable, name
        env = service["environment"]
        prefix = f"QUANTMESH_{name.upper()}_"
        # Inside a container the container is the boundary, so all interfaces is right.
        assert env[f"{prefix}HOST"] == "0.0.0.0"  # noqa: S104
        container_port = env[f"{prefix}PORT"]
        host_ports.append(service["ports"][0].split(":")[0])
        assert service["ports"][0].endswith(f":{container_port}")
        assert service["healthcheck"]["test"][1:] == [
            "quantmesh",
            "health",
            f"127.0.0.1:{container_port}",
        ]
    assert len(host_ports) == len(set(host_ports))


def test_compose_peer_addresses_name_compose_services_on_their_ports() -> None:
    services = _compose()["services"]
    ports = {
        name: service["environment"][f"QUANTMESH_{name.upper()}_PORT"]
        for name, service in services.items()
        if service["command"][0] == "serve"
    }
    for name, service in services.items():
        for key, value in service.get("environment", {}).items():
            if key.endswith("_ADDRESS"):
                peer, port = value.split(":")
                assert peer in ports, f"{name}: {key} names unknown service {peer}"
                assert port == ports[peer], (
                    f"{name}: {key} uses {port}, {peer} listens on {ports[peer]}"
                )
                assert peer in service.get("depends_on", {}), f"{name} must wait for {peer}"


def test_compose_registry_is_shared_by_trainer_inference_and_decision() -> None:
    compose = _compose()
    assert "registry" in compose["volumes"]
    for name in ("trainer", "inference", "decision"):
        assert "registry:/var/lib/quantmesh/registry" in compose["services"][name]["volumes"]
    depends = compose["services"]["inference"]["depends_on"]
    assert depends["trainer"]["condition"] == "service_completed_successfully"


def test_cli_lists_the_commands_compose_uses() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "health", "ticks", "bench", "up", "train"):
        assert command in result.output

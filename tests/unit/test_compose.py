"""docker-compose.yml is valid for users with Docker: we cannot run it here, so check it."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
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


def test_every_compose_setting_is_one_the_service_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each service's environment parses with its own settings (extra="forbid")."""
    for name, service in _compose()["services"].items():
        if service["command"][0] != "serve":
            continue
        config = importlib.import_module(f"quantmesh.services.{name}.config")
        settings_type = next(
            value
            for key, value in vars(config).items()
            if key.endswith("Settings") and key != "ServiceSettings" and isinstance(value, type)
        )
        for key in [k for k in os.environ if k.startswith("QUANTMESH_")]:
            monkeypatch.delenv(key)
        for key, value in service["environment"].items():
            assert key.startswith(config.ENV_PREFIX), f"{name}: {key} is not one of its settings"
            monkeypatch.setenv(key, str(value))
        settings = settings_type()  # raises ValidationError on an unknown or bad value
        assert settings.port == int(service["environment"][f"{config.ENV_PREFIX}PORT"])


def test_stateful_services_keep_their_state_in_volumes_and_replay_on_the_pipeline_clock() -> None:
    compose = _compose()
    for name in ("execution", "risk", "analytics"):
        folder = compose["services"][name]["environment"][f"QUANTMESH_{name.upper()}_FOLDER"]
        assert f"{name}:{folder}" in compose["services"][name]["volumes"]
        assert name in compose["volumes"]
    assert (
        compose["services"]["execution"]["environment"]["QUANTMESH_EXECUTION_CLOCK"] == "pipeline"
    )
    # risk is the only path to orders: it waits for its signal source and its broker.
    assert set(compose["services"]["risk"]["depends_on"]) == {"decision", "execution"}

"""docker-compose.yml builds quantmesh's image and keeps its state (tests/integration/
test_compose.py checks the whole stack with Docker Compose v2 against the mesh policy)."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from quantmesh.cli.app import app

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
        if service.get("image", "quantmesh:dev") == "quantmesh:dev":
            assert service["build"] == ".", name


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
    assert {"decision", "execution"} <= set(compose["services"]["risk"]["depends_on"])

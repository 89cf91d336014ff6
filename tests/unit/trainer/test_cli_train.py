"""``quantmesh train``: trains, prints the OOS table, writes the report, registers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from quantmesh.cli.train import default_registry, train
from quantmesh.services.registry.core import ModelRegistry


def app() -> typer.Typer:
    # cli/app.py registers the command for the real CLI; a bare app tests it alone.
    application = typer.Typer()
    application.command()(train)
    return application


def test_the_default_registry_lives_under_quantmesh_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("QUANTMESH_HOME", raising=False)
    assert default_registry() == Path("var") / "registry"
    monkeypatch.setenv("QUANTMESH_HOME", str(tmp_path))
    assert default_registry() == tmp_path / "registry"


def test_train_prints_the_table_writes_the_report_and_registers_a_champion(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("QUANTMESH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "200")
    report = tmp_path / "out" / "training.json"
    result = CliRunner().invoke(app(), ["--folds", "2", "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert "overall" in result.output
    assert "registered eurusd-h1-direction:1 as champion" in result.output
    loaded = json.loads(report.read_text())
    assert len(loaded["folds"]) == 2
    assert loaded["config"]["folds"] == 2
    registry = ModelRegistry(tmp_path / "home" / "registry")
    champion = registry.resolve("eurusd-h1-direction@champion")
    assert champion.sha256 == loaded["final_model"]["sha256"]


def test_a_bad_model_name_is_refused_before_training(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app(), ["--name", "Bad Name", "--registry", str(tmp_path), "--report", str(tmp_path / "r")]
    )
    assert result.exit_code == 2
    assert "invalid model name" in result.output

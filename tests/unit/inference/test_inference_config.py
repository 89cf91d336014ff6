"""Inference settings: defaults, environment and the references list."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from quantmesh.services.inference.config import InferenceSettings


def test_defaults_follow_the_seed_and_quantmesh_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QUANTMESH_HOME", raising=False)
    settings = InferenceSettings()
    assert settings.port == 8006
    assert settings.registry_root == Path("var/registry")
    assert settings.refs == ["eurusd-h1-direction@champion"]
    assert settings.features_address == "127.0.0.1:8002"
    monkeypatch.setenv("QUANTMESH_HOME", "/srv/qm")
    assert InferenceSettings().registry_root == Path("/srv/qm/registry")


def test_environment_sets_every_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTMESH_INFERENCE_MODEL_REFS", "a@champion, b:3")
    monkeypatch.setenv("QUANTMESH_INFERENCE_CACHE_SIZE", "0")
    settings = InferenceSettings()
    assert settings.refs == ["a@champion", "b:3"]
    assert settings.cache_size == 0


@pytest.mark.parametrize(
    "fields",
    [{"cache_size": -1}, {"port": 70_000}, {"model_refs": "a,,b"}, {"alias_poll_seconds": -1}],
)
def test_bad_values_are_rejected(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        InferenceSettings(**fields)  # type: ignore[arg-type]

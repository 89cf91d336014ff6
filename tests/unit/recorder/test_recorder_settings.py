"""The recorder's store URLs: its own setting, else the one every service shares, else local."""

from __future__ import annotations

import pytest

from quantmesh.services.recorder.config import RecorderSettings
from quantmesh.storage.graph.correlation import DEFAULT_WINDOW
from quantmesh.storage.timeseries import default_url

SHARED_TS = "clickhouse://quantmesh:secret@clickhouse:8123/quantmesh"
SHARED_GRAPH = "arangodb://root:secret@arangodb:8529/quantmesh"


@pytest.fixture(autouse=True)
def _no_store_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "QUANTMESH_TIMESERIES_URL",
        "QUANTMESH_RECORDER_TIMESERIES_URL",
        "QUANTMESH_GRAPH_URL",
        "QUANTMESH_RECORDER_GRAPH_URL",
    ):
        monkeypatch.delenv(name, raising=False)


def test_without_settings_the_stores_are_local_and_predictions_recorded() -> None:
    settings = RecorderSettings()

    assert settings.timeseries_url == default_url()
    assert settings.graph_url == "memory://"
    assert settings.record_predictions
    assert settings.inference_address == "127.0.0.1:8006"
    assert settings.correlation_window == DEFAULT_WINDOW
    assert settings.correlation_timeframe_ms == 3_600_000


def test_the_shared_store_urls_are_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTMESH_TIMESERIES_URL", SHARED_TS)
    monkeypatch.setenv("QUANTMESH_GRAPH_URL", SHARED_GRAPH)

    settings = RecorderSettings()

    assert (settings.timeseries_url, settings.graph_url) == (SHARED_TS, SHARED_GRAPH)


def test_the_recorders_own_settings_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTMESH_TIMESERIES_URL", SHARED_TS)
    monkeypatch.setenv("QUANTMESH_GRAPH_URL", SHARED_GRAPH)
    monkeypatch.setenv("QUANTMESH_RECORDER_TIMESERIES_URL", "chdb:///var/mine")
    monkeypatch.setenv("QUANTMESH_RECORDER_GRAPH_URL", "file:///var/graph.jsonl")
    monkeypatch.setenv("QUANTMESH_RECORDER_RECORD_PREDICTIONS", "false")

    settings = RecorderSettings()

    assert (settings.timeseries_url, settings.graph_url) == (
        "chdb:///var/mine",
        "file:///var/graph.jsonl",
    )
    assert not settings.record_predictions

"""The networkx adapter's journal: replay, compaction, and what a crash leaves behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantmesh.storage.graph import (
    DecisionProvenance,
    NodeKind,
    NodeRef,
    SymbolEdge,
    decision_provenance,
    open_graph,
)
from quantmesh.storage.urls import StoreConfigError, StoreUnavailableError

SETTING = "QUANTMESH_GRAPH_URL"
EURUSD = SymbolEdge("EURUSD", "EUR", "USD", {"GBPUSD": 0.8}, 1_000)


def _decision(decision_id: str, fills: int) -> DecisionProvenance:
    return decision_provenance(
        decision_id,
        signal_id=f"sig-{decision_id}",
        prediction_id=f"pred-{decision_id}",
        model_name="eurusd-h1",
        model_version="3",
        feature_row="EURUSD@1700000000000",
        orders={"ord-1": [f"fill-{i}" for i in range(fills)]},
    )


def test_opening_compacts_the_journal_to_the_last_record_of_each(tmp_path: Path) -> None:
    path = tmp_path / "state" / "graph.jsonl"
    url = f"file:///{path}"
    graph = open_graph(url, SETTING)
    for fills in range(1, 21):
        graph.record_provenance(_decision("dec-1", fills))
        graph.upsert_symbol(SymbolEdge("EURUSD", "EUR", "USD", {}, fills))
    graph.close()
    assert len(path.read_text().splitlines()) == 40
    graph = open_graph(url, SETTING)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [next(iter(line)) for line in lines] == ["symbol", "provenance"]
    assert graph.provenance("dec-1") == _decision("dec-1", 20)
    assert graph.symbols()[0].updated_ms == 20
    graph.close()


def test_a_half_written_last_line_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "graph.jsonl"
    graph = open_graph(f"file:///{path}", SETTING)
    graph.upsert_symbol(EURUSD)
    graph.close()
    with path.open("a") as journal:
        journal.write('{"symbol":{"symbol":"GBPUSD","ba')  # the process died mid-write
    graph = open_graph(f"file:///{path}", SETTING)
    assert graph.symbols() == (EURUSD,)
    graph.close()


def test_a_damaged_journal_fails_naming_the_setting_and_line(tmp_path: Path) -> None:
    path = tmp_path / "graph.jsonl"
    path.write_text('{"symbol":' + json.dumps(EURUSD.to_dict()) + "}\nnot json\n{}\n")
    with pytest.raises(StoreConfigError, match=rf"{SETTING}: .*graph.jsonl line 2"):
        open_graph(f"file:///{path}", SETTING)


def test_a_relative_file_url_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    graph = open_graph("file:///var/graph.jsonl", SETTING)
    graph.upsert_symbol(EURUSD)
    graph.close()
    assert (tmp_path / "var" / "graph.jsonl").exists()


def test_a_closed_graph_refuses_writes_rather_than_dropping_them(tmp_path: Path) -> None:
    graph = open_graph(f"file:///{tmp_path / 'graph.jsonl'}", SETTING)
    graph.close()
    with pytest.raises(StoreUnavailableError, match="closed"):
        graph.upsert_symbol(EURUSD)


def test_fills_are_journalled_apart_and_known_ones_not_again(tmp_path: Path) -> None:
    path = tmp_path / "graph.jsonl"
    url = f"file:///{path}"
    graph = open_graph(url, SETTING)
    graph.record_provenance(_decision("dec-1", 0))
    fill = ("D1", {"price": "1.0851", "volume": "0.1", "time_ms": 1_700_000_000_000})
    graph.record_fills("dec-1", "ord-1", [fill])
    graph.record_fills("dec-1", "ord-1", [fill])  # analytics read the report again
    assert len(path.read_text().splitlines()) == 2
    graph.record_fills("dec-1", "ord-1", [(fill[0], {**fill[1], "volume": "0.2"})])
    assert len(path.read_text().splitlines()) == 3  # a changed fill is a write
    graph.close()
    graph = open_graph(url, SETTING)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    # Compacted: risk's record without the fill, then the fill on its own, so that a
    # replayed re-record by risk cannot take it away.
    assert [next(iter(line)) for line in lines] == ["provenance", "fills"]
    assert all(e["relation"] != "filled_by" for e in lines[0]["provenance"]["edges"])
    assert lines[1]["fills"] == {
        "decision_id": "dec-1",
        "order_id": "ord-1",
        "fills": [{"key": "D1", "attributes": {**fill[1], "volume": "0.2"}}],
    }
    graph.record_provenance(_decision("dec-1", 0))
    back = graph.provenance("dec-1")
    assert back is not None
    assert back.node(NodeRef(NodeKind.FILL, "D1")).attributes["volume"] == "0.2"
    graph.close()


def test_a_journal_has_one_writer_at_a_time(tmp_path: Path) -> None:
    url = f"file:///{(tmp_path / 'graph.jsonl').as_posix()}"
    first = open_graph(url, "QUANTMESH_RISK_GRAPH_URL")
    with pytest.raises(StoreConfigError, match=r"QUANTMESH_RISK_GRAPH_URL.*another process"):
        open_graph(url, "QUANTMESH_RISK_GRAPH_URL")
    first.upsert_symbol(SymbolEdge("EURUSD", "EUR", "USD"))
    first.close()
    again = open_graph(url, "QUANTMESH_RISK_GRAPH_URL")  # the lock went with the close
    assert [edge.symbol for edge in again.symbols()] == ["EURUSD"]
    again.close()

"""``quantmesh up``, the main command, as a user runs it: train, trade, Ctrl-C, continue."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quantmesh.services.execution.orders import BROKER_KEY_PREFIX
from quantmesh.storage.graph import NodeKind, open_graph

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

UP = [sys.executable, "-m", "quantmesh.cli", "up", "--free-ports", "--no-view"]


def environment(home: Path, **extra: str) -> dict[str, str]:
    quiet = {
        f"QUANTMESH_{name}_LOG_LEVEL": "WARNING"
        for name in ("MARKETDATA", "FEATURES", "INFERENCE", "DECISION", "RISK", "EXECUTION")
    }
    return {**os.environ, "QUANTMESH_HOME": str(home), "COLUMNS": "200", **quiet, **extra}


def order_keys(home: Path) -> tuple[list[str], list[tuple[str, int]], list[int]]:
    """Execution's keys, the broker's received keys with counts, and the order states."""
    with sqlite3.connect(home / "execution" / "execution.sqlite3") as store:
        keys = [key for (key,) in store.execute("SELECT idempotency_key FROM execution_orders")]
        states = [state for (state,) in store.execute("SELECT state FROM execution_orders")]
    with sqlite3.connect(home / "execution" / "paper_broker.sqlite3") as journal:
        received = journal.execute(
            "SELECT client_key, COUNT(*) FROM broker_orders GROUP BY client_key"
        ).fetchall()
    return keys, received, states


def test_ctrl_c_loses_no_order_and_up_again_finishes_the_replay(tmp_path: Path) -> None:
    # A paced replay (a bar every 20 ms), so that Ctrl-C lands mid-year.
    paced = environment(tmp_path, QUANTMESH_FEATURES_TICK_SPEED=str(3_600 * 50))
    up = subprocess.Popen(
        UP, env=paced, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert up.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 240
    for line in up.stdout:
        seen.append(line)
        orders = re.search(r"orders (\d+)", line)
        if (orders and int(orders.group(1)) > 0) or time.monotonic() > deadline:
            break
    up.send_signal(signal.SIGINT)
    rest, _ = up.communicate(timeout=60)
    output = "".join(seen) + rest
    assert up.returncode == 0, output
    assert "training one first" in output
    assert "every order is on disk" in output
    assert "stopped: every service drained and exited" in output
    keys, received, states = order_keys(tmp_path)
    assert keys, output
    new = 1  # ORDER_STATE_NEW: recorded but never sent
    assert new not in states
    assert sorted(keys) == sorted(key for key, _ in received)
    assert all(count == 1 for _, count in received)

    # Running up again continues the same run to the end of the year; its supervisor
    # restarts execution after it is killed mid-replay (paced, so the kill lands mid-year).
    again = subprocess.Popen(
        [*UP, "--until-end"],
        env=environment(tmp_path, QUANTMESH_FEATURES_TICK_SPEED=str(3_600 * 200)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert again.stdout is not None
    lines: list[str] = []
    for line in again.stdout:
        lines.append(line)
        started = re.search(r"^execution\s+\S+ \(pid (\d+)", line)
        if started:
            os.kill(int(started.group(1)), signal.SIGKILL)
            break
    rest, _ = again.communicate(timeout=240)
    output = "".join(lines) + rest
    assert again.returncode == 0, output
    assert "continuing the run" in output
    assert "execution exited (-9); restarting it" in output
    assert "execution is back on" in output
    assert "replay finished" in output
    assert "reconciled" in output
    assert "chain intact" in output
    assert "NOT reconciled" not in output
    for figure in ("equity", "trades", "win rate", "max drawdown", "execution latency"):
        assert figure in output
    # The unpaced recorder stored the year's ticks in the first run; this one the rest.
    recorded = next(line for line in output.splitlines() if "recorded by this run" in line)
    assert re.search(r"[\d,]+ ticks, [1-9][\d,]* predictions", recorded), recorded
    report = tmp_path / "report.html"
    assert report.exists()
    assert "plot-equity" in report.read_text()
    later_keys, later_received, _ = order_keys(tmp_path)
    assert set(keys) <= set(later_keys)
    assert len(later_keys) == len(set(later_keys)) > len(keys)
    assert all(count == 1 for _, count in later_received)
    # Risk's graph journal holds the provenance of every traded decision, orders included.
    graph = open_graph(f"file:///{(tmp_path / 'risk' / 'graph.jsonl').as_posix()}")
    try:
        for key in later_keys:
            if key.startswith(BROKER_KEY_PREFIX):  # a stop or target: no decision of its own
                continue
            provenance = graph.provenance(key.split(":")[0])
            assert provenance is not None, key
            assert any(node.ref.kind == NodeKind.ORDER for node in provenance.nodes), key
    finally:
        graph.close()

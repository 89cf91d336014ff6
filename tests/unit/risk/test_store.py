"""Risk's durable state: kill switches and limits survive a restart, cursors never rewind."""

from __future__ import annotations

import dataclasses
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from quantmesh.runtime.errors import InvalidArgument
from quantmesh.services.decision.policy import Action
from quantmesh.services.marketdata.sources import EURUSD
from quantmesh.services.risk.core import AUTO_ENGAGED_BY, AccountState, SignalView
from quantmesh.services.risk.rules import DriftMonitor, KillSwitch, RiskLimits
from quantmesh.services.risk.sizing import Quotes
from quantmesh.services.risk.store import DurableRiskEngine, RiskStore, cursor_name

D = Decimal
T0 = 1_500_000_000_000


def signal(signal_id: str = "sig-1", **changes: object) -> SignalView:
    base = SignalView(
        signal_id=signal_id,
        symbol="EURUSD",
        action=Action.BUY,
        confidence=0.4,
        digits=5,
        reference_points=108_000,
        stop_loss_points=107_800,
        take_profit_points=108_400,
        model_name="m",
        model_version="1",
        probability_up=0.7,
        time_msc=T0,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def account(equity: str = "10000") -> AccountState:
    return AccountState("paper", "USD", D(equity), D(10_000), D(10_000))


def reopen(path: Path) -> DurableRiskEngine:
    return DurableRiskEngine(RiskStore(path))


def test_an_engaged_kill_switch_is_still_engaged_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "risk.sqlite3"
    risk = reopen(path)
    risk.set_kill_switch(
        "paper", engaged=True, reason="broker outage", changed_by="spiffe://ops", time_ms=42
    )
    risk.store.close()

    again = reopen(path)
    assert again.kill_switch("paper") == KillSwitch(
        "paper", True, "broker outage", "spiffe://ops", 42
    )
    decision = again.evaluate(signal(), account(), Quotes(), EURUSD)
    assert not decision.approved
    assert not decision.verdict("kill_switch").passed


def test_the_global_switch_survives_too_and_covers_every_account(tmp_path: Path) -> None:
    path = tmp_path / "risk.sqlite3"
    reopen(path).set_kill_switch("", engaged=True, reason="market halt", changed_by="op", time_ms=1)
    again = reopen(path)
    assert again.kill_switch("").engaged
    merged = again.kill_switch("paper")
    assert merged.engaged
    assert merged.reason == "global kill switch: market halt"


def test_a_switch_engaged_by_the_daily_loss_limit_is_kept_engaged(tmp_path: Path) -> None:
    path = tmp_path / "risk.sqlite3"
    risk = reopen(path)
    # 6 % down on the day with the default 5 % limit.
    decision = risk.evaluate(signal(), account("9400"), Quotes(), EURUSD)
    assert not decision.approved
    assert risk.kill_switch("paper").changed_by == AUTO_ENGAGED_BY
    risk.store.close()

    again = reopen(path)
    switch = again.kill_switch("paper")
    assert switch.engaged
    assert (switch.changed_by, switch.changed_time_ms) == (AUTO_ENGAGED_BY, T0)
    # Back above the limit, the account still waits for an operator.
    assert not again.evaluate(signal("sig-2"), account(), Quotes(), EURUSD).approved


def test_a_release_is_durable_and_every_change_is_logged(tmp_path: Path) -> None:
    path = tmp_path / "risk.sqlite3"
    risk = reopen(path)
    risk.set_kill_switch("paper", engaged=True, reason="check fills", changed_by="a", time_ms=1)
    risk.set_kill_switch("paper", engaged=False, reason="fills ok", changed_by="b", time_ms=2)
    again = reopen(path)
    assert not again.kill_switch("paper").engaged
    assert again.evaluate(signal(), account(), Quotes(), EURUSD).approved
    log = again.store.kill_switch_log("paper")
    assert [(s.engaged, s.changed_by) for s in log] == [(True, "a"), (False, "b")]
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        again.store._db.execute("DELETE FROM kill_switch_log")


def test_engaging_without_a_reason_is_invalid_and_stores_nothing(tmp_path: Path) -> None:
    risk = reopen(tmp_path / "risk.sqlite3")
    with pytest.raises(InvalidArgument, match="reason is required"):
        risk.set_kill_switch("paper", engaged=True, reason="   ", changed_by="op", time_ms=1)
    assert risk.store.kill_switches() == {}
    assert not risk.kill_switch("paper").engaged


def test_a_release_that_cannot_be_written_leaves_the_switch_engaged(tmp_path: Path) -> None:
    risk = reopen(tmp_path / "risk.sqlite3")
    risk.set_kill_switch("paper", engaged=True, reason="incident", changed_by="op", time_ms=1)
    risk.store.close()  # the disk is gone
    with pytest.raises(sqlite3.ProgrammingError):
        risk.set_kill_switch("paper", engaged=False, reason="", changed_by="op", time_ms=2)
    assert risk.kill_switch("paper").engaged


def test_limits_survive_a_restart_and_other_accounts_keep_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "risk.sqlite3"
    limits = RiskLimits(
        risk_per_trade_bps=50, max_open_positions=2, min_volume=D("0.02"), max_volume=D("0.5")
    )
    reopen(path).set_limits("paper", limits)
    again = reopen(path)
    assert again.limits("paper") == (limits, False)
    assert again.limits("other") == (RiskLimits(), True)
    # In force: 0.5 % of 10,000 = 50 USD over 200 USD a lot = 0.25 lots.
    assert again.evaluate(signal(), account(), Quotes(), EURUSD).volume == D("0.25")


def test_a_stored_limits_row_missing_a_newer_field_takes_its_default(tmp_path: Path) -> None:
    path = tmp_path / "risk.sqlite3"
    store = RiskStore(path)
    row = '{"risk_per_trade_bps": "75"}'
    store._db.execute("INSERT INTO limits (account_id, fields) VALUES ('paper', ?)", (row,))
    assert store.limits()["paper"] == RiskLimits(risk_per_trade_bps=75)


def test_cursors_start_unset_move_forward_only_and_survive(tmp_path: Path) -> None:
    path = tmp_path / "risk.sqlite3"
    store = RiskStore(path)
    name = cursor_name("paper", ["GBPUSD", "EURUSD"])
    assert name == cursor_name("paper", ("EURUSD", "GBPUSD"))
    assert store.cursor(name) is None
    store.save_cursor(name, 99)
    store.save_cursor(name, 42)  # a late writer cannot rewind it
    store.close()
    assert RiskStore(path).cursor(name) == 99
    with pytest.raises(ValueError, match="never negative"):
        store.save_cursor(name, -1)


def test_a_dry_run_changes_nothing(tmp_path: Path) -> None:
    drift = DriftMonitor(window=10, min_samples=1)
    risk = DurableRiskEngine(RiskStore(tmp_path / "risk.sqlite3"), drift=drift)
    decision = risk.dry_run(signal(), account("9400"), Quotes(), EURUSD)
    assert not decision.approved
    assert decision.verdict("kill_switch").passed is False  # what trading now would meet
    assert not risk.kill_switch("paper").engaged
    assert risk.store.kill_switches() == {}
    assert drift.status("m", "1").samples == 0


def test_holds_teach_the_drift_monitor_once_per_signal(tmp_path: Path) -> None:
    drift = DriftMonitor(window=10, min_samples=1)
    risk = DurableRiskEngine(RiskStore(tmp_path / "risk.sqlite3"), drift=drift)
    hold = signal("h-1", action=Action.HOLD, probability_up=0.52)
    risk.observe(hold)
    risk.observe(hold)
    risk.observe(signal("h-2", action=Action.HOLD, probability_up=float("nan")))
    risk.observe(signal("h-3", action=Action.HOLD, model_name=""))
    assert drift.status("m", "1").samples == 1

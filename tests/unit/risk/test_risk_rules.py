"""Risk limits and each rule on its own: verdicts, reasons, exact measured values."""

from __future__ import annotations

from decimal import Decimal

import pytest

from quantmesh.runtime.errors import InvalidArgument
from quantmesh.services.risk.rules import (
    DriftMonitor,
    KillSwitch,
    RiskLimits,
    check_band,
    check_daily_loss,
    check_kill_switch,
    check_open_positions,
    check_reward_risk,
    confidence_scale,
    regime_scale,
)

D = Decimal
LIMITS = RiskLimits()


def test_default_limits_are_the_issues_two_five_five_and_two_to_one() -> None:
    assert LIMITS.risk_per_trade_bps == 200
    assert LIMITS.risk_fraction == D("0.02")
    assert LIMITS.max_daily_loss_bps == 500
    assert LIMITS.max_open_positions == 5
    assert (LIMITS.min_volume, LIMITS.max_volume) == (D("0.01"), D("1.0"))
    assert LIMITS.min_reward_risk == D(2)


@pytest.mark.parametrize(
    "changes",
    [
        {"risk_per_trade_bps": 0},
        {"max_daily_loss_bps": 10_001},
        {"max_open_positions": 0},
        {"min_volume": D(0)},
        {"min_volume": D(2), "max_volume": D(1)},
        {"min_reward_risk": D(101)},
        {"min_confidence": D("0.5"), "full_size_confidence": D("0.4")},
        {"min_confidence_scale": D(0)},
        {"volatility_taper_from": D("0.005")},
        {"atr_rel_min": D("0.01")},
    ],
)
def test_limits_out_of_range_are_invalid_arguments(changes: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument, match="invalid risk limits"):
        RiskLimits(**changes)  # type: ignore[arg-type]


def test_limits_refuse_floats_for_money_and_bools_for_counts() -> None:
    with pytest.raises(InvalidArgument, match="min_volume must be a finite Decimal"):
        RiskLimits(min_volume=0.01)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="max_open_positions"):
        RiskLimits(max_open_positions=True)


def test_kill_switch_released_passes() -> None:
    verdict = check_kill_switch(KillSwitch("a"), opening=True)
    assert verdict.passed
    assert (verdict.measured, verdict.limit, verdict.unit) == ("false", "false", "bool")


def test_kill_switch_engaged_fails_an_opening_signal_and_names_who_and_why() -> None:
    switch = KillSwitch("a", True, "news at 14:30", "ops@desk", 1)
    verdict = check_kill_switch(switch, opening=True)
    assert not verdict.passed
    assert verdict.reason == "kill switch engaged by ops@desk: news at 14:30"


def test_kill_switch_engaged_lets_a_closing_signal_pass() -> None:
    verdict = check_kill_switch(KillSwitch("a", True, "why", "ops", 1), opening=False)
    assert verdict.passed
    assert "closing is allowed" in verdict.reason


def test_reward_risk_of_exactly_two_passes() -> None:
    verdict = check_reward_risk(150, 300, LIMITS)
    assert verdict.passed
    assert (verdict.measured, verdict.limit, verdict.unit) == ("2", "2", "ratio")


def test_reward_risk_below_two_fails_with_the_ratio_rounded_down() -> None:
    verdict = check_reward_risk(300, 599, LIMITS)  # 1.99666…
    assert not verdict.passed
    assert verdict.measured == "1.9966"
    assert verdict.reason == "reward:risk 1.9966 (target 599 / stop 300 points) < 2"


def test_reward_risk_without_take_profit_fails_unless_the_rule_is_disabled() -> None:
    assert not check_reward_risk(150, None, LIMITS).passed
    disabled = check_reward_risk(150, None, RiskLimits(min_reward_risk=D(0)))
    assert disabled.passed
    assert disabled.reason.startswith("not checked")


def test_daily_loss_below_five_percent_passes() -> None:
    verdict = check_daily_loss(D("9501"), D(10_000), "USD", LIMITS)
    assert verdict.passed
    assert (verdict.measured, verdict.limit, verdict.unit) == ("499", "500", "bps")


def test_daily_loss_reaching_five_percent_fails() -> None:
    verdict = check_daily_loss(D(9500), D(10_000), "USD", LIMITS)
    assert not verdict.passed
    assert verdict.reason == (
        "daily loss 500 USD = 500 bps of start-of-day equity 10000 USD >= 500 bps"
    )


def test_daily_gain_counts_as_no_loss() -> None:
    verdict = check_daily_loss(D(10_700), D(10_000), "USD", LIMITS)
    assert verdict.passed
    assert verdict.measured == "0"


def test_daily_loss_from_a_non_positive_start_fails() -> None:
    assert not check_daily_loss(D(5), D(0), "USD", LIMITS).passed


def test_open_positions_below_the_limit_pass_and_at_the_limit_fail() -> None:
    assert check_open_positions(4, LIMITS).passed
    verdict = check_open_positions(5, LIMITS)
    assert not verdict.passed
    assert (verdict.measured, verdict.limit, verdict.unit) == ("5", "5", "count")


def test_band_inside_passes_and_outside_fails_naming_the_edge() -> None:
    low, high = D("0.0002"), D("0.004")
    assert check_band("volatility", "volatility_20", D("0.001"), low, high, "log-return").passed
    above = check_band("volatility", "volatility_20", D("0.005"), low, high, "log-return")
    assert not above.passed
    assert (above.measured, above.limit) == ("0.005", "0.004")
    below = check_band("volatility", "volatility_20", D("0.0001"), low, high, "log-return")
    assert not below.passed
    assert below.limit == "0.0002"


def test_band_without_the_feature_passes_saying_it_was_not_checked() -> None:
    verdict = check_band("atr", "atr_14_rel", None, D(0), D(1), "ratio")
    assert verdict.passed
    assert verdict.reason == "not checked: the signal carries no atr_14_rel"


@pytest.mark.parametrize(
    ("confidence", "scale"),
    [
        ("0.1", "0.5"),  # at min_confidence: the floor, half the budget
        ("0.2", "0.75"),  # 0.5 + 0.5 × (0.2 − 0.1) / (0.3 − 0.1)
        ("0.25", "0.875"),  # 0.5 + 0.5 × 0.15 / 0.2
        ("0.3", "1"),  # full size from 0.3
        ("0.9", "1"),
    ],
)
def test_confidence_scales_the_budget_linearly_from_half_to_full(
    confidence: str, scale: str
) -> None:
    got, verdict = confidence_scale(D(confidence), LIMITS)
    assert got == D(scale)
    assert verdict.passed
    assert f"size ×{scale}" in verdict.reason


def test_confidence_scale_is_rounded_down() -> None:
    got, _ = confidence_scale(D("0.15"), RiskLimits(full_size_confidence=D("0.4")))
    assert got == D("0.5833")  # 0.5 + 0.5 × 0.05 / 0.3 = 0.58333…


def test_confidence_below_the_minimum_rejects() -> None:
    got, verdict = confidence_scale(D("0.05"), LIMITS)
    assert got == 0
    assert not verdict.passed
    assert verdict.reason == "confidence 0.05 < 0.1: too unsure to trade"


@pytest.mark.parametrize(
    ("volatility", "scale"),
    [
        ("0.0008", "1"),
        ("0.0015", "1"),  # the taper starts here
        ("0.00275", "0.75"),  # 1 − 0.5 × (0.00275 − 0.0015) / (0.004 − 0.0015)
        ("0.004", "0.5"),  # the band's edge: the floor
        ("0.009", "0.5"),  # beyond it the volatility rule blocks; the scale stays at the floor
    ],
)
def test_regime_scales_the_budget_down_as_volatility_rises(volatility: str, scale: str) -> None:
    got, verdict = regime_scale(D(volatility), LIMITS)
    assert got == D(scale)
    assert verdict.passed
    assert (verdict.measured, verdict.limit, verdict.unit) == (volatility, "0.0015", "log-return")


def test_regime_without_volatility_keeps_full_size_and_says_it_was_not_checked() -> None:
    got, verdict = regime_scale(None, LIMITS)
    assert got == 1
    assert verdict.passed
    assert verdict.reason.startswith("not checked")


def feed(monitor: DriftMonitor, p_ups: list[str], model: str = "m", first_id: int = 0) -> None:
    for i, p in enumerate(p_ups):
        monitor.observe(model, "1", f"s{first_id + i}", D(p))


def test_drift_is_not_judged_before_min_samples() -> None:
    monitor = DriftMonitor(window=10, min_samples=5)
    feed(monitor, ["0.9"] * 4)
    verdict = monitor.check("m", "1")
    assert verdict.passed
    assert verdict.reason == "not checked: 4 of 5 predictions of m@1 seen so far"


def test_drift_when_mean_p_up_leaves_the_band() -> None:
    monitor = DriftMonitor(window=10, min_samples=5)
    feed(monitor, ["0.8", "0.4", "0.8", "0.8", "0.8"])  # mean 0.72, 80 % up
    verdict = monitor.check("m", "1")
    assert not verdict.passed
    assert (verdict.measured, verdict.limit, verdict.unit) == ("0.72", "0.65", "probability")


def test_drift_when_more_than_ninety_percent_point_one_way() -> None:
    monitor = DriftMonitor(window=10, min_samples=10)
    feed(monitor, ["0.55"] * 10)  # mean 0.55 is fine, but 100 % point up
    verdict = monitor.check("m", "1")
    assert not verdict.passed
    assert (verdict.measured, verdict.limit, verdict.unit) == ("1", "0.9", "ratio")
    assert "point up" in verdict.reason


def test_no_drift_when_predictions_are_balanced() -> None:
    monitor = DriftMonitor(window=10, min_samples=10)
    feed(monitor, ["0.6", "0.45"] * 5)
    verdict = monitor.check("m", "1")
    assert verdict.passed
    assert verdict.reason.startswith("no drift: mean p_up 0.525")


def test_drift_window_rolls_so_a_recovered_model_trades_again() -> None:
    monitor = DriftMonitor(window=10, min_samples=10)
    feed(monitor, ["0.9"] * 10)
    assert not monitor.check("m", "1").passed
    feed(monitor, ["0.6", "0.4"] * 5, first_id=100)  # pushes all ten 0.9s out
    assert monitor.check("m", "1").passed
    assert monitor.status("m", "1").mean_p_up == D("0.5")


def test_drift_counts_one_signal_once_even_when_evaluated_for_many_accounts() -> None:
    monitor = DriftMonitor(window=10, min_samples=2)
    for _ in range(3):
        monitor.observe("m", "1", "same-signal", D("0.9"))
    assert monitor.status("m", "1").samples == 1


def test_drift_is_tracked_per_model_name_and_version() -> None:
    monitor = DriftMonitor(window=10, min_samples=5)
    feed(monitor, ["0.9"] * 5)
    assert not monitor.check("m", "1").passed
    assert monitor.status("m", "2").samples == 0
    assert monitor.check("m", "2").passed


def test_drift_monitor_refuses_an_impossible_configuration() -> None:
    with pytest.raises(InvalidArgument):
        DriftMonitor(window=10, min_samples=20)
    with pytest.raises(InvalidArgument):
        DriftMonitor(mean_low=D("0.7"), mean_high=D("0.6"))

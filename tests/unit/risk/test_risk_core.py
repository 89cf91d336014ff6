"""The risk engine end to end: every rule's verdict, sizing, the kill switch, bad input."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from quantmesh.runtime.errors import FailedPrecondition, InvalidArgument
from quantmesh.services.decision.policy import Action
from quantmesh.services.marketdata.sources import EURGBP, EURUSD, USDJPY
from quantmesh.services.risk.core import AccountState, RiskDecision, RiskEngine, SignalView
from quantmesh.services.risk.rules import RULES, DriftMonitor, RiskLimits
from quantmesh.services.risk.sizing import Quote, Quotes

D = Decimal
T0 = 1_500_000_000_000
CALM = {"volatility_20": 0.0008, "atr_14_rel": 0.0012}
QUOTES = Quotes(
    [
        Quote.from_points("USDJPY", "USD", "JPY", 149_995, 150_005, 3),
        Quote.from_points("GBPUSD", "GBP", "USD", 124_995, 125_005, 5),
    ]
)


def signal(**changes: object) -> SignalView:
    """A confident EURUSD buy at 1.08000: stop 20 pips below, target 40 pips above."""
    base = SignalView(
        signal_id="sig-1",
        symbol="EURUSD",
        action=Action.BUY,
        confidence=0.4,
        digits=5,
        reference_points=108_000,
        stop_loss_points=107_800,
        take_profit_points=108_400,
        model_name="eurusd-h1-direction",
        model_version="3",
        probability_up=0.7,
        features=CALM,
        reason="p_up 0.700 >= 0.550",
        time_msc=T0,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def account(**changes: object) -> AccountState:
    """A USD account with 10,000 of equity, flat on the day, nothing open."""
    base = AccountState("acc-1", "USD", D(10_000), D(10_000), D(10_000))
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def evaluate(engine: RiskEngine | None = None, /, **changes: object) -> RiskDecision:
    return (engine or RiskEngine()).evaluate(signal(**changes), account(), QUOTES, EURUSD)


def test_confident_eurusd_buy_is_approved_for_one_lot_with_every_rules_verdict_in_order() -> None:
    """2 % of 10,000 USD = 200 USD over 200 points × 1 USD/point/lot = 1.00 lot."""
    decision = evaluate()
    assert decision.approved
    assert tuple(verdict.rule for verdict in decision.verdicts) == RULES
    assert all(verdict.passed and verdict.reason for verdict in decision.verdicts)
    assert decision.volume == D("1.00")
    assert decision.risk_amount == D(200)
    assert decision.currency == "USD"
    assert decision.reason == "approved: BUY 1.00 lots EURUSD, risk 200 USD"
    assert (decision.signal_id, decision.account_id, decision.time_msc) == ("sig-1", "acc-1", T0)


def test_usdjpy_sell_is_sized_through_the_yen_to_dollar_rate() -> None:
    """USDJPY sell at 150.000, stop 40 pips above: 200 USD / (400 × 100/150 USD) = 0.75 lot."""
    view = signal(
        symbol="USDJPY",
        action=Action.SELL,
        digits=3,
        reference_points=150_000,
        stop_loss_points=150_400,
        take_profit_points=149_200,
    )
    decision = RiskEngine().evaluate(view, account(), QUOTES, USDJPY)
    assert decision.approved
    assert decision.volume == D("0.75")
    assert decision.risk_amount == D(200)
    assert "rate JPY→USD 1 / USDJPY 150.000" in decision.verdict("risk_per_trade").reason


def test_eurgbp_buy_in_a_usd_account_is_sized_through_gbpusd() -> None:
    """EURGBP stop 250 points × 1 GBP × 1.25 = 312.50 USD a lot: 200 / 312.5 = 0.64 lot."""
    view = signal(
        symbol="EURGBP", reference_points=85_000, stop_loss_points=84_750, take_profit_points=85_500
    )
    decision = RiskEngine().evaluate(view, account(), QUOTES, EURGBP)
    assert decision.volume == D("0.64")
    assert decision.risk_amount == D(200)


def test_missing_conversion_is_a_failed_precondition() -> None:
    view = signal(
        symbol="EURGBP", reference_points=85_000, stop_loss_points=84_750, take_profit_points=85_500
    )
    with pytest.raises(FailedPrecondition, match="no conversion from GBP to USD"):
        RiskEngine().evaluate(view, account(), Quotes(), EURGBP)


def test_low_confidence_scales_the_budget_down() -> None:
    """Confidence 0.2: ×0.75 → budget 150 USD over 200 USD a lot = 0.75 lot."""
    decision = evaluate(confidence=0.2)
    assert decision.approved
    assert decision.volume == D("0.75")
    assert decision.risk_amount == D(150)


def test_high_volatility_scales_the_budget_down() -> None:
    """volatility_20 0.00275: ×0.75 → 150 USD → 0.75 lot."""
    decision = evaluate(features={"volatility_20": 0.00275, "atr_14_rel": 0.002})
    assert decision.volume == D("0.75")


def test_confidence_and_regime_scales_multiply_and_round_down() -> None:
    """×0.75 × ×0.75 = ×0.5625 → budget 112.50 USD → 0.5625 lot → 0.56 lot, risk 112 USD."""
    decision = evaluate(confidence=0.2, features={"volatility_20": 0.00275, "atr_14_rel": 0.002})
    assert decision.volume == D("0.56")
    assert decision.risk_amount == D(112)
    assert "×0.5625 = 112.5 USD" in decision.verdict("risk_per_trade").reason


def test_confidence_below_the_minimum_rejects_without_sizing() -> None:
    decision = evaluate(confidence=0.05)
    assert not decision.approved
    assert decision.volume == 0
    assert decision.reason == "rejected: confidence 0.05/0.1"
    assert decision.verdict("volume_bounds").reason.startswith("skipped")


@pytest.mark.parametrize(
    ("features", "rule"),
    [
        ({"volatility_20": 0.006, "atr_14_rel": 0.001}, "volatility"),
        ({"volatility_20": 0.0001, "atr_14_rel": 0.001}, "volatility"),
        ({"volatility_20": 0.001, "atr_14_rel": 0.01}, "atr"),
    ],
)
def test_volatility_out_of_its_band_blocks_trading(features: dict[str, float], rule: str) -> None:
    decision = evaluate(features=features)
    assert not decision.approved
    assert [verdict.rule for verdict in decision.verdicts if not verdict.passed] == [rule]


def test_missing_or_nan_features_are_not_checked_and_do_not_block() -> None:
    decision = evaluate(features={"volatility_20": float("nan")})
    assert decision.approved
    for rule in ("volatility", "atr", "regime"):
        assert decision.verdict(rule).reason.startswith("not checked")


def test_drift_of_the_model_blocks_trading() -> None:
    engine = RiskEngine(drift=DriftMonitor(window=10, min_samples=10))
    for i in range(9):  # nine earlier predictions, all strongly up (seen as HOLDs)
        evaluate(engine, signal_id=f"old-{i}", action=Action.HOLD, probability_up=0.8)
    decision = evaluate(engine, probability_up=0.8)
    assert not decision.approved
    assert decision.verdict("drift").reason.startswith("drift: mean p_up 0.8")


def test_signal_without_probability_up_skips_the_drift_check() -> None:
    decision = evaluate(probability_up=None)
    assert decision.approved
    assert decision.verdict("drift").reason == "not checked: the signal carries no probability_up"


def test_reward_risk_below_two_to_one_rejects() -> None:
    decision = evaluate(take_profit_points=108_300)  # 300 / 200 = 1.5
    assert not decision.approved
    assert decision.reason == "rejected: min_reward_risk 1.5/2"


def test_fifth_open_position_is_the_last() -> None:
    engine = RiskEngine()
    assert engine.evaluate(signal(), account(open_positions=4), QUOTES, EURUSD).approved
    decision = engine.evaluate(signal(), account(open_positions=5), QUOTES, EURUSD)
    assert not decision.approved
    assert decision.reason == "rejected: max_open_positions 5/5"


def test_size_below_the_minimum_volume_rejects_rather_than_risking_more() -> None:
    """Equity 100 USD: 2 USD / 200 USD a lot = 0.01 lot, allowed; 90 USD: 0.009 lot, rejected."""
    engine = RiskEngine()
    small = account(equity=D(100), balance=D(100), start_of_day_equity=D(100))
    assert engine.evaluate(signal(), small, QUOTES, EURUSD).volume == D("0.01")
    smaller = account(equity=D(90), balance=D(90), start_of_day_equity=D(90))
    decision = engine.evaluate(signal(), smaller, QUOTES, EURUSD)
    assert not decision.approved
    assert (decision.volume, decision.risk_amount) == (D(0), D(0))
    verdict = decision.verdict("volume_bounds")
    assert (verdict.measured, verdict.limit, verdict.unit) == ("0.00", "0.01", "lots")
    assert "0.01 lots would risk 2 USD, over the budget 1.8 USD" in verdict.reason


def test_size_above_the_maximum_is_capped_and_the_decision_says_so() -> None:
    rich = account(equity=D(100_000), balance=D(100_000), start_of_day_equity=D(100_000))
    decision = RiskEngine().evaluate(signal(), rich, QUOTES, EURUSD)
    assert decision.approved
    assert decision.volume == D("1.00")
    assert decision.reason.endswith("(capped at 1.00 lots)")
    assert "capped at the maximum" in decision.verdict("volume_bounds").reason


def test_per_account_limits_override_the_defaults() -> None:
    engine = RiskEngine({"acc-1": RiskLimits(risk_per_trade_bps=100)})
    assert engine.evaluate(signal(), account(), QUOTES, EURUSD).volume == D("0.50")
    assert not engine.uses_default_limits("acc-1")
    assert engine.uses_default_limits("acc-2")
    engine.set_limits("acc-1", RiskLimits(risk_per_trade_bps=50))
    assert engine.evaluate(signal(), account(), QUOTES, EURUSD).volume == D("0.25")


def test_buy_without_stop_loss_is_rejected_with_a_verdict_not_an_error() -> None:
    decision = evaluate(stop_loss_points=None)
    assert not decision.approved
    assert decision.volume == 0
    failed = [verdict.rule for verdict in decision.verdicts if not verdict.passed]
    assert failed == ["signal_shape"]
    assert decision.verdict("risk_per_trade").reason == "skipped: no stop loss"


def test_buy_without_take_profit_is_rejected_by_reward_risk() -> None:
    decision = evaluate(take_profit_points=None)
    assert not decision.approved
    assert "no take profit" in decision.verdict("min_reward_risk").reason


@pytest.mark.parametrize(
    ("action", "stop", "take", "message"),
    [
        (Action.BUY, 108_100, 108_400, "stop loss 108100 must be below"),
        (Action.BUY, 108_000, 108_400, "stop loss 108000 must be below"),
        (Action.BUY, 107_800, 107_900, "take profit 107900 must be above"),
        (Action.SELL, 107_800, 107_600, "stop loss 107800 must be above"),
        (Action.SELL, 108_200, 108_100, "take profit 108100 must be below"),
    ],
)
def test_stop_or_target_on_the_wrong_side_is_an_invalid_argument(
    action: Action, stop: int, take: int, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        evaluate(action=action, stop_loss_points=stop, take_profit_points=take)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"action": 0}, "action 0 is not BUY, SELL, CLOSE or HOLD"),
        ({"digits": 4}, "prices have 4 digits, EURUSD has 5"),
        ({"symbol": "GBPUSD"}, "evaluated against symbol EURUSD"),
        ({"confidence": 1.5}, "confidence must be in"),
        ({"confidence": float("nan")}, "confidence must be in"),
        ({"reference_points": None}, "reference price is required"),
    ],
)
def test_malformed_signals_are_invalid_arguments(changes: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        evaluate(**changes)


def test_hold_is_rejected_with_nothing_to_do() -> None:
    decision = evaluate(action=Action.HOLD, stop_loss_points=None, take_profit_points=None)
    assert not decision.approved
    assert decision.reason == "rejected: signal_shape (HOLD: nothing to do)"
    assert tuple(verdict.rule for verdict in decision.verdicts) == RULES


def test_close_is_approved_with_the_open_volume_and_no_risk() -> None:
    state = account(open_volumes={"EURUSD": D("0.30")}, open_positions=5)
    view = signal(action=Action.CLOSE, stop_loss_points=None, take_profit_points=None)
    decision = RiskEngine().evaluate(view, state, QUOTES, EURUSD)
    assert decision.approved
    assert (decision.volume, decision.risk_amount) == (D("0.30"), D(0))
    assert decision.reason == "approved: CLOSE EURUSD"


def test_kill_switch_rejects_opening_signals_but_never_a_close() -> None:
    engine = RiskEngine()
    engine.set_kill_switch(
        "acc-1", engaged=True, reason="NFP release", changed_by="ops@desk", time_ms=T0
    )
    decision = evaluate(engine)
    assert not decision.approved
    assert decision.reason == "rejected: kill_switch (kill switch engaged by ops@desk: NFP release)"
    close = evaluate(engine, action=Action.CLOSE, stop_loss_points=None, take_profit_points=None)
    assert close.approved


def test_released_kill_switch_lets_trading_resume() -> None:
    engine = RiskEngine()
    engine.set_kill_switch("acc-1", engaged=True, reason="why", changed_by="ops", time_ms=T0)
    engine.set_kill_switch("acc-1", engaged=False, reason="", changed_by="ops", time_ms=T0 + 1)
    assert evaluate(engine).approved
    assert engine.kill_switch("acc-1").changed_time_ms == T0 + 1


def test_global_kill_switch_stops_every_account_and_reads_engaged_on_each() -> None:
    engine = RiskEngine()
    engine.set_kill_switch("", engaged=True, reason="broker outage", changed_by="ops", time_ms=T0)
    assert not evaluate(engine).approved
    switch = engine.kill_switch("acc-2")
    assert switch.engaged
    assert (switch.account_id, switch.reason) == ("acc-2", "global kill switch: broker outage")


def test_engaging_the_kill_switch_needs_a_reason_of_at_most_500_characters() -> None:
    engine = RiskEngine()
    with pytest.raises(InvalidArgument, match="reason is required"):
        engine.set_kill_switch("acc-1", engaged=True, reason=" ", changed_by="ops", time_ms=T0)
    with pytest.raises(InvalidArgument, match="longer than 500"):
        engine.set_kill_switch(
            "acc-1", engaged=True, reason="x" * 501, changed_by="ops", time_ms=T0
        )


def test_daily_loss_limit_engages_the_kill_switch_until_an_operator_releases_it() -> None:
    engine = RiskEngine()
    losing = account(equity=D(9_500))  # −500 USD = 500 bps of 10,000
    decision = engine.evaluate(signal(), losing, QUOTES, EURUSD)
    assert not decision.approved
    failed = [verdict.rule for verdict in decision.verdicts if not verdict.passed]
    assert failed == ["kill_switch", "max_daily_loss"]
    switch = engine.kill_switch("acc-1")
    assert switch.engaged
    assert (switch.changed_by, switch.changed_time_ms) == ("risk/max_daily_loss", T0)
    # The next UTC day starts flat, yet the switch holds until someone looks.
    next_day = engine.evaluate(signal(time_msc=T0 + 86_400_000), account(), QUOTES, EURUSD)
    assert not next_day.approved
    engine.set_kill_switch("acc-1", engaged=False, reason="reviewed", changed_by="ops", time_ms=T0)
    assert engine.evaluate(signal(), account(), QUOTES, EURUSD).approved


def test_close_is_allowed_after_the_daily_loss_limit() -> None:
    view = signal(action=Action.CLOSE, stop_loss_points=None, take_profit_points=None)
    decision = RiskEngine().evaluate(view, account(equity=D(9_000)), QUOTES, EURUSD)
    assert decision.approved
    assert decision.verdict("max_daily_loss").reason.endswith("closing is allowed")


def test_account_state_refuses_floats_for_money() -> None:
    with pytest.raises(InvalidArgument, match="Decimals"):
        account(equity=10_000.0)


def test_the_same_inputs_give_the_same_decision() -> None:
    assert evaluate() == evaluate()


def test_daily_loss_summary_names_the_rule_with_measured_and_limit_in_bps() -> None:
    decision = RiskEngine().evaluate(signal(), account(equity=D(9_480)), QUOTES, EURUSD)
    assert decision.reason.startswith("rejected: kill_switch (kill switch engaged by risk/")
    assert decision.reason.endswith("; max_daily_loss 520/500 bps")


def test_an_unfunded_account_is_rejected_without_engaging_the_kill_switch() -> None:
    engine = RiskEngine()
    empty = account(equity=D(0), balance=D(0), start_of_day_equity=D(0))
    decision = engine.evaluate(signal(), empty, QUOTES, EURUSD)
    assert not decision.approved
    assert not engine.kill_switch("acc-1").engaged

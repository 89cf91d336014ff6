"""Risk's wire conversions: signals in, account state in, decisions and limits out."""

from __future__ import annotations

from decimal import Decimal

import pytest

from quantmesh.common.v1 import common_pb2
from quantmesh.decision.v1 import decision_pb2
from quantmesh.execution.v1 import execution_pb2
from quantmesh.risk.v1 import risk_pb2
from quantmesh.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from quantmesh.services.decision.policy import Action
from quantmesh.services.marketdata.sources import EURGBP, EURUSD, USDJPY
from quantmesh.services.risk import convert
from quantmesh.services.risk.config import KNOWN_SYMBOLS
from quantmesh.services.risk.core import RiskEngine
from quantmesh.services.risk.rules import RULES, RiskLimits

D = Decimal
T0 = 1_500_000_000_000


def price(points: int, digits: int = 5) -> common_pb2.Price:
    return common_pb2.Price(points=points, digits=digits)


def usd(amount: str) -> common_pb2.Money:
    value = D(amount)
    units = int(value)
    return common_pb2.Money(currency="USD", units=units, nanos=int((value - units) * 10**9))


def lots(amount: str) -> common_pb2.Lots:
    value = D(amount)
    units = int(value)
    return common_pb2.Lots(units=units, nanos=int((value - units) * 10**9))


def a_signal(**changes: object) -> decision_pb2.Signal:
    """A confident EURUSD buy at 1.08000: stop 20 pips below, target 40 pips above."""
    fields: dict[str, object] = {
        "signal_id": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        "symbol": "EURUSD",
        "action": decision_pb2.ACTION_BUY,
        "confidence": 0.4,
        "reference_price": price(108_000),
        "stop_loss": price(107_800),
        "take_profit": price(108_400),
        "model_name": "eurusd-h1-direction",
        "model_version": "3",
        "feature_names": ["volatility_20", "atr_14_rel"],
        "feature_values": [0.0008, 0.0012],
        "output_names": ["probability_up"],
        "output_values": [0.7],
        "time_msc": T0,
    }
    fields.update(changes)
    return decision_pb2.Signal(**fields)  # type: ignore[arg-type]


def an_account(**changes: object) -> execution_pb2.Account:
    fields: dict[str, object] = {
        "account_id": "paper",
        "broker": "paper",
        "currency": "USD",
        "balance": usd("10000"),
        "equity": usd("9876.54"),
        "realized_pnl_today": usd("-12.5"),
        "start_of_day_equity": usd("10000"),
        "open_positions": 1,
    }
    fields.update(changes)
    return execution_pb2.Account(**fields)  # type: ignore[arg-type]


def a_position(
    position_id: str, symbol: str, side: int, volume: str, current: int, digits: int = 5
) -> execution_pb2.Position:
    return execution_pb2.Position(
        position_id=position_id,
        account_id="paper",
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        volume=lots(volume),
        current_price=price(current, digits),
        open_time_ms=T0 - 1,
    )


def test_signal_view_carries_prices_model_outputs_and_features() -> None:
    view = convert.signal_view_from_proto(a_signal(), EURUSD)
    assert (view.action, view.digits, view.time_msc) == (Action.BUY, 5, T0)
    assert (view.reference_points, view.stop_loss_points, view.take_profit_points) == (
        108_000,
        107_800,
        108_400,
    )
    assert view.probability_up == 0.7
    assert view.feature("volatility_20") == D("0.0008")
    assert (view.model_name, view.model_version) == ("eurusd-h1-direction", "3")


def test_close_without_prices_is_read_in_the_symbols_digits() -> None:
    signal = a_signal(action=decision_pb2.ACTION_CLOSE)
    for level in ("reference_price", "stop_loss", "take_profit"):
        signal.ClearField(level)  # type: ignore[arg-type]
    view = convert.signal_view_from_proto(signal, USDJPY)
    assert view.digits == 3
    assert view.reference_points is None


@pytest.mark.parametrize(
    ("changes", "message_part"),
    [
        ({"signal_id": ""}, "signal_id is required"),
        ({"signal_id": "has spaces in it"}, "signal_id"),
        ({"signal_id": "x" * 65}, "signal_id"),
        ({"stop_loss": price(10_780, 4)}, "signal.stop_loss has 4 digits"),
        ({"feature_values": [0.0008]}, "feature_names has 2 entries"),
        ({"output_values": []}, "output_names has 1 entries"),
    ],
    ids=["no-id", "id-with-spaces", "id-too-long", "mixed-digits", "features", "outputs"],
)
def test_malformed_signal_fields_are_invalid_argument_naming_the_field(
    changes: dict[str, object], message_part: str
) -> None:
    with pytest.raises(InvalidArgument, match=message_part):
        convert.signal_view_from_proto(a_signal(**changes), EURUSD)


def test_symbol_lookup_separates_missing_from_unknown() -> None:
    with pytest.raises(InvalidArgument, match="symbol is required"):
        convert.symbol_spec("", KNOWN_SYMBOLS)
    with pytest.raises(NotFound, match="unknown symbol 'XAUUSD'"):
        convert.symbol_spec("XAUUSD", KNOWN_SYMBOLS)
    assert convert.symbol_spec("USDJPY", KNOWN_SYMBOLS) is USDJPY


def test_actionable_signals_are_buy_sell_and_close() -> None:
    actions = [decision_pb2.ACTION_BUY, decision_pb2.ACTION_SELL, decision_pb2.ACTION_CLOSE]
    assert all(convert.is_actionable(a_signal(action=action)) for action in actions)
    assert not convert.is_actionable(a_signal(action=decision_pb2.ACTION_HOLD))


def test_account_state_is_exact_and_adds_up_open_volumes_per_symbol() -> None:
    positions = [
        a_position("P1", "EURUSD", common_pb2.SIDE_BUY, "0.10", 108_010),
        a_position("P2", "EURUSD", common_pb2.SIDE_SELL, "0.05", 108_022),
        a_position("P3", "USDJPY", common_pb2.SIDE_BUY, "1.5", 150_000, 3),
    ]
    state = convert.account_state_from_proto(an_account(), positions)
    assert (state.equity, state.balance, state.start_of_day_equity) == (
        D("9876.54"),
        D(10_000),
        D(10_000),
    )
    assert state.realized_pnl_today == D("-12.5")
    # The listing shows three positions though the account said one: the stricter count wins.
    assert state.open_positions == 3
    assert state.open_volumes == {"EURUSD": D("0.15"), "USDJPY": D("1.5")}


def test_account_without_start_of_day_equity_fails_safe_on_the_daily_loss_rule() -> None:
    account = an_account()
    account.ClearField("start_of_day_equity")
    state = convert.account_state_from_proto(account, [])
    assert state.start_of_day_equity == 0
    view = convert.signal_view_from_proto(a_signal(), EURUSD)
    decision = RiskEngine().evaluate(view, state, convert.QuoteBook(KNOWN_SYMBOLS).quotes(), EURUSD)
    assert not decision.approved
    assert not decision.verdict("max_daily_loss").passed


def test_quote_book_prices_cross_conversions_from_signals_and_positions() -> None:
    book = convert.QuoteBook(KNOWN_SYMBOLS)
    book.observe(a_signal(symbol="GBPUSD", reference_price=price(125_000), time_msc=T0))
    # An older price of the same symbol does not replace a newer one.
    book.observe(a_signal(symbol="GBPUSD", reference_price=price(120_000), time_msc=T0 - 1))
    gbpusd = book.quotes().get("GBPUSD")
    assert gbpusd is not None
    assert gbpusd.mid == D("1.25")
    # EURGBP profit (GBP) converts into USD through GBPUSD.
    assert book.quotes().conversion("GBP", "USD").rate == D("1.25")
    # A long and a short of one symbol give both sides; open positions win over signals.
    positions = [
        a_position("P1", "GBPUSD", common_pb2.SIDE_BUY, "0.1", 126_000),
        a_position("P2", "GBPUSD", common_pb2.SIDE_SELL, "0.1", 126_010),
    ]
    quote = book.quotes(positions).get("GBPUSD")
    assert quote is not None
    assert (quote.bid, quote.ask) == (D("1.26"), D("1.2601"))


def test_without_a_conversion_quote_sizing_is_a_failed_precondition() -> None:
    signal = a_signal(
        symbol="EURGBP",
        reference_price=price(85_000),
        stop_loss=price(84_750),
        take_profit=price(85_500),
    )
    view = convert.signal_view_from_proto(signal, EURGBP)
    state = convert.account_state_from_proto(an_account(), [])
    with pytest.raises(FailedPrecondition, match="no conversion from GBP to USD"):
        RiskEngine().evaluate(view, state, convert.QuoteBook(KNOWN_SYMBOLS).quotes(), EURGBP)


def test_decision_to_proto_keeps_every_verdict_exact_amounts_and_the_trace() -> None:
    view = convert.signal_view_from_proto(a_signal(), EURUSD)
    state = convert.account_state_from_proto(an_account(equity=usd("10000")), [])
    decision = RiskEngine().evaluate(view, state, convert.QuoteBook(KNOWN_SYMBOLS).quotes(), EURUSD)
    trace = common_pb2.TraceContext(traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    message = convert.decision_to_proto(decision, trace)
    assert message.approved
    assert [v.rule for v in message.verdicts] == list(RULES)
    assert all(v.reason for v in message.verdicts)
    assert (message.volume.units, message.volume.nanos) == (1, 0)
    assert (message.risk_amount.currency, message.risk_amount.units) == ("USD", 200)
    assert message.trace.traceparent == trace.traceparent
    assert (message.signal_id, message.account_id, message.time_msc) == (
        view.signal_id,
        "paper",
        T0,
    )


def valid_limits(**changes: object) -> risk_pb2.RiskLimits:
    fields: dict[str, object] = {
        "risk_per_trade_bps": 100,
        "max_daily_loss_bps": 300,
        "max_open_positions": 3,
        "min_volume": lots("0.02"),
        "max_volume": lots("2.5"),
        "min_reward_risk": 1.5,
    }
    fields.update(changes)
    return risk_pb2.RiskLimits(**fields)  # type: ignore[arg-type]


def test_limits_from_proto_replaces_the_contract_fields_and_keeps_the_model_guards() -> None:
    current = RiskLimits(min_confidence=D("0.2"), full_size_confidence=D("0.5"))
    limits = convert.limits_from_proto(valid_limits(), current)
    assert (limits.risk_per_trade_bps, limits.max_daily_loss_bps, limits.max_open_positions) == (
        100,
        300,
        3,
    )
    assert (limits.min_volume, limits.max_volume, limits.min_reward_risk) == (
        D("0.02"),
        D("2.5"),
        D("1.5"),
    )
    assert (limits.min_confidence, limits.full_size_confidence) == (D("0.2"), D("0.5"))
    assert convert.limits_from_proto(convert.limits_to_proto(limits), current) == limits


@pytest.mark.parametrize(
    ("changes", "message_part"),
    [
        ({"risk_per_trade_bps": 0}, "risk_per_trade_bps must be 1..10000, got 0"),
        ({"risk_per_trade_bps": 10_001}, "risk_per_trade_bps must be 1..10000"),
        ({"max_daily_loss_bps": 0}, "max_daily_loss_bps must be 1..10000"),
        ({"max_open_positions": 0}, "max_open_positions must be at least 1"),
        ({"min_volume": None}, "min_volume is required"),
        ({"min_volume": lots("0")}, "min_volume must be greater than 0"),
        ({"max_volume": lots("0.01")}, "max_volume 0.01 must be at least min_volume 0.02"),
        ({"max_volume": common_pb2.Lots(units=-1)}, "max_volume must have units >= 0"),
        ({"min_reward_risk": -0.5}, "min_reward_risk must be 0..100"),
        ({"min_reward_risk": float("nan")}, "min_reward_risk must be 0..100"),
    ],
)
def test_invalid_limits_name_the_field(changes: dict[str, object], message_part: str) -> None:
    message = valid_limits(**{k: v for k, v in changes.items() if v is not None})
    for name, value in changes.items():
        if value is None:
            message.ClearField(name)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=message_part):
        convert.limits_from_proto(message, RiskLimits())


def test_every_problem_of_a_limits_request_is_reported_at_once() -> None:
    with pytest.raises(InvalidArgument) as raised:
        convert.limits_from_proto(risk_pb2.RiskLimits(), RiskLimits())
    text = str(raised.value)
    for name in ("risk_per_trade_bps", "max_daily_loss_bps", "max_open_positions", "min_volume"):
        assert name in text


def test_min_reward_risk_zero_disables_the_rule_and_is_valid() -> None:
    limits = convert.limits_from_proto(valid_limits(min_reward_risk=0.0), RiskLimits())
    assert limits.min_reward_risk == 0

"""Position sizing: hand-worked examples, currency conversion, rounding down, bounds.

Every example is worked by hand in its docstring; the test checks the code gets the same
exact decimals. Symbols are marketdata's: contract size 100,000, volume step 0.01.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from quantmesh.runtime.errors import FailedPrecondition, InvalidArgument
from quantmesh.services.marketdata.sources import EURGBP, EURUSD, USDJPY
from quantmesh.services.risk.sizing import (
    Quote,
    Quotes,
    Sizing,
    SymbolSpec,
    fmt,
    loss_at_stop,
    quantize_down,
    quantize_up,
    size_position,
    to_decimal,
    value_per_point_per_lot,
)

D = Decimal
USD_QUOTES = Quotes(
    [
        Quote.from_points("USDJPY", "USD", "JPY", 149_995, 150_005, 3),  # mid 150.000
        Quote.from_points("GBPUSD", "GBP", "USD", 124_995, 125_005, 5),  # mid 1.25000
    ]
)


def size(budget: str, stop_points: int, symbol: SymbolSpec) -> Sizing:
    """Size in a USD account with the default limits, 0.01 to 1.0 lot."""
    return size_position(
        budget=D(budget),
        stop_points=stop_points,
        symbol=symbol,
        conversion=USD_QUOTES.conversion(symbol.currency_profit, "USD"),
        min_volume=D("0.01"),
        max_volume=D("1.0"),
    )


def test_eurusd_two_percent_of_10000_with_20_pip_stop_is_one_lot() -> None:
    """EURUSD, USD account, equity 10,000 USD.

    budget = 2 % × 10,000 = 200 USD
    stop = 20 pips = 0.00200 = 200 points (5 digits, 1 point = 0.00001)
    value of a point = 100,000 × 0.00001 USD × 1 (USD is the account currency) = 1 USD/lot
    volume = 200 / (200 × 1) = 1.00 lot; loss at the stop = 1.00 × 200 × 1 = 200 USD
    """
    sizing = size("200", 200, EURUSD)
    assert sizing.value_per_point == D(1)
    assert sizing.volume == D("1.00")
    assert sizing.risk_amount == D(200)
    assert not sizing.capped
    assert sizing.conversion.path == "1 (USD is the account currency)"


def test_eurusd_size_is_rounded_down_to_the_step_never_up() -> None:
    """EURUSD, budget 200 USD, stop 30 pips = 300 points at 1 USD/point/lot.

    volume = 200 / 300 = 0.6666… → rounded down to 0.66 lot (0.67 would risk 201 USD)
    loss at the stop = 0.66 × 300 × 1 = 198 USD ≤ 200 USD
    """
    sizing = size("200", 300, EURUSD)
    assert sizing.volume == D("0.66")
    assert sizing.risk_amount == D(198)
    assert loss_at_stop(D("0.67"), 300, EURUSD, sizing.conversion) > D(200)


def test_usdjpy_converts_yen_to_dollars_at_one_over_usdjpy() -> None:
    """USDJPY (3 digits, 1 point = 0.001 JPY), USD account, USDJPY mid 150.000.

    rate JPY→USD = 1 / 150.000
    value of a point = 100,000 × 0.001 JPY = 100 JPY = 100 / 150 = 0.6666… USD/lot
    budget 200 USD, stop 40 pips = 0.400 JPY = 400 points
    loss per lot = 400 × 100 JPY = 40,000 JPY = 266.66… USD
    volume = 200 × 150 / 40,000 = 0.75 lot exactly; loss = 0.75 × 40,000 JPY = 30,000 JPY
    = 30,000 / 150 = 200 USD
    """
    sizing = size("200", 400, USDJPY)
    assert sizing.conversion.path == "1 / USDJPY 150.000"
    assert sizing.conversion.num == D(1)
    assert sizing.conversion.den == D("150.000")
    assert sizing.value_per_point.quantize(D("0.000001")) == D("0.666667")
    assert sizing.volume == D("0.75")
    assert sizing.risk_amount == D(200)


def test_eurgbp_in_a_usd_account_converts_pounds_at_gbpusd() -> None:
    """EURGBP (5 digits, profit in GBP), USD account, GBPUSD mid 1.25000.

    rate GBP→USD = GBPUSD = 1.25
    value of a point = 100,000 × 0.00001 GBP = 1 GBP = 1.25 USD/lot
    budget 200 USD, stop 25 pips = 250 points → loss per lot 250 × 1.25 = 312.50 USD
    volume = 200 / 312.5 = 0.64 lot exactly; loss = 0.64 × 312.5 = 200 USD
    """
    sizing = size("200", 250, EURGBP)
    assert sizing.conversion.path == "GBPUSD 1.25000"
    assert sizing.value_per_point == D("1.25")
    assert sizing.volume == D("0.64")
    assert sizing.risk_amount == D(200)


def test_eurgbp_converts_through_the_inverse_quote_usdgbp_too() -> None:
    """With only USDGBP at 0.80000: rate GBP→USD = 1 / 0.8 = 1.25, the same 0.64 lot."""
    quotes = Quotes([Quote.from_points("USDGBP", "USD", "GBP", 80_000, 80_000, 5)])
    conversion = quotes.conversion("GBP", "USD")
    assert conversion.path == "1 / USDGBP 0.80000"
    assert conversion.rate == D("1.25")
    sizing = size_position(
        budget=D(200),
        stop_points=250,
        symbol=EURGBP,
        conversion=conversion,
        min_volume=D("0.01"),
        max_volume=D(1),
    )
    assert sizing.volume == D("0.64")


def test_conversion_chains_quotes_when_no_single_quote_links_the_currencies() -> None:
    """GBP→JPY with GBPUSD 1.25 and USDJPY 150: 1 GBP = 1.25 USD = 187.5 JPY."""
    conversion = USD_QUOTES.conversion("GBP", "JPY")
    assert conversion.path == "GBPUSD 1.25000 × USDJPY 150.000"
    assert conversion.rate == D("187.5")


def test_conversion_into_the_same_currency_is_one() -> None:
    conversion = Quotes().conversion("USD", "USD")
    assert (conversion.num, conversion.den, conversion.rate) == (D(1), D(1), D(1))


def test_conversion_without_a_path_is_a_failed_precondition_naming_both_currencies() -> None:
    with pytest.raises(FailedPrecondition, match="no conversion from CHF to USD"):
        USD_QUOTES.conversion("CHF", "USD")


def test_size_below_the_minimum_volume_is_zero_not_the_minimum() -> None:
    """Equity 100 USD: budget 2 % = 2 USD; EURUSD stop 300 points at 1 USD/point/lot.

    volume = 2 / 300 = 0.00666… → 0.00, below the minimum 0.01 lot
    0.01 lot would lose 0.01 × 300 × 1 = 3 USD > 2 USD, so the size is 0 (rejected).
    """
    sizing = size("2", 300, EURUSD)
    assert sizing.below_min
    assert sizing.volume == 0
    assert sizing.risk_amount == 0
    assert sizing.min_volume_risk == D(3)


def test_size_above_the_maximum_volume_is_capped_and_says_so() -> None:
    """Equity 100,000 USD: budget 2,000 USD; EURUSD stop 200 points → 10 lots → capped at 1.00.

    loss at the stop with the capped volume = 1.00 × 200 × 1 = 200 USD.
    """
    sizing = size("2000", 200, EURUSD)
    assert sizing.capped
    assert sizing.volume == D("1.00")
    assert sizing.risk_amount == D(200)


def test_the_symbols_volume_bounds_apply_when_tighter_than_the_accounts() -> None:
    small = dataclasses.replace(EURUSD, volume_max=0.5, volume_min=0.1)
    assert size("2000", 200, small).volume == D("0.50")
    assert size("5", 200, small).below_min  # 0.025 lot < 0.1


def test_rounding_down_never_risks_more_than_the_budget_and_leaves_no_step_unused() -> None:
    quotes = USD_QUOTES
    for symbol in (EURUSD, USDJPY, EURGBP):
        conversion = quotes.conversion(symbol.currency_profit, "USD")
        for budget in ("37.13", "200", "333.33", "1234.5"):
            for stop in (7, 123, 250, 999, 4321):
                sizing = size_position(
                    budget=D(budget),
                    stop_points=stop,
                    symbol=symbol,
                    conversion=conversion,
                    min_volume=D("0.01"),
                    max_volume=D(100),
                )
                assert sizing.risk_amount <= D(budget)
                if not sizing.capped and not sizing.below_min:
                    one_more = loss_at_stop(sizing.volume + D("0.01"), stop, symbol, conversion)
                    assert one_more > D(budget)


def test_value_per_point_per_lot_is_contract_size_times_point_times_rate() -> None:
    conversion = USD_QUOTES.conversion("GBP", "USD")
    assert value_per_point_per_lot(EURGBP, conversion) == D(100_000) * D("0.00001") * D("1.25")


def test_a_stop_distance_of_zero_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="stop distance"):
        size("200", 0, EURUSD)


def test_quote_mid_is_exact_and_built_from_points() -> None:
    quote = Quote.from_points("EURUSD", "EUR", "USD", 108_123, 108_135, 5)
    assert (quote.bid, quote.ask, quote.mid) == (D("1.08123"), D("1.08135"), D("1.08129"))


@pytest.mark.parametrize(("bid", "ask"), [(D("1.1"), D("1.0")), (D(0), D(1))])
def test_quote_with_bid_above_ask_or_not_positive_is_invalid(bid: Decimal, ask: Decimal) -> None:
    with pytest.raises(InvalidArgument):
        Quote("EURUSD", "EUR", "USD", bid, ask)


def test_quote_refuses_floats() -> None:
    with pytest.raises(InvalidArgument, match="Decimal"):
        Quote("EURUSD", "EUR", "USD", 1.1, 1.2)  # type: ignore[arg-type]


def test_quantize_down_and_up_move_to_the_step() -> None:
    assert quantize_down(D("0.6699"), D("0.01")) == D("0.66")
    assert quantize_up(D("0.6601"), D("0.01")) == D("0.67")
    assert quantize_down(D("0.66"), D("0.01")) == D("0.66")


def test_to_decimal_reads_floats_as_written_and_fmt_prints_plain_decimals() -> None:
    assert to_decimal(0.1) == D("0.1")
    assert to_decimal(100_000.0) == D(100_000)
    assert fmt(D("1.2500")) == "1.25"
    assert fmt(D("1E+2")) == "100"
    assert fmt(D("0.00000")) == "0"
    with pytest.raises(InvalidArgument):
        to_decimal(float("nan"))

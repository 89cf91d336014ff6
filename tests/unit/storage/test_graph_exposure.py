"""Per-currency exposure, worked by hand: every expected number below is computed in the
comments from the positions, never by the code under test."""

from __future__ import annotations

from decimal import Decimal

import pytest

from quantmesh.common.v1 import common_pb2
from quantmesh.execution.v1 import execution_pb2
from quantmesh.runtime.errors import FailedPrecondition, InvalidArgument
from quantmesh.services.execution.convert import lots_to_proto
from quantmesh.services.marketdata.sources import EURGBP, EURUSD, GBPUSD, USDJPY
from quantmesh.services.risk.exposure import account_exposure, exposure_log_fields
from quantmesh.storage.graph import SymbolEdge, open_graph
from quantmesh.storage.graph.exposure import (
    CurrencyAmounts,
    OpenPosition,
    Side,
    aggregate_exposure,
    exposure_by_currency,
    quotes_from_prices,
)

D = Decimal
LOT = D(100_000)  # contract size of the four majors (marketdata.sources)
GRAPH = (
    SymbolEdge("EURUSD", "EUR", "USD"),
    SymbolEdge("GBPUSD", "GBP", "USD"),
    SymbolEdge("USDJPY", "USD", "JPY"),
    SymbolEdge("EURGBP", "EUR", "GBP"),
)
# The book of the example, at open prices:
#   long  1.00 EURUSD at 1.10000: EUR +1.00×100,000 = +100,000;   USD −100,000×1.1  = −110,000
#   short 0.50 USDJPY at 150.000: USD −0.50×100,000 =  −50,000;   JPY +50,000×150   = +7,500,000
#   long  0.20 GBPUSD at 1.25000: GBP +0.20×100,000 =  +20,000;   USD −20,000×1.25  =  −25,000
# (selling USDJPY sells dollars for yen: USD goes down, JPY up.)
BOOK = (
    OpenPosition("EURUSD", Side.BUY, D("1.00"), LOT, D("1.10000")),
    OpenPosition("USDJPY", Side.SELL, D("0.50"), LOT, D("150.000")),
    OpenPosition("GBPUSD", Side.BUY, D("0.20"), LOT, D("1.25000")),
)
AT_OPEN = {"EURUSD": D("1.10000"), "USDJPY": D("150.000"), "GBPUSD": D("1.25000")}


def test_legs_add_up_per_currency_gross_and_net() -> None:
    # USD: −110,000 − 50,000 − 25,000 = −185,000 net; 110,000 + 50,000 + 25,000 gross.
    assert exposure_by_currency(BOOK, GRAPH) == {
        "EUR": CurrencyAmounts(D(100_000), D(100_000)),
        "GBP": CurrencyAmounts(D(20_000), D(20_000)),
        "JPY": CurrencyAmounts(D(7_500_000), D(7_500_000)),
        "USD": CurrencyAmounts(D(185_000), D(-185_000)),
    }


def test_hedged_positions_cancel_in_net_but_not_in_gross() -> None:
    # long 0.30 USDJPY at 150.000 against the short 0.50: USD +30,000, JPY −4,500,000.
    #   JPY net  7,500,000 − 4,500,000 = 3,000,000; gross 7,500,000 + 4,500,000 = 12,000,000
    #   USD net −185,000 + 30,000 = −155,000;       gross 185,000 + 30,000 = 215,000
    hedge = OpenPosition("USDJPY", Side.BUY, D("0.30"), LOT, D("150.000"))
    amounts = exposure_by_currency([*BOOK, hedge], GRAPH)
    assert amounts["JPY"] == CurrencyAmounts(D(12_000_000), D(3_000_000))
    assert amounts["USD"] == CurrencyAmounts(D(215_000), D(-155_000))


def test_usd_account_at_open_prices_nets_to_zero() -> None:
    # Direct EURUSD 1.1: 100,000 × 1.1 = 110,000;  GBPUSD 1.25: 20,000 × 1.25 = 25,000;
    # inverse USDJPY: 7,500,000 / 150 = 50,000;    USD stays −185,000.
    # 110,000 + 25,000 + 50,000 − 185,000 = 0: at its own prices the book has no profit.
    # Gross: 110,000 + 25,000 + 50,000 + 185,000 = 370,000.
    report = aggregate_exposure(BOOK, GRAPH, quotes_from_prices(AT_OPEN, GRAPH), "USD")
    assert {e.currency: e.net_in_account for e in report.currencies} == {
        "EUR": D(110_000),
        "GBP": D(25_000),
        "JPY": D(50_000),
        "USD": D(-185_000),
    }
    assert report.net_total == 0
    assert report.gross_total == D(370_000)
    assert report["JPY"].rate.path == "1 / USDJPY 150.000"
    assert report["EUR"].rate.path == "EURUSD 1.10000"
    assert report["USD"].rate.path == "1 (USD is the account currency)"


def test_usd_account_after_a_move_nets_to_the_unrealized_profit() -> None:
    # EURUSD 1.10500: EUR 100,000 × 1.105 = 110,500
    # GBPUSD 1.24000: GBP  20,000 × 1.24  =  24,800
    # USDJPY 151.000: JPY 7,500,000 / 151 = 49,668.874172185430… → 49,668.874172185
    # Net: 110,500 + 24,800 + 49,668.874172185 − 185,000 = −31.125827815, which is the
    # profit the hard way: EURUSD +0.005 × 100,000 = +500; GBPUSD −0.01 × 20,000 = −200;
    # USDJPY short 50,000 × (150 − 151) = −50,000 JPY = −331.125827815 USD.
    moved = {"EURUSD": D("1.10500"), "USDJPY": D("151.000"), "GBPUSD": D("1.24000")}
    report = aggregate_exposure(BOOK, GRAPH, quotes_from_prices(moved, GRAPH), "USD")
    assert report["EUR"].net_in_account == D(110_500)
    assert report["GBP"].net_in_account == D(24_800)
    assert report["JPY"].net_in_account == D("49668.874172185")
    assert report.net_total == D("-31.125827815") == D(500) - D(200) - D("331.125827815")
    assert report.summary() == {
        "EUR": "110500",
        "GBP": "24800",
        "JPY": "49668.874172185",
        "USD": "-185000",
    }


def test_cross_conversion_follows_the_shortest_chain_of_the_graph() -> None:
    # JPY account, long 1.00 EURGBP at 0.88000: EUR +100,000; GBP −88,000.
    # No EURJPY or GBPJPY quote: EUR → GBP → USD → JPY = 0.88 × 1.25 × 150 = 165 JPY per EUR,
    # GBP → USD → JPY = 1.25 × 150 = 187.5 JPY per GBP.
    # EUR 100,000 × 165 = 16,500,000; GBP −88,000 × 187.5 = −16,500,000; net 0.
    prices = {"EURGBP": D("0.88000"), "GBPUSD": D("1.25000"), "USDJPY": D("150.000")}
    position = OpenPosition("EURGBP", Side.BUY, D("1.00"), LOT, D("0.88000"))
    report = aggregate_exposure([position], GRAPH, quotes_from_prices(prices, GRAPH), "JPY")
    assert report["EUR"].net_in_account == D(16_500_000)
    assert report["GBP"].net_in_account == D(-16_500_000)
    assert report["EUR"].rate.path == "EURGBP 0.88000 × GBPUSD 1.25000 × USDJPY 150.000"
    assert report.net_total == 0
    # With EURUSD quoted too, EUR takes the two-quote chain EUR → USD → JPY instead:
    # 1.1 × 150 = 165 as well, through fewer quotes.
    prices["EURUSD"] = D("1.10000")
    report = aggregate_exposure([position], GRAPH, quotes_from_prices(prices, GRAPH), "JPY")
    assert report["EUR"].rate.path == "EURUSD 1.10000 × USDJPY 150.000"


def test_short_reverses_both_legs() -> None:
    # short 2.00 EURUSD at 1.10000: EUR −200,000; USD +220,000.
    short = OpenPosition("EURUSD", Side.SELL, D("2.00"), LOT, D("1.10000"))
    assert exposure_by_currency([short], GRAPH) == {
        "EUR": CurrencyAmounts(D(200_000), D(-200_000)),
        "USD": CurrencyAmounts(D(220_000), D(220_000)),
    }


def test_unknown_symbol_and_missing_quote_fail_clearly() -> None:
    gold = OpenPosition("XAUUSD", Side.BUY, D("1"), D(100), D("2000.00"))
    with pytest.raises(InvalidArgument, match="XAUUSD is not in the currency graph"):
        exposure_by_currency([gold], GRAPH)
    no_yen = quotes_from_prices({"EURUSD": D("1.1"), "GBPUSD": D("1.25")}, GRAPH)
    with pytest.raises(FailedPrecondition, match="no conversion from JPY to USD"):
        aggregate_exposure(BOOK, GRAPH, no_yen, "USD")
    with pytest.raises(InvalidArgument, match="volume"):
        OpenPosition("EURUSD", Side.BUY, D(0), LOT, D("1.1"))


def test_symbols_from_the_graph_port_feed_the_aggregation() -> None:
    graph = open_graph("memory://")
    for edge in GRAPH:
        graph.upsert_symbol(edge)
    report = aggregate_exposure(
        BOOK, graph.symbols(), quotes_from_prices(AT_OPEN, graph.symbols()), "USD"
    )
    assert report["USD"].net == D(-185_000)
    graph.close()


def _position(
    symbol: str, side: int, lots: str, points: int, digits: int
) -> execution_pb2.Position:
    return execution_pb2.Position(
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        volume=lots_to_proto(D(lots)),
        open_price=common_pb2.Price(points=points, digits=digits),
    )


def test_risk_helper_reads_execution_positions() -> None:
    # The same book as execution reports it: prices in points, volumes as Lots.
    positions = [
        _position("EURUSD", common_pb2.SIDE_BUY, "1.00", 110_000, 5),
        _position("USDJPY", common_pb2.SIDE_SELL, "0.50", 150_000, 3),
        _position("GBPUSD", common_pb2.SIDE_BUY, "0.20", 125_000, 5),
    ]
    specs = {s.name: s for s in (EURUSD, GBPUSD, USDJPY, EURGBP)}
    quotes = quotes_from_prices(AT_OPEN, GRAPH)
    report = account_exposure(positions, specs, quotes, "USD")
    assert exposure_log_fields(report) == {
        "exposure_EUR": "110000",
        "exposure_GBP": "25000",
        "exposure_JPY": "50000",
        "exposure_USD": "-185000",
    }
    wrong_digits = [_position("EURUSD", common_pb2.SIDE_BUY, "1.00", 11_000, 4)]
    with pytest.raises(InvalidArgument, match="4 digits"):
        account_exposure(wrong_digits, specs, quotes, "USD")

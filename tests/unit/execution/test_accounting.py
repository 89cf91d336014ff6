"""Positions and account: exact PnL, conversions, hedging, FIFO closes, the equity identity."""

from __future__ import annotations

from collections import defaultdict
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from quantmesh.runtime.errors import FailedPrecondition
from quantmesh.services.execution.accounts import Book, Fill, Quote, money
from quantmesh.services.execution.broker import (
    FixedLatency,
    NoSlippage,
    PaperBroker,
    PaperBrokerConfig,
)
from quantmesh.services.execution.core import ExecutionEngine
from quantmesh.services.execution.orders import OrderRequest, Side, TimeInForce
from quantmesh.services.execution.store import ExecutionStore
from quantmesh.services.marketdata.sources import EURGBP, EURUSD, GBPUSD, USDJPY, TickColumns

SYMBOLS = {s.name: s for s in (EURUSD, GBPUSD, USDJPY, EURGBP)}
START = Decimal("10000")


def book() -> Book:
    return Book("paper", "USD", SYMBOLS, START, START)


def quotes(*items: tuple[str, int, int]) -> dict[str, Quote]:
    return {name: Quote(name, bid, ask, 0) for name, bid, ask in items}


def fill(
    deal: str,
    position: str,
    symbol: str,
    side: Side,
    volume: str,
    price: int,
    commission: str = "0",
    closing: bool = False,
) -> Fill:
    return Fill(
        deal, "O1", position, symbol, side, Decimal(volume), price, Decimal(commission), 0, closing
    )


def test_a_eurusd_round_trip_books_points_times_volume_and_both_commissions() -> None:
    b = book()
    q = quotes(("EURUSD", 110_240, 110_250))
    b.apply(fill("D1", "P1", "EURUSD", Side.BUY, "1", 110_010, "3.50"), q)
    closed, position = b.apply(fill("D2", "P1", "EURUSD", Side.SELL, "1", 110_260, "3.50", True), q)
    # 250 points × 1 lot × 100,000 × 0.00001 USD
    assert closed.realized_pnl == Decimal("250.00")
    assert not position.is_open
    assert position.realized_pnl == Decimal("250.00")
    assert b.balance == START + Decimal("250") - Decimal("7")
    assert b.positions == {}


def test_usdjpy_profit_converts_at_one_over_the_usdjpy_mid() -> None:
    b = book()
    q = quotes(("USDJPY", 150_500, 150_514))
    b.apply(fill("D1", "P1", "USDJPY", Side.BUY, "1", 150_000), q)
    closed, _ = b.apply(fill("D2", "P1", "USDJPY", Side.SELL, "1", 150_500, closing=True), q)
    yen = Decimal(500) * Decimal("0.001") * 100_000  # 50,000 JPY
    expected = (yen / Decimal("150.507")).quantize(Decimal("0.01"), ROUND_HALF_EVEN)
    assert closed.realized_pnl == expected == Decimal("332.21")


def test_eurgbp_profit_converts_at_the_gbpusd_mid() -> None:
    b = book()
    q = quotes(("EURGBP", 84_790, 84_800), ("GBPUSD", 127_000, 127_015))
    b.apply(fill("D1", "P1", "EURGBP", Side.SELL, "0.5", 85_000), q)
    closed, _ = b.apply(fill("D2", "P1", "EURGBP", Side.BUY, "0.5", 84_800, closing=True), q)
    # 200 points × 0.5 lot = 100 GBP, × GBPUSD mid 1.270075 = 127.0075 USD
    assert closed.realized_pnl == Decimal("127.01")


def test_without_a_quote_to_convert_with_the_book_says_so() -> None:
    b = book()
    b.apply(fill("D1", "P1", "EURGBP", Side.BUY, "1", 85_000), {})
    with pytest.raises(FailedPrecondition, match="no GBPUSD quote yet"):
        b.apply(fill("D2", "P1", "EURGBP", Side.SELL, "1", 85_100, closing=True), {})


def test_a_partial_close_consumes_entry_legs_first_in_first_out() -> None:
    b = book()
    q = quotes(("EURUSD", 110_100, 110_110))
    b.apply(fill("D1", "P1", "EURUSD", Side.BUY, "0.5", 110_000), q)
    b.apply(fill("D2", "P1", "EURUSD", Side.BUY, "0.5", 110_020), q)
    assert b.positions["P1"].open_price == Decimal("110010")
    closed, position = b.apply(
        fill("D3", "P1", "EURUSD", Side.SELL, "0.7", 110_100, closing=True), q
    )
    assert closed.realized_pnl == Decimal("66.00")  # 0.5 × 100 + 0.2 × 80 points
    assert position.volume == Decimal("0.3")
    assert position.open_price == Decimal("110020")


def test_hedging_keeps_a_buy_and_a_sell_of_one_symbol_as_two_positions() -> None:
    b = book()
    q = quotes(("EURUSD", 110_000, 110_010))
    b.apply(fill("D1", "P1", "EURUSD", Side.BUY, "1", 110_010), q)
    b.apply(fill("D2", "P2", "EURUSD", Side.SELL, "1", 110_000), q)
    assert {p.side for p in b.positions.values()} == {Side.BUY, Side.SELL}
    # Each pays the spread on its own: the long is valued at the bid, the short at the ask.
    assert [b.value(p, q).unrealized_pnl for p in b.positions.values()] == [
        Decimal("-10.00"),
        Decimal("-10.00"),
    ]
    assert b.unrealized(q) == Decimal("-20.00")


def test_margin_is_the_notional_at_the_mid_over_the_leverage() -> None:
    b = book()
    q = quotes(("EURUSD", 110_000, 110_010), ("USDJPY", 150_000, 150_010))
    b.apply(fill("D1", "P1", "EURUSD", Side.BUY, "1", 110_010), q)
    b.apply(fill("D2", "P2", "USDJPY", Side.SELL, "2", 150_000), q)
    # 100,000 × 1.10005 / 100 + 200,000 USD / 100
    assert b.margin(q, 100) == Decimal("1100.05") + Decimal("2000.00")
    state = b.state(q, broker="paper", leverage=100)
    assert state.free_margin == state.equity - state.margin
    assert state.margin_level_bps == int(state.equity * 10_000 / state.margin)


def test_the_identity_catches_a_balance_that_drifted_from_the_totals() -> None:
    b = book()
    q = quotes(("EURUSD", 110_000, 110_010))
    b.apply(fill("D1", "P1", "EURUSD", Side.BUY, "1", 110_010, "3.50"), q)
    assert b.equity_identity_holds(q)
    b.balance += Decimal("0.01")
    assert not b.equity_identity_holds(q)


def test_money_rounds_half_even_to_the_cent() -> None:
    assert money(Decimal("1.005")) == Decimal("1.00")
    assert money(Decimal("1.015")) == Decimal("1.02")
    assert money(Decimal("-2.5050001")) == Decimal("-2.51")


def test_an_engine_refuses_symbols_it_cannot_convert_into_the_account_currency(
    tmp_path: Path,
) -> None:
    store = ExecutionStore(tmp_path / "e.sqlite3")
    broker = PaperBroker(tmp_path / "b.sqlite3", {"EURGBP": EURGBP})
    with pytest.raises(FailedPrecondition, match="add GBPUSD or USDGBP"):
        ExecutionEngine(store, broker, symbols={"EURGBP": EURGBP})


# --- a multi-trade scenario, checked by a second implementation -----------------------

NAMES = ["EURUSD", "GBPUSD"]


class Market:
    """Feeds one tick at a time of a two-symbol stream to an engine."""

    def __init__(self, engine: ExecutionEngine) -> None:
        self.engine, self.seq, self.time_ms = engine, 0, 1_000

    def tick(self, symbol: str, bid: int, ask: int) -> None:
        self.time_ms += 1_000
        columns = TickColumns(
            self.seq,
            np.array([NAMES.index(symbol)], np.uint32),
            np.array([self.time_ms]),
            np.array([bid]),
            np.array([ask]),
            np.ones(1),
        )
        self.seq += 1
        self.engine.on_ticks(columns, NAMES)


def cash_flow_equity(engine: ExecutionEngine) -> Decimal:
    """Equity from the fill reports alone: start + cash flows + open volume at the mark.

    Independent of the book: no legs, no FIFO, no per-fill rounding. For symbols quoted
    in USD with 5 digits, 1 point × 1 lot is exactly 1 USD, so nothing rounds at all.
    """
    cash = START
    open_volume: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    direction: dict[tuple[str, str], int] = {}
    for report in engine.reports_since(0):
        if not report.fill_volume:
            continue
        sign = 1 if report.side is Side.BUY else -1
        key = (report.symbol, report.position_id)
        direction.setdefault(key, sign)
        open_volume[key] += sign * report.fill_volume
        cash -= sign * report.fill_volume * report.fill_price  # type: ignore[operator]
        cash -= report.commission
    for (symbol, _), volume in open_volume.items():
        quote = engine.quotes[symbol]
        cash += volume * (quote.bid if volume > 0 else quote.ask)
    return cash


def test_a_multi_trade_scenario_balances_to_the_cent_by_two_computations(tmp_path: Path) -> None:
    config = PaperBrokerConfig(FixedLatency(0), NoSlippage(), lots_per_tick=Decimal("0.5"))
    broker = PaperBroker(tmp_path / "b.sqlite3", SYMBOLS, config)
    engine = ExecutionEngine(ExecutionStore(tmp_path / "e.sqlite3"), broker, symbols=SYMBOLS)
    engine.recover()
    market = Market(engine)
    market.tick("EURUSD", 110_000, 110_010)
    market.tick("GBPUSD", 127_000, 127_015)
    gtc: dict[str, Any] = {"time_in_force": TimeInForce.GTC, "deviation_points": 1_000}
    engine.submit(OrderRequest("e1", "EURUSD", Side.BUY, Decimal("1.2"), stop_loss=108_000, **gtc))
    engine.submit(OrderRequest("g1", "GBPUSD", Side.SELL, Decimal("0.7"), stop_loss=127_400, **gtc))
    for bid in (110_004, 110_013, 110_031):  # 0.5 + 0.5 + 0.2 lots at three asks
        market.tick("EURUSD", bid, bid + 10)
    market.tick("GBPUSD", 127_050, 127_063)  # 0.5 of 0.7
    [eur] = engine.positions("EURUSD")
    assert [leg.volume for leg in eur.position.legs] == [Decimal("0.5")] * 2 + [Decimal("0.2")]
    engine.submit(
        OrderRequest(
            "e1-close",
            "EURUSD",
            Side.SELL,
            Decimal("0.7"),
            position_id=eur.position.position_id,
            **gtc,
        )
    )
    market.tick("EURUSD", 110_090, 110_100)  # closes 0.5
    market.tick("GBPUSD", 127_100, 127_112)  # the short's last 0.2
    market.tick("EURUSD", 110_070, 110_080)  # closes the last 0.2
    market.tick("GBPUSD", 127_420, 127_440)  # gap through the short's stop: closes 0.7
    engine.submit(OrderRequest("e2", "EURUSD", Side.BUY, Decimal("0.3"), deviation_points=1_000))
    market.tick("EURUSD", 110_110, 110_120)
    market.tick("EURUSD", 110_150, 110_161)

    account = engine.account()
    assert account.open_positions == 2  # the rest of e1 and e2
    assert engine.equity_identity_holds()
    assert account.equity == cash_flow_equity(engine)
    assert account.equity == (
        account.starting_balance
        + account.realized_pnl
        + account.unrealized_pnl
        - account.commission
    )
    fills = [r for r in engine.reports_since(0) if r.fill_volume]
    assert account.commission == sum((r.commission for r in fills), Decimal(0))
    assert account.commission == Decimal("3.5") * sum((r.fill_volume for r in fills), Decimal(0))
    # Realized: EUR 0.5×(110090−110014) + 0.2×(110070−110023) ; GBP short stopped out.
    eur_realized = Decimal("0.5") * 76 + Decimal("0.2") * 47
    gbp_realized = Decimal("0.5") * (127_050 - 127_440) + Decimal("0.2") * (127_100 - 127_440)
    assert account.realized_pnl == eur_realized + gbp_realized
    assert account.balance == START + account.realized_pnl - account.commission

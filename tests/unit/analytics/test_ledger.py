"""The ledger: exact money, FIFO positions, marks, conversion, and a second opinion.

The second opinion is :func:`plain_equity`, a deliberately simple loop that knows
nothing of lots, FIFO or trades: each position is its signed volume and the cash its fills
moved. Equity is then ``start − commission + Σ (cash + volume · close price) · contract``,
which is independent of how the ledger allocates exits to entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import pytest

from quantmesh.services.analytics.ledger import (
    Fill,
    Mark,
    Side,
    conversion_from_marks,
    run_ledger,
    usd_quoted,
)
from quantmesh.services.analytics.runs import Run, demo_run

START = Decimal(10_000)
CENT = Decimal("0.01")
T0 = 1_500_000_000_000
HOUR = 3_600_000


def fill(
    position: str,
    side: Side,
    lots: str,
    points: int,
    *,
    opens: bool = True,
    at: int = T0,
    symbol: str = "EURUSD",
    digits: int = 5,
    commission: str = "0",
    model: tuple[str, str] = ("m", "1"),
) -> Fill:
    kind = "open" if opens else "close"
    return Fill(
        f"{position}-{kind}-{at}", position, symbol, side, Decimal(lots), points, digits,
        Decimal(commission), at, opens, *model, f"signal-{position}",
    )  # fmt: skip


def mark(bid: int, ask: int, at: int = T0, symbol: str = "EURUSD", digits: int = 5) -> Mark:
    return Mark(symbol, at, bid, ask, digits)


def plain_equity(fills: list[Fill], marks: list[Mark], start: Decimal) -> dict[int, Decimal]:
    """Equity after each distinct event time, by cash-flow accounting in a plain loop."""
    events = sorted(
        [(m.time_ms, 0, m) for m in marks] + [(f.time_ms, 1, f) for f in fills],
        key=lambda event: (event[0], event[1]),
    )
    cash: dict[str, Decimal] = {}  # position → −Σ signed volume · price
    held: dict[str, Decimal] = {}  # position → signed volume, + long
    symbol_of: dict[str, str] = {}
    bid: dict[str, Decimal] = {}
    ask: dict[str, Decimal] = {}
    commission = Decimal(0)
    equity: dict[int, Decimal] = {}
    for time_ms, _, event in events:
        if isinstance(event, Mark):
            bid[event.symbol] = Decimal(event.bid_points) / 10**event.digits
            ask[event.symbol] = Decimal(event.ask_points) / 10**event.digits
        else:
            assert isinstance(event, Fill)
            signed = event.volume_lots if event.side is Side.BUY else -event.volume_lots
            price = Decimal(event.price_points) / 10**event.digits
            cash[event.position_id] = cash.get(event.position_id, Decimal(0)) - signed * price
            held[event.position_id] = held.get(event.position_id, Decimal(0)) + signed
            symbol_of[event.position_id] = event.symbol
            commission += event.commission
        value = start - commission
        for position, volume in held.items():
            symbol = symbol_of[position]
            close = bid[symbol] if volume > 0 else ask[symbol]
            value += (cash[position] + volume * close) * 100_000
        equity[time_ms] = value
    return equity


def test_long_round_trip_realizes_points_times_volume_times_contract_size() -> None:
    result = run_ledger(
        [
            fill("p", Side.BUY, "0.10", 110_000, commission="0.35"),
            fill("p", Side.SELL, "0.10", 110_250, opens=False, at=T0 + HOUR, commission="0.35"),
        ],
        [],
        start_balance=START,
    )
    (trade,) = result.trades
    assert trade.gross_pnl == Decimal("25")  # 250 points · 0.00001 · 0.10 lots · 100,000
    assert trade.commission == Decimal("0.70")
    assert trade.net_pnl == Decimal("24.30")
    assert result.balance == result.equity == Decimal("10024.30")
    assert result.open_positions == ()


def test_short_profits_when_the_price_falls_and_pays_when_it_rises() -> None:
    fills = [
        fill("win", Side.SELL, "1", 110_000),
        fill("win", Side.BUY, "1", 109_900, opens=False, at=T0 + 1),
        fill("loss", Side.SELL, "0.5", 110_000, at=T0 + 2),
        fill("loss", Side.BUY, "0.5", 110_040, opens=False, at=T0 + 3),
    ]
    win, loss = run_ledger(fills, [], start_balance=START).trades
    assert win.gross_pnl == Decimal("100")
    assert loss.gross_pnl == Decimal("-20")


def test_partial_exits_close_entries_first_in_first_out() -> None:
    fills = [
        fill("p", Side.BUY, "1", 100_000),
        fill("p", Side.BUY, "1", 100_100, at=T0 + 1),
        fill("p", Side.SELL, "1.5", 100_200, opens=False, at=T0 + 2),
    ]
    result = run_ledger(fills, [mark(100_200, 100_210, at=T0 + 2)], start_balance=START)
    # 1 lot from 100,000 (+200 pts) and 0.5 lot from 100,100 (+100 pts) are closed.
    assert result.realized == Decimal("200") + Decimal("50")
    (position,) = result.open_positions
    assert position.volume_lots == Decimal("0.5")
    assert position.entry_price == Decimal("1.001")  # what is left is the second entry
    assert position.unrealized_pnl == Decimal("50")  # 0.5 lot · 100 pts at the bid
    assert result.trades == ()  # a trade is a closed position, and this one is open


def test_open_positions_are_marked_at_the_bid_when_long_and_the_ask_when_short() -> None:
    fills = [fill("long", Side.BUY, "1", 100_000), fill("short", Side.SELL, "1", 100_000)]
    result = run_ledger(fills, [mark(100_050, 100_060, at=T0 + 1)], start_balance=START)
    unrealized = {p.position_id: p.unrealized_pnl for p in result.open_positions}
    assert unrealized == {"long": Decimal("50"), "short": Decimal("-60")}
    assert result.unrealized == Decimal("-10")


def test_a_position_before_its_symbols_first_mark_is_valued_at_its_entry() -> None:
    result = run_ledger([fill("p", Side.BUY, "1", 100_000)], [], start_balance=START)
    assert result.unrealized == 0
    assert result.equity == START


def test_curve_has_one_point_per_time_and_a_fill_sees_the_mark_of_its_instant() -> None:
    fills = [fill("p", Side.BUY, "1", 100_012, at=T0 + HOUR)]
    marks = [mark(100_000, 100_012), mark(100_100, 100_112, at=T0 + HOUR)]
    curve = run_ledger(fills, marks, start_balance=START).curve
    assert curve.time_ms == (T0, T0 + HOUR)
    # Bought at the ask 100,012 and marked at the bid 100,100 of the same instant.
    assert curve.equity == (START, START + Decimal("88"))
    assert curve.balance == (START, START)


def test_equity_is_start_plus_realized_plus_unrealized_minus_costs_exactly() -> None:
    run = demo_run()
    result = run_ledger(run.fills, run.marks, start_balance=START)
    realized = sum((t.gross_pnl for t in result.trades), Decimal(0))
    unrealized = sum((p.unrealized_pnl for p in result.open_positions), Decimal(0))
    costs = sum((f.commission for f in run.fills), Decimal(0))
    assert result.open_positions  # the demo leaves positions open, so unrealized counts
    assert result.curve.equity[-1] == START + realized + unrealized - costs
    assert result.curve.balance[-1] == START + realized - costs
    assert result.equity == result.curve.equity[-1]


def test_ledger_agrees_with_a_plain_loop_at_every_point_of_the_demo_run() -> None:
    run = demo_run()
    assert_agrees(run.fills, run.marks)


def test_ledger_agrees_with_a_plain_loop_on_hedged_partial_and_scaled_positions() -> None:
    fills = [
        fill("a", Side.BUY, "0.30", 110_012, at=T0 + 1, commission="1.05"),
        fill("b", Side.SELL, "0.20", 110_000, at=T0 + 1, commission="0.70"),
        fill("a", Side.BUY, "0.07", 110_212, at=T0 + 3, commission="0.25"),
        fill("a", Side.SELL, "0.13", 110_300, opens=False, at=T0 + 4, commission="0.45"),
        fill("b", Side.BUY, "0.20", 110_172, opens=False, at=T0 + 5, commission="0.70"),
        fill("a", Side.SELL, "0.24", 109_950, opens=False, at=T0 + 6, commission="0.84"),
        fill("c", Side.SELL, "1.01", 109_950, at=T0 + 6, commission="3.54"),
    ]
    marks = [mark(110_000 + 37 * k, 110_012 + 37 * k, at=T0 + k) for k in range(8)]
    assert_agrees(fills, marks)


def assert_agrees(fills: Sequence[Fill], marks: Sequence[Mark]) -> None:
    result = run_ledger(fills, marks, start_balance=START)
    expected = plain_equity(list(fills), list(marks), START)
    assert list(result.curve.time_ms) == list(expected)
    for time_ms, equity in zip(result.curve.time_ms, result.curve.equity, strict=True):
        assert equity.quantize(CENT) == expected[time_ms].quantize(CENT)
        assert equity == expected[time_ms]  # and, being exact decimals, to the last digit


def test_usdjpy_profit_is_converted_at_one_over_usdjpy_at_the_exit() -> None:
    fills = [
        fill("p", Side.BUY, "1", 110_000, symbol="USDJPY", digits=3),
        fill("p", Side.SELL, "1", 111_000, opens=False, at=T0 + 1, symbol="USDJPY", digits=3),
    ]
    marks = [mark(111_000, 111_000, at=T0 + 1, symbol="USDJPY", digits=3)]
    result = run_ledger(fills, marks, start_balance=START, conversion=conversion_from_marks(marks))
    # 1,000 points · 0.001 · 1 lot · 100,000 = 100,000 JPY, at 111 JPY per USD.
    assert result.realized.quantize(CENT) == Decimal("900.90")


def test_eurgbp_profit_is_converted_at_the_gbpusd_mid() -> None:
    fills = [
        fill("p", Side.BUY, "1", 85_000, symbol="EURGBP"),
        fill("p", Side.SELL, "1", 86_000, opens=False, at=T0 + 1, symbol="EURGBP"),
    ]
    marks = [mark(124_990, 125_010, at=T0, symbol="GBPUSD")]
    result = run_ledger(fills, marks, start_balance=START, conversion=conversion_from_marks(marks))
    assert result.realized == Decimal("1250")  # 1,000 GBP at 1.25000


def test_default_conversion_refuses_a_symbol_not_quoted_in_usd() -> None:
    assert usd_quoted("EURUSD", T0) == 1
    with pytest.raises(ValueError, match="not quoted in USD"):
        usd_quoted("USDJPY", T0)


def test_conversion_without_an_earlier_rate_mark_is_an_error() -> None:
    convert = conversion_from_marks([mark(124_990, 125_010, at=T0 + 1, symbol="GBPUSD")])
    with pytest.raises(ValueError, match="no GBPUSD mark at or before"):
        convert("EURGBP", T0)


@pytest.mark.parametrize(
    ("fills", "message"),
    [
        ([fill("p", Side.SELL, "1", 100_000, opens=False)], "exit of unknown position"),
        (
            [fill("p", Side.BUY, "1", 100_000), fill("p", Side.BUY, "1", 1, opens=False)],
            "exit on the same side",
        ),
        (
            [fill("p", Side.BUY, "1", 100_000), fill("p", Side.SELL, "2", 1, opens=False)],
            "exit exceeds volume",
        ),
        (
            [fill("p", Side.BUY, "1", 100_000), fill("p", Side.SELL, "1", 100_000)],
            "entry on the other side",
        ),
        (
            [fill("p", Side.BUY, "1", 100_000), fill("p", Side.BUY, "1", 1, symbol="GBPUSD")],
            "symbol or digits differ",
        ),
    ],
)
def test_fills_that_contradict_their_position_are_refused(fills: list[Fill], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_ledger(fills, [], start_balance=START)


def test_fill_and_mark_refuse_impossible_values() -> None:
    with pytest.raises(ValueError, match="commission is a cost"):
        fill("p", Side.BUY, "1", 100_000, commission="-0.35")
    with pytest.raises(ValueError, match="volume must be > 0"):
        fill("p", Side.BUY, "0", 100_000)
    with pytest.raises(ValueError, match="bid <= ask"):
        mark(100_010, 100_000)


def test_demo_run_is_a_valid_account_history() -> None:
    run: Run = demo_run()
    result = run_ledger(run.fills, run.marks, start_balance=run.account.start_balance)
    assert len(result.trades) + len(result.open_positions) == sum(f.opens for f in run.fills)
    assert {t.model_version for t in result.trades} == {"10-30", "20-60"}
    assert len(result.open_positions) == 2  # each model ends in the market

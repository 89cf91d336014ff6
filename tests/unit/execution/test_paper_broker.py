"""Paper broker: fill prices, latency, slippage, commission, liquidity, stops, expiry, journal."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from quantmesh.services.execution.accounts import Quote
from quantmesh.services.execution.broker import (
    BrokerEvent,
    BrokerEventKind,
    BrokerOrder,
    FixedLatency,
    FixedSlippage,
    NoSlippage,
    PaperBroker,
    PaperBrokerConfig,
    PerLotCommission,
    RandomLatency,
    VolatilitySlippage,
    default_journal_path,
)
from quantmesh.services.execution.orders import AlreadyExists, OrderType, Origin, Side, TimeInForce
from quantmesh.services.marketdata.sources import EURUSD

K = BrokerEventKind
SYMBOLS = {"EURUSD": EURUSD}
EXACT = PaperBrokerConfig(latency=FixedLatency(0), slippage=NoSlippage())


def make_broker(path: Path, **config: Any) -> PaperBroker:
    return PaperBroker(path / "broker.sqlite3", SYMBOLS, dataclasses.replace(EXACT, **config))


def order(key: str = "k1", side: Side = Side.BUY, volume: str = "1", **fields: Any) -> BrokerOrder:
    values: dict[str, Any] = {
        "account_id": "paper",
        "client_key": key,
        "symbol": "EURUSD",
        "side": side,
        "type": OrderType.MARKET,
        "volume": Decimal(volume),
        "price": None,
        "stop_loss": None,
        "take_profit": None,
        "time_in_force": TimeInForce.GTC,
        "expire_time_ms": 0,
        "deviation_points": 1_000,
        "position_id": "",
        "submitted_ms": 1_000,
        "reference_price": None,
    }
    return BrokerOrder(**(values | fields))


def tick(broker: PaperBroker, time_ms: int, bid: int, ask: int) -> list[BrokerEvent]:
    before = broker.last_event_seq
    broker.on_tick(Quote("EURUSD", bid, ask, time_ms))
    return broker.events_since(before)


def fills(events: list[BrokerEvent]) -> list[tuple[Decimal, int]]:
    return [(e.fill_volume, e.fill_price) for e in events if e.kind is K.FILL]


@pytest.fixture
def broker(tmp_path: Path) -> PaperBroker:
    return make_broker(tmp_path)


def test_market_buys_fill_at_the_ask_and_sells_at_the_bid_never_the_mid(
    broker: PaperBroker,
) -> None:
    broker.submit(order("buy", Side.BUY))
    broker.submit(order("sell", Side.SELL))
    events = tick(broker, 2_000, 110_000, 110_012)
    assert [(e.client_key, e.fill_price) for e in events if e.kind is K.FILL] == [
        ("buy", 110_012),
        ("sell", 110_000),
    ]


def test_an_order_is_acknowledged_on_arrival_and_fills_on_a_later_tick(broker: PaperBroker) -> None:
    broker.submit(order(submitted_ms=5_000))
    [ack] = broker.events_since(-1)
    assert (ack.kind, ack.broker_order_id, ack.time_ms) == (K.ACCEPTED, "P1", 5_000)
    assert tick(broker, 5_000, 110_000, 110_010) == []  # the tick the decision was made on
    assert fills(tick(broker, 5_001, 110_001, 110_011)) == [(Decimal(1), 110_011)]


def test_fixed_latency_delays_the_first_eligible_tick(tmp_path: Path) -> None:
    broker = make_broker(tmp_path, latency=FixedLatency(300))
    broker.submit(order(submitted_ms=1_000))
    assert tick(broker, 1_200, 110_000, 110_010) == []
    assert tick(broker, 1_299, 110_000, 110_010) == []
    assert fills(tick(broker, 1_300, 110_005, 110_015)) == [(Decimal(1), 110_015)]


def test_random_latency_is_seeded_per_order_and_bounded() -> None:
    model = RandomLatency(min_ms=20, max_ms=120, seed=3)
    draws = [model.latency_ms(f"k{i}") for i in range(200)]
    assert all(20 <= d <= 120 for d in draws)
    assert len(set(draws)) > 20
    assert draws == [RandomLatency(20, 120, seed=3).latency_ms(f"k{i}") for i in range(200)]
    assert draws != [RandomLatency(20, 120, seed=4).latency_ms(f"k{i}") for i in range(200)]


def test_fixed_slippage_moves_fills_against_the_trader(tmp_path: Path) -> None:
    broker = make_broker(tmp_path, slippage=FixedSlippage(2))
    broker.submit(order("buy", Side.BUY))
    broker.submit(order("sell", Side.SELL))
    assert fills(tick(broker, 2_000, 110_000, 110_010)) == [
        (Decimal(1), 110_012),
        (Decimal(1), 109_998),
    ]


def test_volatility_slippage_grows_with_the_move_and_is_reproducible() -> None:
    model = VolatilitySlippage(multiplier=1.0, seed=9)
    calm = Quote("EURUSD", 110_000, 110_010, 1)
    assert model.slippage_points("a", calm, None) == 0
    assert model.slippage_points("a", calm, calm) == 0
    jump = Quote("EURUSD", 110_100, 110_110, 2)
    draws = [model.slippage_points(f"o{i}", jump, calm) for i in range(100)]
    assert all(0 <= d <= 100 for d in draws)
    assert max(draws) > 50
    assert draws == [
        VolatilitySlippage(1.0, seed=9).slippage_points(f"o{i}", jump, calm) for i in range(100)
    ]


def test_a_market_order_beyond_its_deviation_is_rejected_as_a_requote(broker: PaperBroker) -> None:
    broker.submit(order(reference_price=110_010, deviation_points=10))
    [event] = tick(broker, 2_000, 110_011, 110_021)
    assert event.kind is K.REJECTED
    assert "requote" in event.reason
    assert "11 points worse than 110010" in event.reason


def test_commission_is_charged_per_lot_per_side_rounded_to_the_cent(broker: PaperBroker) -> None:
    model = PerLotCommission()
    assert model.commission(EURUSD, Decimal("1")) == Decimal("3.50")
    assert model.commission(EURUSD, Decimal("0.3")) == Decimal("1.05")
    assert model.commission(EURUSD, Decimal("0.01")) == Decimal("0.04")  # 0.035 half up
    assert PerLotCommission(Decimal("7")).commission(EURUSD, Decimal("0.5")) == Decimal("3.50")
    broker.submit(order(volume="0.3"))
    [fill] = [e for e in tick(broker, 2_000, 110_000, 110_010) if e.kind is K.FILL]
    assert fill.commission == Decimal("1.05")


def test_volume_above_the_liquidity_of_a_tick_fills_over_the_following_ticks(
    tmp_path: Path,
) -> None:
    broker = make_broker(tmp_path, lots_per_tick=Decimal("1"))
    broker.submit(order(volume="2.5"))
    assert fills(tick(broker, 2_000, 110_000, 110_010)) == [(Decimal(1), 110_010)]
    assert fills(tick(broker, 3_000, 110_001, 110_011)) == [(Decimal(1), 110_011)]
    last = tick(broker, 4_000, 110_002, 110_012)
    assert fills(last) == [(Decimal("0.5"), 110_012)]
    status = broker.lookup("paper", "k1")
    assert status is not None
    assert (status.filled_volume, status.done) == (Decimal("2.5"), True)
    assert broker.idle  # a position without stops waits for no tick
    assert tick(broker, 5_000, 110_002, 110_012) == []


def test_orders_on_one_side_share_the_liquidity_of_a_tick(tmp_path: Path) -> None:
    broker = make_broker(tmp_path, lots_per_tick=Decimal("1"))
    broker.submit(order("first", volume="0.7"))
    broker.submit(order("second", volume="0.7"))
    broker.submit(order("seller", Side.SELL, volume="0.7"))
    events = tick(broker, 2_000, 110_000, 110_010)
    assert [(e.client_key, e.fill_volume) for e in events if e.kind is K.FILL] == [
        ("first", Decimal("0.7")),
        ("second", Decimal("0.3")),
        ("seller", Decimal("0.7")),
    ]


def test_ioc_fills_what_it_can_and_cancels_the_rest(tmp_path: Path) -> None:
    broker = make_broker(tmp_path, lots_per_tick=Decimal("1"))
    broker.submit(order(volume="2.5", time_in_force=TimeInForce.IOC))
    events = tick(broker, 2_000, 110_000, 110_010)
    assert [e.kind for e in events] == [K.FILL, K.CANCELLED]
    assert events[1].reason == "immediate or cancel: 1.5 lots unfilled"
    assert tick(broker, 3_000, 110_000, 110_010) == []


def test_fok_fills_everything_at_once_or_nothing(tmp_path: Path) -> None:
    broker = make_broker(tmp_path, lots_per_tick=Decimal("1"))
    broker.submit(order("too-big", volume="1.5", time_in_force=TimeInForce.FOK))
    broker.submit(order("fits", volume="1", time_in_force=TimeInForce.FOK))
    events = tick(broker, 2_000, 110_000, 110_010)
    assert [(e.client_key, e.kind) for e in events] == [("too-big", K.CANCELLED), ("fits", K.FILL)]
    assert "fill or kill" in events[0].reason


def test_a_long_stop_loss_triggers_on_the_bid_and_honours_a_gap(tmp_path: Path) -> None:
    broker = make_broker(tmp_path, slippage=FixedSlippage(1))
    broker.submit(order(stop_loss=109_500, take_profit=111_000, deviation_points=100))
    tick(broker, 2_000, 110_000, 110_010)
    assert tick(broker, 3_000, 109_501, 109_490) == []  # ask below the stop does not matter
    events = tick(broker, 4_000, 109_300, 109_310)  # gapped 200 points through the stop
    assert [(e.kind, e.origin) for e in events] == [
        (K.ACCEPTED, Origin.STOP_LOSS),
        (K.FILL, Origin.STOP_LOSS),
    ]
    close = events[1]
    assert (close.side, close.fill_price, close.closing) == (Side.SELL, 109_299, True)
    assert (close.position_id, close.client_key) == ("P1", "broker:sl:P1")
    assert close.fill_volume == Decimal(1)
    assert broker.idle


def test_a_long_take_profit_fills_at_the_target_or_better_without_slippage(tmp_path: Path) -> None:
    broker = make_broker(tmp_path, slippage=FixedSlippage(5))
    broker.submit(order(stop_loss=109_500, take_profit=110_500, deviation_points=100))
    tick(broker, 2_000, 110_000, 110_010)
    assert tick(broker, 3_000, 110_499, 110_509) == []
    events = tick(broker, 4_000, 110_520, 110_530)
    assert [(e.kind, e.origin) for e in events][-1] == (K.FILL, Origin.TAKE_PROFIT)
    assert events[-1].fill_price == 110_520


def test_a_short_stop_and_target_trigger_on_the_ask(tmp_path: Path) -> None:
    broker = make_broker(tmp_path, slippage=FixedSlippage(1))
    broker.submit(order("s1", Side.SELL, stop_loss=110_500, take_profit=109_500))
    broker.submit(order("s2", Side.SELL, stop_loss=110_500, take_profit=109_500))
    tick(broker, 2_000, 110_000, 110_010)
    broker.on_tick(Quote("EURUSD", 109_480, 109_500, 3_000))  # ask reaches both targets
    events = broker.events_since(4)
    assert {(e.client_key, e.fill_price) for e in events if e.kind is K.FILL} == {
        ("broker:tp:P1", 109_500),
        ("broker:tp:P2", 109_500),
    }
    broker.submit(order("s3", Side.SELL, stop_loss=110_500, submitted_ms=3_000))
    tick(broker, 4_000, 110_000, 110_010)
    events = tick(broker, 5_000, 110_495, 110_505)  # ask above the stop: + 1 point slippage
    assert [(e.client_key, e.side, e.fill_price) for e in events if e.kind is K.FILL] == [
        ("broker:sl:P5", Side.BUY, 110_506)  # P3 and P4 were the take-profit closes
    ]


def test_stops_on_the_wrong_side_of_the_fill_price_are_rejected(broker: PaperBroker) -> None:
    broker.submit(order(stop_loss=110_050))
    [event] = tick(broker, 2_000, 110_000, 110_010)
    assert event.kind is K.REJECTED
    assert event.reason.startswith("invalid stops: stop loss 110050")


def test_a_gtd_order_expires_on_the_first_tick_at_its_expiry(tmp_path: Path) -> None:
    broker = make_broker(tmp_path, lots_per_tick=Decimal("1"))
    broker.submit(order(volume="3", time_in_force=TimeInForce.GTD, expire_time_ms=3_000))
    tick(broker, 2_000, 110_000, 110_010)
    events = tick(broker, 3_000, 110_000, 110_010)
    assert [e.kind for e in events] == [K.EXPIRED]
    assert "GTD" in events[0].reason


def test_a_day_order_expires_at_midnight_utc(broker: PaperBroker) -> None:
    day = 86_400_000
    broker.submit(
        order(
            type=OrderType.LIMIT,
            price=100_000,
            time_in_force=TimeInForce.DAY,
            submitted_ms=day + 5_000,
        )
    )
    assert tick(broker, 2 * day - 1, 110_000, 110_010) == []
    assert [e.kind for e in tick(broker, 2 * day, 110_000, 110_010)] == [K.EXPIRED]


def test_a_limit_buy_fills_at_the_ask_once_it_is_at_or_below_the_limit(broker: PaperBroker) -> None:
    broker.submit(order(type=OrderType.LIMIT, price=109_900))
    assert tick(broker, 2_000, 109_895, 109_905) == []
    assert fills(tick(broker, 3_000, 109_880, 109_890)) == [(Decimal(1), 109_890)]


def test_a_stop_buy_triggers_at_the_ask_and_fills_like_a_market_order(tmp_path: Path) -> None:
    broker = make_broker(tmp_path, slippage=FixedSlippage(2))
    broker.submit(order(type=OrderType.STOP, price=110_100))
    assert tick(broker, 2_000, 110_080, 110_090) == []
    assert fills(tick(broker, 3_000, 110_140, 110_150)) == [(Decimal(1), 110_152)]


def test_ioc_limit_orders_that_are_not_marketable_are_cancelled(broker: PaperBroker) -> None:
    broker.submit(order(type=OrderType.LIMIT, price=109_000, time_in_force=TimeInForce.IOC))
    [event] = tick(broker, 2_000, 110_000, 110_010)
    assert (event.kind, event.reason) == (K.CANCELLED, "limit 109000 not marketable")


def test_a_closing_order_reduces_and_then_closes_its_position(broker: PaperBroker) -> None:
    broker.submit(order(volume="1"))
    tick(broker, 2_000, 110_000, 110_010)
    broker.submit(order("c1", Side.SELL, volume="0.4", position_id="P1", submitted_ms=2_000))
    broker.submit(order("c2", Side.SELL, volume="0.6", position_id="P1", submitted_ms=2_000))
    events = tick(broker, 3_000, 110_100, 110_110)
    assert [(e.client_key, e.fill_volume, e.closing) for e in events] == [
        ("c1", Decimal("0.4"), True),
        ("c2", Decimal("0.6"), True),
    ]
    broker.submit(order("c3", Side.SELL, volume="0.1", position_id="P1", submitted_ms=3_000))
    [refused] = broker.events_since(events[-1].seq)
    assert (refused.kind, refused.reason) == (K.REJECTED, "position P1 is not open")


def test_cancel_stops_a_working_order(broker: PaperBroker) -> None:
    broker.submit(order(type=OrderType.LIMIT, price=100_000))
    broker.cancel("paper", "k1", 1_500)
    assert [e.kind for e in broker.events_since(-1)] == [K.ACCEPTED, K.CANCELLED]
    assert broker.idle


def test_the_broker_refuses_a_key_it_has_already_received(broker: PaperBroker) -> None:
    broker.submit(order())
    with pytest.raises(AlreadyExists, match="already received"):
        broker.submit(order())
    assert len(broker.events_since(-1)) == 1


def test_the_default_journal_lives_beside_the_store_under_quantmesh_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUANTMESH_HOME", str(tmp_path))
    assert default_journal_path() == tmp_path / "execution" / "paper_broker.sqlite3"
    assert PaperBroker(None, SYMBOLS).path.exists()


def test_the_journal_survives_a_restart_with_working_orders_and_positions(tmp_path: Path) -> None:
    broker = make_broker(tmp_path, lots_per_tick=Decimal("1"))
    broker.submit(order(volume="1.5", stop_loss=109_000))
    tick(broker, 2_000, 110_000, 110_010)
    broker.close()
    again = make_broker(tmp_path, lots_per_tick=Decimal("1"))
    assert again.last_event_seq == 1
    assert fills(tick(again, 3_000, 110_000, 110_010)) == [(Decimal("0.5"), 110_010)]
    events = tick(again, 4_000, 108_000, 108_010)
    assert [e.fill_volume for e in events if e.kind is K.FILL] == [Decimal("1.5")]
    assert [e.deal_id for e in again.events_since(-1) if e.deal_id] == ["D1", "D2", "D3"]
    with pytest.raises(AlreadyExists):
        again.submit(order())

"""Execution engine: idempotent submission, validation, cancel, reports, crash recovery."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from quantmesh.runtime.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from quantmesh.services.execution.accounts import Quote
from quantmesh.services.execution.broker import (
    BrokerOrder,
    FixedLatency,
    NoSlippage,
    PaperBroker,
    PaperBrokerConfig,
)
from quantmesh.services.execution.core import ExecutionEngine
from quantmesh.services.execution.orders import (
    AlreadyExists,
    OrderRequest,
    OrderState,
    OrderType,
    Origin,
    Side,
    TimeInForce,
)
from quantmesh.services.execution.store import ExecutionReport, ExecutionStore
from quantmesh.services.marketdata.sources import EURUSD, GBPUSD, USDJPY, TickColumns

SYMBOLS = {s.name: s for s in (EURUSD, GBPUSD, USDJPY)}
NAMES = sorted(SYMBOLS)
CONFIG = PaperBrokerConfig(FixedLatency(0), NoSlippage(), lots_per_tick=Decimal("0.5"))
S = OrderState


class Crash(BaseException):
    """The process dies here (BaseException: nothing may swallow it)."""


class Desk:
    """An engine on files in ``root``, its broker, and a market to drive it with."""

    def __init__(self, root: Path, *, recover: bool = True, crash: str = "") -> None:
        self.root = root
        self.paper = PaperBroker(root / "paper_broker.sqlite3", SYMBOLS, CONFIG)
        self.broker = CrashingBroker(self.paper, crash) if crash else self.paper
        self.store = ExecutionStore(root / "execution.sqlite3")
        self.seen: list[ExecutionReport] = []
        self.engine = ExecutionEngine(
            self.store, self.broker, symbols=SYMBOLS, on_reports=self.seen.extend
        )
        if recover:
            self.engine.recover()
        self.time_ms = max((q.time_ms for q in self.engine.quotes.values()), default=1_000)

    def tick(
        self, bid: int, ask: int | None = None, symbol: str = "EURUSD"
    ) -> list[ExecutionReport]:
        self.time_ms += 1_000
        columns = TickColumns(
            0,
            np.array([NAMES.index(symbol)], np.uint32),
            np.array([self.time_ms]),
            np.array([bid]),
            np.array([bid + 10 if ask is None else ask]),
            np.ones(1),
        )
        return self.engine.on_ticks(columns, NAMES)

    def broker_rows(self) -> list[tuple[str, int]]:
        with sqlite3.connect(self.paper.path) as db:
            query = "SELECT client_key, COUNT(*) FROM broker_orders GROUP BY client_key"
            return sorted(db.execute(query).fetchall())


class CrashingBroker:
    """The paper broker, but the process dies ``before`` or ``after`` it receives an order."""

    def __init__(self, broker: PaperBroker, when: str) -> None:
        self._broker, self._when = broker, when
        self.name = broker.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)

    @property
    def last_event_seq(self) -> int:
        return self._broker.last_event_seq

    @property
    def idle(self) -> bool:
        return self._broker.idle

    def submit(self, order: BrokerOrder) -> None:
        if self._when == "before":
            raise Crash
        self._broker.submit(order)
        raise Crash


def buy(key: str = "k1", volume: str = "1", **fields: Any) -> OrderRequest:
    """A GTC EURUSD market buy with a wide deviation, unless ``fields`` say otherwise."""
    values: dict[str, Any] = {
        "idempotency_key": key,
        "symbol": "EURUSD",
        "side": Side.BUY,
        "volume": Decimal(volume),
        "time_in_force": TimeInForce.GTC,
        "deviation_points": 1_000,
    }
    return OrderRequest(**(values | fields))


@pytest.fixture
def desk(tmp_path: Path) -> Desk:
    desk = Desk(tmp_path)
    desk.tick(110_000)
    return desk


# --- submission ----------------------------------------------------------------------


def test_an_order_is_on_disk_in_state_new_before_the_broker_sees_it(tmp_path: Path) -> None:
    seen_on_disk: list[tuple[int, str]] = []

    class Witness(PaperBroker):
        def submit(self, order: BrokerOrder) -> None:
            # Another connection, as another process after a crash would read it.
            with sqlite3.connect(tmp_path / "execution.sqlite3") as db:
                row = db.execute(
                    "SELECT state, idempotency_key FROM execution_orders WHERE idempotency_key = ?",
                    (order.client_key,),
                ).fetchone()
            seen_on_disk.append(row)
            super().submit(order)

    broker = Witness(tmp_path / "paper_broker.sqlite3", SYMBOLS, CONFIG)
    engine = ExecutionEngine(
        ExecutionStore(tmp_path / "execution.sqlite3"), broker, symbols=SYMBOLS
    )
    engine.recover()
    order, duplicate = engine.submit(buy())
    assert seen_on_disk == [(int(S.NEW), "k1")]
    assert (order.state, duplicate, order.broker_order_id) == (S.ACCEPTED, False, "P1")


def test_a_market_order_fills_on_the_next_tick_and_reports_each_step(desk: Desk) -> None:
    order, _ = desk.engine.submit(buy(volume="0.8"))
    assert [r.state for r in desk.seen] == [S.NEW, S.ACCEPTED]
    first = desk.tick(110_010)
    second = desk.tick(110_020)
    assert [(r.state, r.fill_volume, r.fill_price) for r in first + second] == [
        (S.PARTIALLY_FILLED, Decimal("0.5"), 110_020),
        (S.FILLED, Decimal("0.3"), 110_030),
    ]
    filled = desk.engine.order(order.order_id)
    assert filled.average_fill_price == (
        Decimal("0.5") * 110_020 + Decimal("0.3") * 110_030
    ) / Decimal("0.8")
    assert filled.commission == Decimal("1.75") + Decimal("1.05")
    assert second[0].position_id == "P1"
    assert second[0].remaining_volume == 0


def test_a_known_key_returns_the_existing_order_and_sends_nothing(desk: Desk) -> None:
    order, _ = desk.engine.submit(buy())
    desk.tick(110_010)
    desk.tick(110_010)
    seq = desk.store.last_report_seq()
    again, duplicate = desk.engine.submit(
        buy(volume="1.00", traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    )
    assert duplicate
    assert again == desk.engine.order(order.order_id)
    assert again.state is S.FILLED
    assert desk.broker_rows() == [("k1", 1)]
    assert desk.store.last_report_seq() == seq


def test_a_known_key_with_different_fields_is_already_exists(desk: Desk) -> None:
    desk.engine.submit(buy())
    with pytest.raises(AlreadyExists, match="different volume, stop_loss") as raised:
        desk.engine.submit(buy(volume="2", stop_loss=100_000))
    assert raised.value.status is grpc.StatusCode.ALREADY_EXISTS
    assert desk.broker_rows() == [("k1", 1)]


def test_a_broker_rejection_is_an_order_state_not_an_error(tmp_path: Path) -> None:
    desk = Desk(tmp_path)  # no quote yet: the engine cannot check the stops, the broker does
    order, duplicate = desk.engine.submit(buy(stop_loss=110_500))
    assert (order.state, duplicate) == (S.ACCEPTED, False)
    [report] = desk.tick(110_000)
    assert report.state is S.REJECTED
    assert report.reason.startswith("invalid stops")
    assert desk.engine.order(order.order_id).reject_reason == report.reason


def test_ticks_while_nothing_works_only_move_the_quotes(tmp_path: Path) -> None:
    desk = Desk(tmp_path)
    rows = [("EURUSD", 110_000), ("USDJPY", 150_000), ("EURUSD", 110_005), ("GBPUSD", 127_000)]
    columns = TickColumns(
        40,
        np.array([NAMES.index(name) for name, _ in rows], np.uint32),
        np.arange(len(rows), dtype=np.int64) + 5_000,
        np.array([bid for _, bid in rows]),
        np.array([bid + 10 for _, bid in rows]),
        np.ones(len(rows)),
    )
    assert desk.engine.on_ticks(columns, NAMES) == []
    assert desk.engine.quotes == {
        "EURUSD": Quote("EURUSD", 110_005, 110_015, 5_002, 42),
        "USDJPY": Quote("USDJPY", 150_000, 150_010, 5_001, 41),
        "GBPUSD": Quote("GBPUSD", 127_000, 127_010, 5_003, 43),
    }
    assert desk.engine.now_ms == 5_003
    order, _ = desk.engine.submit(buy())
    assert order.created_time_ms == 5_003
    desk.time_ms = 5_003
    assert [r.fill_price for r in desk.tick(110_020)] == [110_030]


# --- validation ----------------------------------------------------------------------

BAD_REQUESTS: list[tuple[dict[str, Any], type[DomainError], str]] = [
    ({"idempotency_key": ""}, InvalidArgument, "idempotency key"),
    ({"idempotency_key": "has spaces"}, InvalidArgument, "idempotency key"),
    ({"account_id": "someone-else"}, NotFound, "unknown account"),
    ({"symbol": "XAUUSD"}, NotFound, "unknown symbol 'XAUUSD'"),
    ({"side": 0}, InvalidArgument, "side must be BUY or SELL"),
    ({"type": 9}, InvalidArgument, "type must be"),
    ({"volume": Decimal(0)}, InvalidArgument, "greater than 0"),
    ({"volume": Decimal("-1")}, InvalidArgument, "greater than 0"),
    ({"volume": Decimal("0.015")}, InvalidArgument, "not a multiple of EURUSD's volume step 0.01"),
    ({"volume": Decimal("NaN")}, InvalidArgument, "greater than 0"),
    ({"volume": Decimal("101")}, InvalidArgument, "outside"),
    ({"price": 110_000}, InvalidArgument, "market order takes no price"),
    ({"type": OrderType.LIMIT}, InvalidArgument, "needs a price"),
    ({"type": OrderType.LIMIT, "price": 110_500}, InvalidArgument, "must be below the market"),
    ({"type": OrderType.STOP, "price": 109_500}, InvalidArgument, "must be above the market"),
    ({"stop_loss": 110_000}, InvalidArgument, "stop loss 110000 of a BUY must be below"),
    ({"take_profit": 109_000}, InvalidArgument, "take profit 109000 of a BUY must be above"),
    ({"side": Side.SELL, "stop_loss": 109_000}, InvalidArgument, "of a SELL must be above"),
    ({"stop_loss": -5}, InvalidArgument, "stop_loss must be a price > 0"),
    ({"time_in_force": TimeInForce.GTD, "expire_time_ms": 1}, InvalidArgument, "GTD needs"),
    ({"expire_time_ms": 99_999_999}, InvalidArgument, "GTD orders only"),
    ({"deviation_points": -1}, InvalidArgument, "deviation_points"),
    ({"position_id": "P404", "side": Side.SELL}, NotFound, "no open position 'P404'"),
    ({"symbol": "USDJPY"}, FailedPrecondition, "no USDJPY quote yet"),
]


@pytest.mark.parametrize(("fields", "error", "message"), BAD_REQUESTS, ids=lambda v: str(v)[:40])
def test_a_bad_request_raises_and_changes_nothing(
    desk: Desk, fields: dict[str, Any], error: type[DomainError], message: str
) -> None:
    desk.engine.submit(buy("open", volume="0.5"))
    desk.tick(110_000)
    before = (
        desk.engine.orders(),
        desk.engine.positions(),
        desk.engine.account(),
        desk.store.reports_since(0),
        desk.paper.last_event_seq,
        desk.broker_rows(),
    )
    with pytest.raises(error, match=message):
        desk.engine.submit(buy("bad", **fields))
    after = (
        desk.engine.orders(),
        desk.engine.positions(),
        desk.engine.account(),
        desk.store.reports_since(0),
        desk.paper.last_event_seq,
        desk.broker_rows(),
    )
    assert after == before
    if "idempotency_key" not in fields:  # the key was not consumed: a good order may use it
        assert desk.engine.submit(buy("bad", volume="0.1"))[1] is False


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"side": Side.BUY}, "takes a SELL EURUSD order"),
        ({"volume": "0.6"}, "exceeds the 0.5 lots of position P1"),
        ({"stop_loss": 100_000}, "no stop loss or take profit"),
        ({"type": OrderType.LIMIT, "price": 120_000}, "closing order is a MARKET order"),
    ],
)
def test_a_bad_closing_order_is_an_invalid_argument(
    desk: Desk, fields: dict[str, Any], message: str
) -> None:
    desk.engine.submit(buy("open", volume="0.5"))
    desk.tick(110_000)
    values: dict[str, Any] = {"side": Side.SELL, "volume": "0.5", "position_id": "P1"} | fields
    volume = values.pop("volume")
    with pytest.raises(InvalidArgument, match=message):
        desk.engine.submit(buy("close", volume=volume, **values))
    assert desk.engine.positions()[0].position.volume == Decimal("0.5")


# --- cancel, expiry, closing ----------------------------------------------------------


def test_cancel_stops_a_working_order_and_keeps_the_filled_part(desk: Desk) -> None:
    order, _ = desk.engine.submit(buy(volume="0.8"))
    desk.tick(110_000)
    cancelled = desk.engine.cancel(order.order_id)
    assert cancelled.state is S.CANCELLED
    assert cancelled.filled_volume == Decimal("0.5")
    assert cancelled.reject_reason == "cancelled by the client"
    assert desk.seen[-1].state is S.CANCELLED
    assert desk.seen[-1].remaining_volume == 0
    [position] = desk.engine.positions()
    assert position.position.volume == Decimal("0.5")


def test_cancelling_a_final_or_unknown_order_fails(desk: Desk) -> None:
    order, _ = desk.engine.submit(buy(volume="0.1"))
    desk.tick(110_000)
    with pytest.raises(FailedPrecondition, match="FILLED"):
        desk.engine.cancel(order.order_id)
    with pytest.raises(NotFound, match="no order 'O99'"):
        desk.engine.cancel("O99")


def test_a_gtd_order_expires_on_tick_time(desk: Desk) -> None:
    order, _ = desk.engine.submit(
        buy(
            type=OrderType.LIMIT,
            price=109_000,
            time_in_force=TimeInForce.GTD,
            expire_time_ms=desk.time_ms + 1_500,
        )
    )
    assert desk.tick(110_000) == []
    [report] = desk.tick(110_000)
    assert (report.state, report.reason) == (S.EXPIRED, "time in force GTD ran out")
    assert desk.engine.order(order.order_id).state is S.EXPIRED


def test_a_stop_loss_close_appears_as_a_broker_order_with_its_reports(desk: Desk) -> None:
    desk.engine.submit(buy(volume="0.5", stop_loss=109_000, signal_id="sig-1"))
    desk.tick(110_000)
    reports = desk.tick(108_900)
    assert [(r.idempotency_key, r.state) for r in reports] == [
        ("broker:sl:P1", S.NEW),
        ("broker:sl:P1", S.ACCEPTED),
        ("broker:sl:P1", S.FILLED),
    ]
    assert reports[1].reason == "stop_loss 109000"
    assert (reports[2].fill_price, reports[2].position_id, reports[2].signal_id) == (
        108_900,
        "P1",
        "sig-1",
    )
    sl_order = desk.engine.order_by_key("broker:sl:P1")
    assert (sl_order.origin, sl_order.side) == (Origin.STOP_LOSS, Side.SELL)
    assert desk.engine.positions() == []


def test_closing_requests_close_every_position_of_a_symbol_once(desk: Desk) -> None:
    desk.engine.submit(buy("a", volume="0.2"))
    desk.engine.submit(buy("b", volume="0.3"))
    desk.tick(110_000)
    requests = desk.engine.closing_requests("EURUSD", "close-sig-9", signal_id="sig-9")
    assert [r.idempotency_key for r in requests] == ["close-sig-9:P1", "close-sig-9:P2"]
    for request in requests:
        desk.engine.submit(request)
    desk.tick(110_050)
    assert desk.engine.positions() == []
    for request in requests:
        assert desk.engine.submit(request)[1]  # a retry closes nothing twice
    assert desk.engine.account().realized_pnl == Decimal("0.5") * 40


# --- reports, pages, readiness ---------------------------------------------------------


def test_reports_resume_from_any_seq_and_match_what_was_pushed(desk: Desk) -> None:
    desk.engine.submit(buy(volume="1.2"))
    for _ in range(3):
        desk.tick(110_000)
    everything = desk.engine.reports_since(0)
    assert everything == desk.seen
    assert [r.seq for r in everything] == list(range(len(everything)))
    assert desk.engine.reports_since(3) == everything[3:]
    assert desk.engine.reports_since(2, limit=2) == everything[2:4]


def test_orders_come_newest_first_a_page_at_a_time(desk: Desk) -> None:
    for n in range(5):
        desk.engine.submit(buy(f"k{n}", volume="0.01"))
    page, token = desk.engine.orders(page_size=2)
    assert [o.idempotency_key for o in page] == ["k4", "k3"]
    page, token = desk.engine.orders(page_size=2, page_token=token)
    assert [o.idempotency_key for o in page] == ["k2", "k1"]
    page, token = desk.engine.orders(page_size=2, page_token=token)
    assert ([o.idempotency_key for o in page], token) == (["k0"], "")
    with pytest.raises(InvalidArgument, match="page token"):
        desk.engine.orders(page_token="abc")  # noqa: S106 (a page token, not a password)
    with pytest.raises(InvalidArgument, match="page_size"):
        desk.engine.orders(page_size=1_001)


def test_the_engine_is_unavailable_until_it_has_recovered(tmp_path: Path) -> None:
    desk = Desk(tmp_path, recover=False)
    assert not desk.engine.ready
    with pytest.raises(Unavailable, match="retry with the same idempotency key"):
        desk.engine.submit(buy())
    with pytest.raises(Unavailable):
        desk.tick(110_000)
    assert desk.engine.account().balance == Decimal("10000")  # reads work
    desk.engine.recover()
    assert desk.engine.submit(buy())[0].state is S.ACCEPTED


# --- crashes -------------------------------------------------------------------------


def test_a_crash_before_the_broker_got_the_order_sends_it_once_on_recovery(tmp_path: Path) -> None:
    desk = Desk(tmp_path, crash="before")
    desk.tick(110_000)
    with pytest.raises(Crash):
        desk.engine.submit(buy())
    assert desk.broker_rows() == []
    del desk

    again = Desk(tmp_path, recover=False)
    assert again.engine.order_by_key("k1").state is S.NEW
    recovery = again.engine.recover()
    assert (recovery.resent, recovery.adopted, recovery.lost) == (("k1",), (), ())
    assert again.engine.order_by_key("k1").state is S.ACCEPTED
    assert again.broker_rows() == [("k1", 1)]
    # The restarted market starts over (no quote was stored): the resent order reaches
    # the broker as of when it was recorded, so a tick from that moment cannot fill it.
    recorded = again.engine.order_by_key("k1").created_time_ms
    again.time_ms = recorded - 1_000
    again.tick(110_000)
    assert again.engine.order_by_key("k1").state is S.ACCEPTED
    again.tick(110_000)
    assert again.engine.order_by_key("k1").state is S.PARTIALLY_FILLED


def test_a_crash_after_the_broker_accepted_adopts_the_order_without_resending(
    tmp_path: Path,
) -> None:
    desk = Desk(tmp_path, crash="after")
    desk.tick(110_000)
    with pytest.raises(Crash):
        desk.engine.submit(buy())
    assert desk.engine.order_by_key("k1").state is S.NEW
    with pytest.raises(Unavailable):  # did it reach the broker? only recover() may tell
        desk.engine.submit(buy("k2"))
    del desk

    again = Desk(tmp_path, recover=False)
    recovery = again.engine.recover()
    assert (recovery.adopted, recovery.resent) == (("k1",), ())
    order = again.engine.order_by_key("k1")
    assert (order.state, order.broker_order_id) == (S.ACCEPTED, "P1")
    assert again.broker_rows() == [("k1", 1)]
    assert again.engine.recover().applied_events == 0  # a second recovery finds nothing


def run_until_the_crash(root: Path, crash: bool) -> Desk:
    """Accept an order, then let ticks fill it at the broker; maybe die before recording."""
    desk = Desk(root)
    desk.tick(110_000)
    desk.engine.submit(buy(volume="1.2", stop_loss=109_000))
    for n, bid in enumerate((110_010, 110_020, 110_030)):
        quote = Quote("EURUSD", bid, bid + 10, desk.time_ms + 1_000 * (n + 1))
        if crash:
            desk.paper.on_tick(quote)  # the broker fills; the engine dies before it records
        else:
            desk.tick(bid)
    return desk


def test_a_crash_between_accept_and_fill_loses_nothing_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    crashed = run_until_the_crash(tmp_path / "crashed", crash=True)
    assert crashed.engine.order_by_key("k1").state is S.ACCEPTED  # fills not recorded
    del crashed

    recovered = Desk(tmp_path / "crashed", recover=False)
    recovery = recovered.engine.recover()
    assert (recovery.applied_events, recovery.resent) == (3, ())
    control = run_until_the_crash(tmp_path / "control", crash=False)
    for desk in (recovered, control):  # the tick stream goes on from the last acked tick
        desk.time_ms = 6_000
        desk.tick(110_040)

    order = recovered.engine.order_by_key("k1")
    assert (order.state, order.filled_volume) == (S.FILLED, Decimal("1.2"))
    assert recovered.broker_rows() == [("k1", 1)]
    assert [f.deal_id for f in recovered.store.fills("paper")] == ["D1", "D2", "D3"]
    assert recovered.engine.reports_since(0) == control.engine.reports_since(0)
    assert recovered.engine.positions() == control.engine.positions()
    assert recovered.engine.account() == control.engine.account()
    assert recovered.engine.equity_identity_holds()


def test_after_recovery_the_stop_loss_still_protects_the_position(tmp_path: Path) -> None:
    crashed = run_until_the_crash(tmp_path, crash=True)
    del crashed
    desk = Desk(tmp_path)
    desk.time_ms = 6_000
    reports = desk.tick(108_500)
    assert [r.state for r in reports][-1] is S.FILLED
    assert reports[-1].idempotency_key == "broker:sl:P1"
    assert desk.engine.positions() == []


def report_states(reports: Sequence[ExecutionReport]) -> list[tuple[str, OrderState]]:
    return [(r.idempotency_key, r.state) for r in reports]


def test_each_report_of_an_order_is_written_once_across_a_crash(tmp_path: Path) -> None:
    crashed = run_until_the_crash(tmp_path, crash=True)
    del crashed
    desk = Desk(tmp_path)
    assert report_states(desk.engine.reports_since(0)) == [
        ("k1", S.NEW),
        ("k1", S.ACCEPTED),
        ("k1", S.PARTIALLY_FILLED),
        ("k1", S.PARTIALLY_FILLED),
        ("k1", S.FILLED),
    ]
    assert dataclasses.replace(desk.engine.reports_since(4)[0], seq=0).fill_volume == Decimal("0.2")


# --- the trading day -----------------------------------------------------------------


def test_the_day_starts_at_the_last_equity_before_midnight_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    desk = Desk(tmp_path)
    desk.tick(110_000)
    desk.engine.submit(buy(volume="0.5"))
    desk.tick(110_000)  # fills the buy
    desk.tick(110_400)
    before_midnight = desk.engine.account().equity
    assert desk.engine.account().start_of_day_equity == Decimal("10000")  # the deposit
    desk.time_ms = 86_400_000  # the next tick is on the next UTC day
    desk.tick(109_000)
    account = desk.engine.account()
    assert account.start_of_day_equity == before_midnight
    assert account.equity < account.start_of_day_equity
    assert account.market_time_ms == 86_401_000
    desk.store.close()
    desk.paper.close()
    again = Desk(tmp_path)
    # Ticks that changed nothing were not stored: the feed resumes after the last stored
    # quote (every tick here is seq 0) and replays the day's first tick.
    assert again.engine.resume_tick_seq == 1
    again.time_ms = 86_400_000
    again.tick(109_000)
    # The day's record is kept, not recomputed from the stale quotes of the restart.
    assert again.engine.account().start_of_day_equity == before_midnight

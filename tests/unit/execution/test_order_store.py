"""Order store: SQLite file, constraints, append-only reports, and nothing lost on restart."""

from __future__ import annotations

import dataclasses
import sqlite3
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from quantmesh.services.execution.accounts import Fill, Quote
from quantmesh.services.execution.broker import (
    FixedLatency,
    NoSlippage,
    PaperBroker,
    PaperBrokerConfig,
)
from quantmesh.services.execution.core import ExecutionEngine
from quantmesh.services.execution.orders import (
    Order,
    OrderEvent,
    OrderRequest,
    OrderState,
    Origin,
    Side,
    TimeInForce,
    new_order,
    transition,
)
from quantmesh.services.execution.store import ExecutionStore, default_store_path, report_of
from quantmesh.services.marketdata.sources import EURUSD, TickColumns
from quantmesh.storage.relational import IntegrityError


def an_order(
    n: int, key: str = "", account: str = "paper", created: int = 1_000, symbol: str = "EURUSD"
) -> Order:
    request = OrderRequest(key or f"k{n}", symbol, Side.BUY, Decimal("0.07"))
    return new_order(request, f"O{n}", account, created, Origin.CLIENT)


@pytest.fixture
def store(tmp_path: Path) -> ExecutionStore:
    return ExecutionStore(tmp_path / "execution.sqlite3")


def test_the_default_file_lives_under_quantmesh_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QUANTMESH_HOME", raising=False)
    assert default_store_path() == Path("var/execution/execution.sqlite3")
    monkeypatch.setenv("QUANTMESH_HOME", str(tmp_path))
    store = ExecutionStore()
    assert store.path == tmp_path / "execution" / "execution.sqlite3"
    assert store.path.exists()


def test_the_database_runs_in_wal_mode(store: ExecutionStore) -> None:
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_an_idempotency_key_is_unique_per_account(store: ExecutionStore) -> None:
    with store.transaction() as tx:
        tx.insert_order(an_order(1, key="same"))
        tx.insert_order(an_order(2, key="same", account="other"))
    with pytest.raises(IntegrityError, match=r"(?i)unique|duplicate"), store.transaction() as tx:
        tx.insert_order(an_order(3, key="same"))
    assert store.order("O3") is None
    assert store.order_by_key("paper", "same") == an_order(1, key="same")


def test_orders_round_trip_exactly(store: ExecutionStore) -> None:
    order = dataclasses.replace(
        an_order(1), stop_loss=109_000, take_profit=None, traceparent="00-ab-cd-01"
    )
    with store.transaction() as tx:
        tx.insert_order(order)
    assert store.order("O1") == order
    assert store.order("O1").volume.as_tuple() == Decimal("0.07").as_tuple()  # type: ignore[union-attr]


def test_a_failed_transaction_leaves_nothing_behind(store: ExecutionStore) -> None:
    def write_then_fail() -> None:
        with store.transaction() as tx:
            tx.insert_order(an_order(1))
            tx.append_report(report_of(an_order(1), 1_000))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_then_fail()
    assert store.order("O1") is None
    assert store.last_report_seq() == -1


def test_reports_are_numbered_from_zero_without_gaps_and_resume_from_a_seq(
    store: ExecutionStore,
) -> None:
    for n in range(5):
        with store.transaction() as tx:
            tx.insert_order(an_order(n))
            tx.append_report(report_of(an_order(n), 1_000 + n))
    assert [r.seq for r in store.reports_since(0)] == [0, 1, 2, 3, 4]
    assert [r.order_id for r in store.reports_since(3)] == ["O3", "O4"]
    assert [r.seq for r in store.reports_since(1, limit=2)] == [1, 2]
    assert store.reports_since(5) == []
    assert store.reports_since(0)[2].report_id == "R2"


def test_reports_are_append_only(store: ExecutionStore) -> None:
    with store.transaction() as tx:
        tx.insert_order(an_order(1))
        tx.append_report(report_of(an_order(1), 1_000))
    with sqlite3.connect(store.path) as db:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("UPDATE execution_reports SET body = '{}'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("DELETE FROM execution_reports")


def test_a_deal_is_booked_once(store: ExecutionStore) -> None:
    deal = Fill(
        "D1",
        "O1",
        "P1",
        "EURUSD",
        Side.BUY,
        Decimal("0.07"),
        110_000,
        Decimal("0.25"),
        2_000,
        False,
    )
    with store.transaction() as tx:
        tx.insert_order(an_order(1))
        tx.insert_fill("paper", deal)
    with pytest.raises(IntegrityError), store.transaction() as tx:
        tx.insert_fill("paper", deal)
    assert store.fills("paper") == [deal]


def test_orders_list_newest_first_filtered_and_paged(store: ExecutionStore) -> None:
    with store.transaction() as tx:
        for n in range(1, 6):
            tx.insert_order(an_order(n, created=1_000 * n, symbol="EURUSD" if n % 2 else "GBPUSD"))
        first = an_order(1, created=1_000)
        tx.update_order(first, transition(first, OrderEvent.ACCEPT, 9_000))
    ids = [o.order_id for _, o in store.orders("paper")]
    assert ids == ["O5", "O4", "O3", "O2", "O1"]
    assert [o.order_id for _, o in store.orders("paper", symbol="GBPUSD")] == ["O4", "O2"]
    assert [o.order_id for _, o in store.orders("paper", states=[OrderState.ACCEPTED])] == ["O1"]
    window = store.orders("paper", from_time_ms=2_000, to_time_ms=4_000)
    assert [o.order_id for _, o in window] == ["O3", "O2"]
    page = store.orders("paper", limit=2)
    assert [o.order_id for _, o in store.orders("paper", before_seq=page[-1][0])] == [
        "O3",
        "O2",
        "O1",
    ]
    assert store.orders("other") == []


def test_quotes_are_remembered(store: ExecutionStore) -> None:
    with store.transaction() as tx:
        tx.save_quotes([Quote("EURUSD", 110_000, 110_010, 5_000, 42)])
    assert store.quotes() == {"EURUSD": Quote("EURUSD", 110_000, 110_010, 5_000, 42)}


def test_a_restart_brings_back_orders_positions_balance_and_the_report_seq(tmp_path: Path) -> None:
    config = PaperBrokerConfig(FixedLatency(0), NoSlippage(), lots_per_tick=Decimal("1"))
    symbols = {"EURUSD": EURUSD}

    def engine() -> ExecutionEngine:
        broker = PaperBroker(tmp_path / "broker.sqlite3", symbols, config)
        built = ExecutionEngine(ExecutionStore(tmp_path / "e.sqlite3"), broker, symbols=symbols)
        built.recover()
        return built

    def tick(target: ExecutionEngine, n: int, bid: int) -> None:
        target.on_ticks(
            TickColumns(
                n,
                np.zeros(1, np.uint32),
                np.array([1_000 * n]),
                np.array([bid]),
                np.array([bid + 10]),
                np.ones(1),
            ),
            ["EURUSD"],
        )

    first = engine()
    tick(first, 1, 110_000)
    gtc = TimeInForce.GTC
    first.submit(
        OrderRequest(
            "a",
            "EURUSD",
            Side.BUY,
            Decimal("1.5"),
            stop_loss=109_000,
            time_in_force=gtc,
            deviation_points=500,
        )
    )
    first.submit(OrderRequest("b", "EURUSD", Side.SELL, Decimal("0.2"), deviation_points=500))
    tick(first, 2, 110_020)
    before = (
        first.orders()[0],
        first.positions(),
        first.account(),
        first.reports_since(0),
    )
    del first

    second = engine()
    after = (second.orders()[0], second.positions(), second.account(), second.reports_since(0))
    assert after == before
    assert second.order_by_key("a").state is OrderState.PARTIALLY_FILLED
    # Work continues where it stopped: the rest of "a" fills, and seqs go on without a gap.
    tick(second, 3, 110_030)
    assert second.order_by_key("a").state is OrderState.FILLED
    seqs = [r.seq for r in second.reports_since(0)]
    assert seqs == list(range(len(seqs)))
    assert second.equity_identity_holds()

"""Execution's order store on both relational adapters: SQLite and PostgreSQL.

Orders and their reports commit together or not at all; the order state machine and the
append-only report log are enforced by the database itself; idempotency keys are unique
per account; fills and positions read back in booking order.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from quantmesh.services.execution.accounts import Fill, Leg, Position, Quote
from quantmesh.services.execution.orders import (
    OrderRequest,
    OrderState,
    OrderType,
    Origin,
    Side,
    TimeInForce,
    new_order,
)
from quantmesh.services.execution.store import AccountRecord, ExecutionStore, report_of
from quantmesh.storage.relational import IntegrityError


@pytest.fixture
def store(database_url: str, tmp_path: Path) -> Iterator[ExecutionStore]:
    opened = ExecutionStore(tmp_path / "unused.sqlite3", database=database_url)
    yield opened
    opened.close()


def order(n: int, key: str = "", account: str = "paper"):  # type: ignore[no-untyped-def]
    request = OrderRequest(
        idempotency_key=key or f"k{n}",
        symbol="EURUSD",
        side=Side.BUY,
        volume=Decimal("0.10"),
        type=OrderType.MARKET,
        time_in_force=TimeInForce.GTC,
        signal_id=f"sig-{n}",
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    return new_order(request, f"O{n}", account, 1_000 + n, Origin.CLIENT)


def test_an_order_and_its_report_commit_together(store: ExecutionStore) -> None:
    first = order(1)
    with store.transaction() as tx:
        tx.insert_order(first)
        report = tx.append_report(report_of(first, 1_001))
    assert report.seq == 0
    assert store.order("O1") == first
    assert store.order_by_key("paper", "k1") == first

    def fail_midway() -> None:
        with store.transaction() as tx:
            tx.insert_order(order(2))
            tx.append_report(report_of(order(2), 1_002))
            raise RuntimeError("the broker call failed")

    with pytest.raises(RuntimeError):
        fail_midway()
    assert store.order("O2") is None
    assert [r.seq for r in store.reports_since(0)] == [0]
    assert store.last_report_seq() == 0
    assert store.reports_since(0)[0].traceparent == first.traceparent


def test_the_database_enforces_the_state_machine(store: ExecutionStore) -> None:
    placed = order(1)
    with store.transaction() as tx:
        tx.insert_order(placed)
    accepted = placed.__class__(**{**_fields(placed), "state": OrderState.ACCEPTED})
    with store.transaction() as tx:
        tx.update_order(placed, accepted)
    assert store.order("O1").state is OrderState.ACCEPTED  # type: ignore[union-attr]
    with (
        pytest.raises(IntegrityError, match="illegal order state transition"),
        store.transaction() as tx,
    ):
        tx._db.execute("UPDATE execution_orders SET state = ? WHERE order_id = 'O1'", 1)
    with pytest.raises(IntegrityError, match="never deleted"), store.transaction() as tx:
        tx._db.execute("DELETE FROM execution_orders")
    with pytest.raises(IntegrityError, match="state NEW first"), store.transaction() as tx:
        tx.insert_order(accepted.__class__(**{**_fields(order(2)), "state": OrderState.ACCEPTED}))


def test_keys_are_unique_per_account_and_reports_append_only(store: ExecutionStore) -> None:
    with store.transaction() as tx:
        tx.insert_order(order(1, key="same"))
        tx.insert_order(order(2, key="same", account="other"))
        tx.append_report(report_of(order(1, key="same"), 1_001))
    with pytest.raises(IntegrityError), store.transaction() as tx:
        tx.insert_order(order(3, key="same"))
    with pytest.raises(IntegrityError, match="append-only"), store.transaction() as tx:
        tx._db.execute("UPDATE execution_reports SET body = '{}'")


def test_fills_positions_accounts_and_quotes_round_trip(store: ExecutionStore) -> None:
    fills = [
        Fill(
            "D2",
            "O1",
            "P1",
            "EURUSD",
            Side.BUY,
            Decimal("0.05"),
            110_000,
            Decimal("0.25"),
            2_000,
            False,
        ),
        Fill(
            "D1",
            "O1",
            "P1",
            "EURUSD",
            Side.BUY,
            Decimal("0.05"),
            110_010,
            Decimal("0.25"),
            2_000,
            False,
        ),
    ]
    position = Position(
        position_id="P1",
        account_id="paper",
        symbol="EURUSD",
        side=Side.BUY,
        legs=(Leg(Decimal("0.10"), 110_005),),
        stop_loss=109_000,
        take_profit=None,
        open_time_ms=2_000,
        order_id="O1",
        signal_id="sig-1",
    )
    with store.transaction() as tx:
        tx.insert_order(order(1))
        for fill in fills:
            tx.insert_fill("paper", fill)
        tx.save_position(position)
        tx.save_position(position)  # saved again: updated in place, not duplicated
        tx.save_account(
            AccountRecord(
                "paper", "USD", Decimal(10_000), Decimal("9999.50"), Decimal(0), Decimal("0.50"), 7
            )
        )
        tx.save_quotes([Quote("EURUSD", 110_000, 110_010, 2_000, 5)])
        tx.save_day_start("paper", 19_000, Decimal(10_000))
        tx.save_day_start("paper", 19_000, Decimal(1))  # the first record of a day wins
        assert [tx.next_id("order"), tx.next_id("order"), tx.next_id("deal")] == [1, 2, 1]
    assert store.fills("paper") == fills  # booking order, not key order
    assert store.positions("paper") == [position]
    account = store.account("paper")
    assert account is not None
    assert (account.balance, account.broker_cursor) == (Decimal("9999.50"), 7)
    assert store.quotes()["EURUSD"].ask == 110_010
    assert store.day_start_equity("paper", 19_000) == Decimal(10_000)


def _fields(item: object) -> dict[str, object]:
    return {name: getattr(item, name) for name in item.__slots__}  # type: ignore[attr-defined]

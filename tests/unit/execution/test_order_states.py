"""Order state machine: every legal edge, illegal ones refused, and none persisted."""

from __future__ import annotations

import dataclasses
import sqlite3
from decimal import Decimal
from pathlib import Path

import grpc
import pytest

from quantmesh.runtime.errors import FailedPrecondition, InvalidArgument
from quantmesh.services.execution.orders import (
    FINAL_STATES,
    ORDER_STATE_TABLE,
    InvalidTransition,
    Order,
    OrderEvent,
    OrderRequest,
    OrderState,
    Origin,
    Side,
    check_idempotency_key,
    new_order,
    next_state,
    transition,
    with_fill,
)
from quantmesh.services.execution.store import ExecutionStore
from quantmesh.storage.relational import IntegrityError

S, E = OrderState, OrderEvent
FILL_EVENTS = (E.FILL, E.PARTIAL_FILL)


def an_order(state: OrderState = S.NEW, volume: str = "1.0", filled: str = "0") -> Order:
    request = OrderRequest("key-1", "EURUSD", Side.BUY, Decimal(volume))
    order = new_order(request, "O1", "paper", 1_000, Origin.CLIENT)
    return dataclasses.replace(order, state=state, filled_volume=Decimal(filled))


def apply(order: Order, event: OrderEvent) -> Order:
    """Drive ``order`` through ``event`` the way the engine does."""
    if event is E.FILL:
        return with_fill(order, order.volume - order.filled_volume, 108_000, Decimal("3.5"), 2_000)
    if event is E.PARTIAL_FILL:
        return with_fill(order, Decimal("0.1"), 108_000, Decimal("0.35"), 2_000)
    return transition(order, event, 2_000, reason="why", broker_order_id="P1")


@pytest.mark.parametrize(("edge", "target"), list(ORDER_STATE_TABLE.items()), ids=str)
def test_every_legal_edge_leads_where_the_table_says(
    edge: tuple[OrderState, OrderEvent], target: OrderState
) -> None:
    state, event = edge
    assert next_state(state, event) is target
    filled = "0.5" if state is S.PARTIALLY_FILLED else "0"
    after = apply(an_order(state, filled=filled), event)
    assert after.state is target
    assert after.updated_time_ms == 2_000


@pytest.mark.parametrize("state", sorted(FINAL_STATES))
@pytest.mark.parametrize("event", list(OrderEvent))
def test_final_states_accept_no_event(state: OrderState, event: OrderEvent) -> None:
    with pytest.raises(InvalidTransition, match="final state"):
        next_state(state, event)
    with pytest.raises(InvalidTransition):
        apply(an_order(state, filled="1.0" if state is S.FILLED else "0"), event)


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (S.NEW, E.FILL),  # the broker must acknowledge before it fills
        (S.NEW, E.PARTIAL_FILL),
        (S.NEW, E.CANCEL),  # a NEW order may be at the broker: only recovery moves it
        (S.NEW, E.EXPIRE),
        (S.ACCEPTED, E.ACCEPT),
        (S.PARTIALLY_FILLED, E.ACCEPT),
        (S.PARTIALLY_FILLED, E.REJECT),  # part of it traded: the rest is cancelled instead
    ],
)
def test_a_sample_of_illegal_edges_raises(state: OrderState, event: OrderEvent) -> None:
    with pytest.raises(InvalidTransition, match=f"in state {state.name} cannot"):
        next_state(state, event)


def test_the_table_leaves_no_working_state_stuck_and_no_final_state_open() -> None:
    sources = {state for state, _ in ORDER_STATE_TABLE}
    assert sources == {S.NEW, S.ACCEPTED, S.PARTIALLY_FILLED}
    assert not sources & FINAL_STATES
    reachable, frontier = {S.NEW}, [S.NEW]
    while frontier:
        state = frontier.pop()
        for (source, _), target in ORDER_STATE_TABLE.items():
            if source is state and target not in reachable:
                reachable.add(target)
                frontier.append(target)
    assert reachable == set(OrderState)


def test_an_invalid_transition_is_a_failed_precondition() -> None:
    assert issubclass(InvalidTransition, FailedPrecondition)
    assert InvalidTransition.status is grpc.StatusCode.FAILED_PRECONDITION


def test_partial_fills_accumulate_volume_commission_and_an_exact_average_price() -> None:
    order = transition(an_order(volume="0.3"), E.ACCEPT, 1_500, broker_order_id="P7")
    order = with_fill(order, Decimal("0.1"), 108_000, Decimal("0.35"), 2_000)
    assert (order.state, order.remaining_volume) == (S.PARTIALLY_FILLED, Decimal("0.2"))
    order = with_fill(order, Decimal("0.1"), 108_001, Decimal("0.35"), 3_000)
    order = with_fill(order, Decimal("0.1"), 108_003, Decimal("0.35"), 4_000)
    assert order.state is S.FILLED
    assert order.remaining_volume == 0
    assert order.average_fill_price == Decimal("108001.3333333333333333333333")
    assert order.fill_notional == Decimal("32400.4")
    assert order.commission == Decimal("1.05")
    assert order.broker_order_id == "P7"


def test_a_fill_larger_than_the_remainder_is_refused() -> None:
    order = transition(an_order(volume="0.3"), E.ACCEPT, 1_500)
    with pytest.raises(InvalidTransition, match="does not fit"):
        with_fill(order, Decimal("0.4"), 108_000, Decimal(0), 2_000)
    with pytest.raises(InvalidTransition, match="does not fit"):
        with_fill(order, Decimal(0), 108_000, Decimal(0), 2_000)


def test_fills_cannot_pose_as_plain_transitions() -> None:
    with pytest.raises(ValueError, match="with_fill"):
        transition(an_order(S.ACCEPTED), E.FILL, 2_000)


def test_a_reason_is_kept_on_reject_cancel_and_expire() -> None:
    order = transition(an_order(), E.REJECT, 2_000, reason="unknown symbol")
    assert (order.state, order.reject_reason) == (S.REJECTED, "unknown symbol")


@pytest.mark.parametrize("key", ["", "a" * 129, "has space", "ünïcode", "broker:sl:P1"])
def test_bad_idempotency_keys_are_invalid_arguments(key: str) -> None:
    with pytest.raises(InvalidArgument, match="idempotency key"):
        check_idempotency_key(key)


def test_good_idempotency_keys_pass() -> None:
    for key in ("a", "0191e3c4-7d2a-7b3c-9f00-000000000001", "risk:sig.1_x", "k" * 128):
        assert check_idempotency_key(key) == key


# --- persisted state follows the table -------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> ExecutionStore:
    return ExecutionStore(tmp_path / "execution.sqlite3")


def test_the_store_refuses_to_persist_an_illegal_transition(store: ExecutionStore) -> None:
    order = an_order()
    with store.transaction() as tx:
        tx.insert_order(order)
    forged = dataclasses.replace(order, state=S.FILLED, filled_volume=order.volume)
    with (
        pytest.raises(InvalidTransition, match="NEW → FILLED is illegal"),
        store.transaction() as tx,
    ):
        tx.update_order(order, forged)
    assert store.order("O1") == order


def test_even_raw_sql_cannot_move_an_order_along_an_illegal_edge(store: ExecutionStore) -> None:
    with store.transaction() as tx:
        tx.insert_order(an_order())
    db = sqlite3.connect(store.path)
    with pytest.raises(sqlite3.IntegrityError, match="illegal order state transition"):
        db.execute("UPDATE execution_orders SET state = ? WHERE order_id = 'O1'", (int(S.FILLED),))
    db.execute("UPDATE execution_orders SET state = ? WHERE order_id = 'O1'", (int(S.REJECTED),))
    db.commit()
    # REJECTED is final: not even a reason may change any more.
    with pytest.raises(sqlite3.IntegrityError, match="illegal order state transition"):
        db.execute("UPDATE execution_orders SET reject_reason = 'edited' WHERE order_id = 'O1'")
    with pytest.raises(sqlite3.IntegrityError, match="never deleted"):
        db.execute("DELETE FROM execution_orders")
    db.close()
    assert store.order("O1") is not None
    assert store.order("O1").state is S.REJECTED  # type: ignore[union-attr]


def test_orders_are_recorded_in_state_new_only(store: ExecutionStore) -> None:
    with pytest.raises(IntegrityError, match="state NEW first"), store.transaction() as tx:
        tx.insert_order(an_order(S.ACCEPTED))
    assert store.order("O1") is None


def test_a_stale_update_is_refused(store: ExecutionStore) -> None:
    order = an_order()
    with store.transaction() as tx:
        tx.insert_order(order)
        tx.update_order(order, transition(order, E.ACCEPT, 2_000, broker_order_id="P1"))
    # ``order`` is NEW, but the row moved on: a second ACCEPT from it must not land.
    with pytest.raises(InvalidTransition), store.transaction() as tx:
        tx.update_order(order, transition(order, E.REJECT, 3_000, reason="late"))
    assert store.order("O1").state is S.ACCEPTED  # type: ignore[union-attr]

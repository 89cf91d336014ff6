"""Orders and their life as an explicit state machine.

The whole lifecycle is :data:`ORDER_STATE_TABLE`, a ``(state, event) → state`` dict a
reviewer can read top to bottom (the idea of NautilusTrader's ``_ORDER_STATE_TABLE``):
new → accepted → partially filled → filled, with rejected, cancelled and expired as the
other ways out.

FILLED, REJECTED, CANCELLED and EXPIRED are final: no event leaves them. Every change
of an order goes through :func:`transition` (or :func:`with_fill`), which raises
:class:`InvalidTransition` for a pair that is not in the table; the store enforces the
same table with a SQLite trigger, so an illegal state can be neither made nor persisted.

Values of the enums match ``quantmesh.execution.v1`` and ``quantmesh.common.v1``, so the
adapter converts them with ``int()``. Volumes are :class:`decimal.Decimal` lots, prices
integer points of the symbol. Nothing here touches the network (grpc is imported only
for the status code of :class:`AlreadyExists`, as ``runtime.errors`` does).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum, IntEnum

import grpc  # only for the status code of AlreadyExists, as runtime.errors does

from quantmesh.runtime.errors import DomainError, FailedPrecondition, InvalidArgument

ZERO = Decimal(0)
# The contract's key alphabet; "broker:" keys are reserved for orders the broker
# creates itself (stop-loss and take-profit closes), so a client can never collide.
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:-]{1,128}")
BROKER_KEY_PREFIX = "broker:"


class Side(IntEnum):
    """Trade direction; values match ``quantmesh.common.v1.Side``."""

    BUY = 1
    SELL = 2

    @property
    def sign(self) -> int:
        """+1 for a buy (long), −1 for a sell (short)."""
        return 1 if self is Side.BUY else -1

    @property
    def opposite(self) -> Side:
        """The side that closes a position of this side."""
        return Side.SELL if self is Side.BUY else Side.BUY


class OrderType(IntEnum):
    """Kind of order; values match ``quantmesh.execution.v1.OrderType``."""

    MARKET = 1
    LIMIT = 2
    STOP = 3


class TimeInForce(IntEnum):
    """How long an order works; values match ``quantmesh.execution.v1.TimeInForce``."""

    UNSPECIFIED = 0  # resolved on submission: IOC for market orders, GTC otherwise
    GTC = 1
    DAY = 2
    GTD = 3
    IOC = 4
    FOK = 5


class OrderState(IntEnum):
    """State of an order; values match ``quantmesh.execution.v1.OrderState``."""

    NEW = 1
    ACCEPTED = 2
    PARTIALLY_FILLED = 3
    FILLED = 4
    REJECTED = 5
    CANCELLED = 6
    EXPIRED = 7

    @property
    def is_final(self) -> bool:
        """True for FILLED, REJECTED, CANCELLED and EXPIRED."""
        return self in FINAL_STATES


FINAL_STATES = frozenset(
    {OrderState.FILLED, OrderState.REJECTED, OrderState.CANCELLED, OrderState.EXPIRED}
)


class OrderEvent(Enum):
    """What can happen to an order."""

    ACCEPT = "accept"  # the broker acknowledged it
    REJECT = "reject"  # execution or the broker refused it
    PARTIAL_FILL = "partial_fill"  # a fill that leaves volume working
    FILL = "fill"  # the fill that completes the volume
    CANCEL = "cancel"  # cancelled (by the client, IOC/FOK, or a vanished position)
    EXPIRE = "expire"  # its time in force ran out


class Origin(Enum):
    """Who created an order: a client, or the broker closing a position at its SL/TP."""

    CLIENT = "client"
    STOP_LOSS = "stop_loss"
    TAKE_PROFIT = "take_profit"


_S, _E = OrderState, OrderEvent
ORDER_STATE_TABLE: dict[tuple[OrderState, OrderEvent], OrderState] = {
    (_S.NEW, _E.ACCEPT): _S.ACCEPTED,
    (_S.NEW, _E.REJECT): _S.REJECTED,
    (_S.ACCEPTED, _E.PARTIAL_FILL): _S.PARTIALLY_FILLED,
    (_S.ACCEPTED, _E.FILL): _S.FILLED,
    # The broker refuses at execution time what it acknowledged: the price moved past
    # the order's deviation (MT5 "requote"), its stops are invalid at the fill price,
    # or the position it was to close is already gone (closed by its stop loss).
    (_S.ACCEPTED, _E.REJECT): _S.REJECTED,
    (_S.ACCEPTED, _E.CANCEL): _S.CANCELLED,
    (_S.ACCEPTED, _E.EXPIRE): _S.EXPIRED,
    # Self-loop: every further slice of a partly filled order is one more partial fill.
    (_S.PARTIALLY_FILLED, _E.PARTIAL_FILL): _S.PARTIALLY_FILLED,
    (_S.PARTIALLY_FILLED, _E.FILL): _S.FILLED,
    # Cancelling or expiring a partly filled order keeps the filled part (and its
    # position); only the remainder stops working. IOC remainders end here too.
    (_S.PARTIALLY_FILLED, _E.CANCEL): _S.CANCELLED,
    (_S.PARTIALLY_FILLED, _E.EXPIRE): _S.EXPIRED,
    # Deliberately absent: NEW → CANCELLED/EXPIRED. A NEW order may already be at the
    # broker (a crash between sending and recording the acknowledgement), so only
    # reconciliation with the broker may move it on; see ExecutionEngine.recover().
}


class InvalidTransition(FailedPrecondition):
    """An event that the order's state does not allow (e.g. cancelling a filled order)."""


class AlreadyExists(DomainError):
    """A known idempotency key with different order fields (the contract's ALREADY_EXISTS)."""

    status = grpc.StatusCode.ALREADY_EXISTS


def next_state(state: OrderState, event: OrderEvent) -> OrderState:
    """The state ``event`` leads to from ``state``.

    Raises
    ------
    InvalidTransition
        The pair is not in :data:`ORDER_STATE_TABLE`.
    """
    try:
        return ORDER_STATE_TABLE[(state, event)]
    except KeyError:
        final = " (a final state)" if state.is_final else ""
        raise InvalidTransition(
            f"an order in state {state.name}{final} cannot {event.value.replace('_', ' ')}"
        ) from None


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """What a client asks for: the client fields of ``quantmesh.execution.v1.Order``.

    Attributes
    ----------
    idempotency_key:
        1 to 128 characters of ``[A-Za-z0-9._:-]``, unique per account.
    symbol, side, volume:
        What to trade; ``volume`` in lots, a multiple of the symbol's volume step.
    type:
        MARKET (default), LIMIT or STOP.
    price:
        Limit or stop price in points; None for a market order.
    stop_loss, take_profit:
        Levels in points for the resulting position; None for none.
    time_in_force, expire_time_ms:
        UNSPECIFIED resolves to IOC for market orders and GTC otherwise; GTD needs
        ``expire_time_ms`` (UTC epoch ms) in the future.
    deviation_points:
        Largest adverse move of a market fill from the quote at submission; 0 means the
        engine's default.
    position_id:
        Position this order closes or reduces; empty to open a new position.
    account_id:
        Empty means the engine's account.
    signal_id, traceparent, tracestate:
        Provenance, stored and reported; trace fields are ignored by duplicate checks.
    model_name, model_version:
        The model behind the signal, so analytics can credit each version's trades.
    risk_decision:
        The approving ``quantmesh.risk.v1.RiskDecision`` with every rule's verdict, kept
        verbatim (serialized) in the order's record as evidence; opaque to the engine.
    """

    idempotency_key: str
    symbol: str
    side: Side
    volume: Decimal
    type: OrderType = OrderType.MARKET
    price: int | None = None
    stop_loss: int | None = None
    take_profit: int | None = None
    time_in_force: TimeInForce = TimeInForce.UNSPECIFIED
    expire_time_ms: int = 0
    deviation_points: int = 0
    position_id: str = ""
    account_id: str = ""
    signal_id: str = ""
    traceparent: str = ""
    tracestate: str = ""
    model_name: str = ""
    model_version: str = ""
    risk_decision: bytes = b""


# Fields that make two requests "the same order" for idempotency. Trace context is left
# out: a retry may carry a new span, and it does not change what is traded.
COMPARED_FIELDS = (
    "symbol",
    "side",
    "volume",
    "type",
    "price",
    "stop_loss",
    "take_profit",
    "time_in_force",
    "expire_time_ms",
    "deviation_points",
    "position_id",
    "signal_id",
)


@dataclass(frozen=True, slots=True)
class Order:
    """An order as execution holds it: the request plus what became of it.

    ``fill_notional`` is Σ(fill price × fill volume) in points·lots, kept exact so the
    average fill price never drifts; ``commission`` is in the account currency.
    """

    order_id: str
    account_id: str
    idempotency_key: str
    symbol: str
    side: Side
    type: OrderType
    volume: Decimal
    price: int | None
    stop_loss: int | None
    take_profit: int | None
    time_in_force: TimeInForce
    expire_time_ms: int
    deviation_points: int
    position_id: str
    signal_id: str
    traceparent: str
    tracestate: str
    origin: Origin
    state: OrderState
    created_time_ms: int
    updated_time_ms: int
    filled_volume: Decimal = ZERO
    fill_notional: Decimal = ZERO
    commission: Decimal = ZERO
    reject_reason: str = ""
    broker_order_id: str = ""
    model_name: str = ""
    model_version: str = ""
    risk_decision: bytes = b""
    # The quote (ask for a buy, bid for a sell) when the order was recorded: the broker
    # measures a market order's slippage from it, also when recovery sends it later.
    reference_price: int | None = None

    @property
    def remaining_volume(self) -> Decimal:
        """Volume still working; zero once the order is final."""
        return ZERO if self.state.is_final else self.volume - self.filled_volume

    @property
    def average_fill_price(self) -> Decimal | None:
        """Volume-weighted average fill price in (fractional) points; None before a fill."""
        if not self.filled_volume:
            return None
        return self.fill_notional / self.filled_volume

    def differences(self, request: OrderRequest) -> list[str]:
        """Names of the compared client fields in which ``request`` differs from this order."""
        return [name for name in COMPARED_FIELDS if getattr(self, name) != getattr(request, name)]


def new_order(
    request: OrderRequest, order_id: str, account_id: str, time_ms: int, origin: Origin
) -> Order:
    """The NEW order for a validated, normalised ``request``."""
    return Order(
        order_id=order_id,
        account_id=account_id,
        idempotency_key=request.idempotency_key,
        symbol=request.symbol,
        side=request.side,
        type=request.type,
        volume=request.volume,
        price=request.price,
        stop_loss=request.stop_loss,
        take_profit=request.take_profit,
        time_in_force=request.time_in_force,
        expire_time_ms=request.expire_time_ms,
        deviation_points=request.deviation_points,
        position_id=request.position_id,
        signal_id=request.signal_id,
        traceparent=request.traceparent,
        tracestate=request.tracestate,
        model_name=request.model_name,
        model_version=request.model_version,
        risk_decision=request.risk_decision,
        origin=origin,
        state=OrderState.NEW,
        created_time_ms=time_ms,
        updated_time_ms=time_ms,
    )


def transition(
    order: Order, event: OrderEvent, time_ms: int, *, reason: str = "", broker_order_id: str = ""
) -> Order:
    """``order`` after a non-fill ``event`` (fills go through :func:`with_fill`).

    Raises
    ------
    InvalidTransition
        ``event`` is not allowed in the order's state.
    """
    if event in (OrderEvent.FILL, OrderEvent.PARTIAL_FILL):
        raise ValueError("fills change volumes: use with_fill()")
    return dataclasses.replace(
        order,
        state=next_state(order.state, event),
        updated_time_ms=time_ms,
        reject_reason=reason or order.reject_reason,
        broker_order_id=broker_order_id or order.broker_order_id,
    )


def with_fill(
    order: Order, volume: Decimal, price: int, commission: Decimal, time_ms: int
) -> Order:
    """``order`` after a fill of ``volume`` lots at ``price`` points.

    The event is FILL when the fill completes the volume, PARTIAL_FILL otherwise.

    Raises
    ------
    InvalidTransition
        The order is not working, or the fill is not positive or exceeds what remains.
    """
    remaining = order.volume - order.filled_volume
    if not ZERO < volume <= remaining:
        raise InvalidTransition(
            f"order {order.order_id}: a fill of {volume} lots does not fit the {remaining} "
            "lots remaining"
        )
    event = OrderEvent.FILL if volume == remaining else OrderEvent.PARTIAL_FILL
    return dataclasses.replace(
        order,
        state=next_state(order.state, event),
        filled_volume=order.filled_volume + volume,
        fill_notional=order.fill_notional + volume * price,
        commission=order.commission + commission,
        updated_time_ms=time_ms,
    )


def check_idempotency_key(key: str) -> str:
    """Return ``key`` if it is a valid client key, else raise InvalidArgument."""
    if not isinstance(key, str) or not IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidArgument(
            f"invalid idempotency key {key!r}: use 1 to 128 characters of A-Z, a-z, 0-9 "
            "and '._:-' (risk uses the signal id)"
        )
    if key.startswith(BROKER_KEY_PREFIX):
        raise InvalidArgument(
            f"invalid idempotency key {key!r}: the prefix {BROKER_KEY_PREFIX!r} is reserved "
            "for orders the broker creates"
        )
    return key

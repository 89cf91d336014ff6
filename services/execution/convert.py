"""The one place where execution's protobuf messages meet its domain types."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Decimal

from quantmesh.common.v1 import common_pb2
from quantmesh.execution.v1 import execution_pb2
from quantmesh.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from quantmesh.services.execution.accounts import AccountState, PositionView
from quantmesh.services.execution.orders import Order, OrderRequest, OrderType, Side, TimeInForce
from quantmesh.services.execution.store import ExecutionReport
from quantmesh.services.marketdata.sources import Symbol

_NANO = Decimal("1e-9")


def lots_from_proto(lots: common_pb2.Lots) -> Decimal:
    return Decimal(lots.units) + Decimal(lots.nanos) * _NANO


def money_from_proto(money: common_pb2.Money) -> Decimal:
    """``units + nanos / 1e9`` exactly (the currency is the caller's to check)."""
    return Decimal(money.units) + Decimal(money.nanos) * _NANO


def _units_nanos(amount: Decimal) -> tuple[int, int]:
    # Lots and Money share the google.type.Money layout: whole units plus billionths.
    units = int(amount)
    return units, int(((amount - units) / _NANO).to_integral_value(ROUND_HALF_EVEN))


def lots_to_proto(volume: Decimal) -> common_pb2.Lots:
    units, nanos = _units_nanos(volume)
    return common_pb2.Lots(units=units, nanos=nanos)


def money_to_proto(amount: Decimal, currency: str) -> common_pb2.Money:
    units, nanos = _units_nanos(amount)
    return common_pb2.Money(currency=currency, units=units, nanos=nanos)


def price_to_proto(points: int | Decimal | None, digits: int) -> common_pb2.Price | None:
    if points is None:
        return None
    whole = int(Decimal(points).to_integral_value(ROUND_HALF_EVEN))
    return common_pb2.Price(points=whole, digits=digits)


def _points(
    order: execution_pb2.Order, field: str, symbol: Symbol, required: bool = False
) -> int | None:
    if not order.HasField(field):  # type: ignore[arg-type]
        if required:
            raise InvalidArgument(f"{field} is required for this order type")
        return None
    price: common_pb2.Price = getattr(order, field)
    if price.digits != symbol.digits:
        raise InvalidArgument(
            f"{field} has {price.digits} digits but {symbol.name} quotes with {symbol.digits}"
        )
    return int(price.points)


def order_request_from_proto(
    order: execution_pb2.Order, account_id: str, symbols: Mapping[str, Symbol]
) -> OrderRequest:
    """Check an order submitted by a client and turn it into the engine's request.

    Execution refuses orders without the risk decision that approved them: only orders
    risk approved may trade (FAILED_PRECONDITION otherwise).
    """
    if order.account_id and order.account_id != account_id:
        raise NotFound(
            f"unknown account {order.account_id!r}; this execution serves {account_id!r}"
        )
    symbol = symbols.get(order.symbol)
    if symbol is None:
        raise NotFound(f"unknown symbol {order.symbol!r}; execution trades: {', '.join(symbols)}")
    if order.side not in (common_pb2.SIDE_BUY, common_pb2.SIDE_SELL):
        raise InvalidArgument("side must be SIDE_BUY or SIDE_SELL")
    if not order.HasField("risk_decision"):
        raise FailedPrecondition("an order needs the risk decision that approved it")
    decision = order.risk_decision
    if not decision.approved:
        raise FailedPrecondition(f"risk rejected signal {decision.signal_id!r}: {decision.reason}")
    if order.signal_id and decision.signal_id != order.signal_id:
        raise FailedPrecondition(
            f"the risk decision is for signal {decision.signal_id!r}, the order for "
            f"{order.signal_id!r}"
        )
    order_type = OrderType(order.type or OrderType.MARKET)
    return OrderRequest(
        idempotency_key=order.idempotency_key,
        symbol=order.symbol,
        side=Side(order.side),
        volume=lots_from_proto(order.volume),
        type=order_type,
        price=_points(order, "price", symbol, required=order_type is not OrderType.MARKET),
        stop_loss=_points(order, "stop_loss", symbol),
        take_profit=_points(order, "take_profit", symbol),
        time_in_force=TimeInForce(order.time_in_force),
        expire_time_ms=order.expire_time_ms,
        deviation_points=order.deviation_points,
        position_id=order.position_id,
        account_id=account_id,
        signal_id=order.signal_id,
        traceparent=order.trace.traceparent,
        tracestate=order.trace.tracestate,
        model_name=order.model_name,
        model_version=order.model_version,
        # Deterministic bytes: a retry with the same decision compares equal in the store.
        risk_decision=decision.SerializeToString(deterministic=True),
    )


def order_to_proto(order: Order, digits: int, currency: str) -> execution_pb2.Order:
    message = execution_pb2.Order(
        idempotency_key=order.idempotency_key,
        account_id=order.account_id,
        symbol=order.symbol,
        side=int(order.side),  # type: ignore[arg-type]  # values mirror the enum
        type=int(order.type),  # type: ignore[arg-type]
        volume=lots_to_proto(order.volume),
        price=price_to_proto(order.price, digits),
        stop_loss=price_to_proto(order.stop_loss, digits),
        take_profit=price_to_proto(order.take_profit, digits),
        time_in_force=int(order.time_in_force),  # type: ignore[arg-type]
        expire_time_ms=order.expire_time_ms,
        deviation_points=order.deviation_points,
        position_id=order.position_id,
        signal_id=order.signal_id,
        model_name=order.model_name,
        model_version=order.model_version,
        order_id=order.order_id,
        state=int(order.state),  # type: ignore[arg-type]
        filled_volume=lots_to_proto(order.filled_volume),
        average_fill_price=price_to_proto(order.average_fill_price, digits),
        commission=money_to_proto(order.commission, currency),
        reject_reason=order.reject_reason,
        broker_order_id=order.broker_order_id,
        created_time_ms=order.created_time_ms,
        updated_time_ms=order.updated_time_ms,
    )
    message.trace.traceparent = order.traceparent
    message.trace.tracestate = order.tracestate
    if order.risk_decision:
        message.risk_decision.ParseFromString(order.risk_decision)
    return message


def position_to_proto(view: PositionView, digits: int, currency: str) -> execution_pb2.Position:
    position = view.position
    return execution_pb2.Position(
        position_id=position.position_id,
        account_id=position.account_id,
        symbol=position.symbol,
        side=int(position.side),  # type: ignore[arg-type]
        volume=lots_to_proto(position.volume),
        open_price=price_to_proto(position.open_price, digits),
        current_price=price_to_proto(view.current_price, digits),
        stop_loss=price_to_proto(position.stop_loss, digits),
        take_profit=price_to_proto(position.take_profit, digits),
        unrealized_pnl=money_to_proto(view.unrealized_pnl, currency),
        swap=money_to_proto(Decimal(0), currency),
        commission=money_to_proto(position.commission, currency),
        open_time_ms=position.open_time_ms,
        signal_id=position.signal_id,
    )


def account_to_proto(account: AccountState) -> execution_pb2.Account:
    currency = account.currency
    return execution_pb2.Account(
        account_id=account.account_id,
        broker=account.broker,
        currency=currency,
        balance=money_to_proto(account.balance, currency),
        equity=money_to_proto(account.equity, currency),
        margin=money_to_proto(account.margin, currency),
        free_margin=money_to_proto(account.free_margin, currency),
        margin_level_bps=account.margin_level_bps,
        leverage=account.leverage,
        realized_pnl_today=money_to_proto(account.realized_pnl_today, currency),
        open_positions=account.open_positions,
        start_of_day_equity=money_to_proto(account.start_of_day_equity, currency),
        market_time_ms=account.market_time_ms,
    )


def report_to_proto(
    report: ExecutionReport, digits: int, currency: str
) -> execution_pb2.ExecutionReport:
    message = execution_pb2.ExecutionReport(
        seq=report.seq,
        report_id=report.report_id,
        order_id=report.order_id,
        idempotency_key=report.idempotency_key,
        account_id=report.account_id,
        symbol=report.symbol,
        side=int(report.side),  # type: ignore[arg-type]
        state=int(report.state),  # type: ignore[arg-type]
        fill_volume=lots_to_proto(report.fill_volume),
        fill_price=price_to_proto(report.fill_price, digits),
        filled_volume=lots_to_proto(report.filled_volume),
        remaining_volume=lots_to_proto(report.remaining_volume),
        average_fill_price=price_to_proto(report.average_fill_price, digits),
        commission=money_to_proto(report.commission, currency),
        reason=report.reason,
        broker_order_id=report.broker_order_id,
        broker_deal_id=report.broker_deal_id,
        position_id=report.position_id,
        signal_id=report.signal_id,
        model_name=report.model_name,
        model_version=report.model_version,
        time_ms=report.time_ms,
    )
    message.trace.traceparent = report.traceparent
    message.trace.tracestate = report.tracestate
    return message

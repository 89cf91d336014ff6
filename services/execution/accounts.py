"""Positions and the account, in exact decimals (MT5-like hedging accounting).

**Hedging, not netting.** Every filled entry order opens its own position (id: the
broker's id of that order, as MT5's position ticket), with the order's stop loss and
take profit. Further fills of the same order add to that position; an order with a
``position_id`` closes or reduces that position. A buy and a sell of the same symbol
are two positions, never offset.

**Money** is :class:`decimal.Decimal` in the account currency, booked to the cent
(:data:`MONEY_QUANTUM`, half-even) once per fill, as a broker books a deal. Prices are
integer points with the symbol's digits; lots are Decimal. The profit of closing
``v`` lots of a leg opened at ``p`` at price ``x`` is::

    (x − p) × direction × v × contract_size × point × rate(quote → account)

A position keeps its entry fills as legs and a close consumes them first in, first out,
so profit is exact in integer points until the one conversion and rounding. The rate
is the mid of the quote that links the two currencies, exact as a fraction: 1 for a
symbol quoted in the account currency (EURUSD in USD), ``1 / USDJPY`` for JPY,
``GBPUSD`` for EURGBP's GBP (the rule risk sizes with).

The books balance exactly: ``balance = start + realized − commission`` and
``equity = balance + unrealized``; :meth:`Book.equity_identity_holds` checks it against
totals kept apart from the balance (or a ledger's). Nothing here imports grpc.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

from quantmesh.runtime.errors import FailedPrecondition
from quantmesh.services.execution.orders import Side
from quantmesh.services.marketdata.sources import Symbol

ZERO = Decimal(0)
ONE = Decimal(1)
MONEY_QUANTUM = Decimal("0.01")
# Products of a few 5-digit prices, lots and contract sizes stay exact at 60 digits;
# only the division by a conversion quote rounds, and money is rounded right after.
PRECISION = 60
DEFAULT_LEVERAGE = 100


def money(amount: Decimal) -> Decimal:
    """``amount`` rounded half-even to :data:`MONEY_QUANTUM`."""
    return amount.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN)


def decimal_of(value: float | str | Decimal) -> Decimal:
    """A symbol attribute (float in :class:`Symbol`) as the decimal it was written as."""
    return value if isinstance(value, Decimal) else Decimal(str(value))


@dataclass(frozen=True, slots=True)
class Quote:
    """The last tick of a symbol: bid and ask in points, market time and stream seq."""

    symbol: str
    bid: int
    ask: int
    time_ms: int
    seq: int = -1

    def close_price(self, side: Side) -> int:
        """Price a position of ``side`` closes at: the bid for a long, the ask for a short."""
        return self.bid if side is Side.BUY else self.ask


def conversion_symbol(
    currency: str, account_currency: str, symbols: Mapping[str, Symbol]
) -> tuple[str, bool] | None:
    """``(symbol, inverse)`` whose quote converts ``currency`` into ``account_currency``.

    None when no conversion is needed. ``inverse`` is True for ``1 / mid``. Raises
    FailedPrecondition when no symbol links the two currencies.
    """
    if currency == account_currency:
        return None
    for name in sorted(symbols):
        symbol = symbols[name]
        if (symbol.currency_base, symbol.currency_profit) == (currency, account_currency):
            return name, False
        if (symbol.currency_base, symbol.currency_profit) == (account_currency, currency):
            return name, True
    raise FailedPrecondition(
        f"no symbol converts {currency} into the account currency {account_currency}: "
        f"add {currency}{account_currency} or {account_currency}{currency}"
    )


def conversion_rate(
    symbol: Symbol,
    account_currency: str,
    symbols: Mapping[str, Symbol],
    quotes: Mapping[str, Quote],
) -> tuple[Decimal, Decimal]:
    """Exact rate ``num / den`` from ``symbol``'s quote currency to the account currency.

    Raises
    ------
    FailedPrecondition
        No symbol links the currencies, or it has no quote yet.
    """
    link = conversion_symbol(symbol.currency_profit, account_currency, symbols)
    if link is None:
        return ONE, ONE
    name, inverse = link
    quote = quotes.get(name)
    if quote is None:
        raise FailedPrecondition(
            f"no {name} quote yet to convert {symbol.name} profit into {account_currency}"
        )
    mid = Decimal(quote.bid + quote.ask) / 2 * Decimal(1).scaleb(-symbols[name].digits)
    return (ONE, mid) if inverse else (mid, ONE)


def points_value(
    points_lots: Decimal,
    symbol: Symbol,
    account_currency: str,
    symbols: Mapping[str, Symbol],
    quotes: Mapping[str, Quote],
) -> Decimal:
    """Money worth of ``points × lots`` of ``symbol`` in the account currency, to the cent."""
    num, den = conversion_rate(symbol, account_currency, symbols, quotes)
    with localcontext() as ctx:
        ctx.prec = PRECISION
        point = Decimal(1).scaleb(-symbol.digits)
        exact = points_lots * decimal_of(symbol.trade_contract_size) * point * num / den
    return money(exact)


@dataclass(frozen=True, slots=True)
class Leg:
    """One entry fill of a position still open: ``volume`` lots at ``price`` points."""

    volume: Decimal
    price: int


@dataclass(frozen=True, slots=True)
class Position:
    """A position as the book holds it; closed positions keep their record.

    ``commission`` is what opening it cost, ``realized_pnl`` the profit of its partial
    closes so far (both in the account currency).
    """

    position_id: str
    account_id: str
    symbol: str
    side: Side
    legs: tuple[Leg, ...]
    stop_loss: int | None
    take_profit: int | None
    open_time_ms: int
    order_id: str
    signal_id: str
    commission: Decimal = ZERO
    realized_pnl: Decimal = ZERO
    closed_time_ms: int = 0

    @property
    def volume(self) -> Decimal:
        """Open volume in lots."""
        return sum((leg.volume for leg in self.legs), ZERO)

    @property
    def is_open(self) -> bool:
        """True while volume remains."""
        return bool(self.legs)

    @property
    def open_price(self) -> Decimal | None:
        """Volume-weighted average price of the open legs, in (fractional) points."""
        volume = self.volume
        if not volume:
            return None
        return sum((leg.volume * leg.price for leg in self.legs), ZERO) / volume


@dataclass(frozen=True, slots=True)
class Fill:
    """One deal as the books record it; ``closing`` fills reduce ``position_id``."""

    deal_id: str
    order_id: str
    position_id: str
    symbol: str
    side: Side
    volume: Decimal
    price: int
    commission: Decimal
    time_ms: int
    closing: bool
    realized_pnl: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class PositionView:
    """An open position valued at the current quote (``current_price`` None without one)."""

    position: Position
    current_price: int | None
    unrealized_pnl: Decimal


@dataclass(frozen=True, slots=True)
class AccountState:
    """Balances of the account in its currency, as ``quantmesh.execution.v1.Account``.

    ``realized_pnl`` and ``commission`` are lifetime totals; ``realized_pnl_today`` is
    net of commission, since 00:00 UTC of the engine's current time.
    ``start_of_day_equity`` is the equity when that day's first tick arrived (the daily
    loss limit's base) and ``market_time_ms`` the engine's clock.
    """

    account_id: str
    broker: str
    currency: str
    starting_balance: Decimal
    balance: Decimal
    equity: Decimal
    unrealized_pnl: Decimal
    realized_pnl: Decimal
    commission: Decimal
    margin: Decimal
    free_margin: Decimal
    margin_level_bps: int
    leverage: int
    realized_pnl_today: Decimal
    open_positions: int
    start_of_day_equity: Decimal = ZERO
    market_time_ms: int = 0


@dataclass
class Book:
    """Open positions and running totals of one account; apply fills in order.

    ``balance`` is updated fill by fill; ``realized`` and ``commission`` are kept apart
    from it so that :meth:`equity_identity_holds` compares two computations.
    """

    account_id: str
    currency: str
    symbols: Mapping[str, Symbol]
    starting_balance: Decimal
    balance: Decimal
    realized: Decimal = ZERO
    commission: Decimal = ZERO
    positions: dict[str, Position] = dataclasses.field(default_factory=dict)

    def copy(self) -> Book:
        """An independent copy (positions are immutable, so a shallow dict copy suffices)."""
        return dataclasses.replace(self, positions=dict(self.positions))

    def apply(
        self,
        fill: Fill,
        quotes: Mapping[str, Quote],
        *,
        stop_loss: int | None = None,
        take_profit: int | None = None,
        signal_id: str = "",
    ) -> tuple[Fill, Position]:
        """Book ``fill``; return it with its realized profit, and the position after it.

        An opening fill creates the position (with ``stop_loss``/``take_profit``) or adds
        a leg to it; a closing fill consumes legs first in, first out.
        """
        if fill.closing:
            fill, position = self._close(fill, quotes)
        else:
            position = self._open(fill, stop_loss, take_profit, signal_id)
        self.realized += fill.realized_pnl
        self.commission += fill.commission
        self.balance += fill.realized_pnl - fill.commission
        if position.is_open:
            self.positions[position.position_id] = position
        else:
            self.positions.pop(position.position_id, None)
        return fill, position

    def _open(
        self, fill: Fill, stop_loss: int | None, take_profit: int | None, signal_id: str
    ) -> Position:
        leg = Leg(fill.volume, fill.price)
        current = self.positions.get(fill.position_id)
        if current is None:
            return Position(
                position_id=fill.position_id,
                account_id=self.account_id,
                symbol=fill.symbol,
                side=fill.side,
                legs=(leg,),
                stop_loss=stop_loss,
                take_profit=take_profit,
                open_time_ms=fill.time_ms,
                order_id=fill.order_id,
                signal_id=signal_id,
                commission=fill.commission,
            )
        if current.side is not fill.side or current.symbol != fill.symbol:
            raise ValueError(f"fill {fill.deal_id} does not match position {current.position_id}")
        return dataclasses.replace(
            current, legs=(*current.legs, leg), commission=current.commission + fill.commission
        )

    def _close(self, fill: Fill, quotes: Mapping[str, Quote]) -> tuple[Fill, Position]:
        position = self.positions.get(fill.position_id)
        if position is None or fill.side is position.side or fill.volume > position.volume:
            raise ValueError(f"fill {fill.deal_id} cannot close position {fill.position_id}")
        to_close, legs = fill.volume, list(position.legs)
        points_lots = ZERO
        while to_close:
            leg = legs[0]
            used = min(leg.volume, to_close)
            points_lots += (fill.price - leg.price) * position.side.sign * used
            to_close -= used
            if used == leg.volume:
                legs.pop(0)
            else:
                legs[0] = Leg(leg.volume - used, leg.price)
        symbol = self.symbols[fill.symbol]
        realized = points_value(points_lots, symbol, self.currency, self.symbols, quotes)
        position = dataclasses.replace(
            position,
            legs=tuple(legs),
            realized_pnl=position.realized_pnl + realized,
            closed_time_ms=0 if legs else fill.time_ms,
        )
        return dataclasses.replace(fill, realized_pnl=realized), position

    def value(self, position: Position, quotes: Mapping[str, Quote]) -> PositionView:
        """``position`` with its current price and unrealized profit (0 without a quote)."""
        quote = quotes.get(position.symbol)
        if quote is None:
            return PositionView(position, None, ZERO)
        price = quote.close_price(position.side)
        points_lots = sum(
            ((price - leg.price) * position.side.sign * leg.volume for leg in position.legs), ZERO
        )
        symbol = self.symbols[position.symbol]
        pnl = points_value(points_lots, symbol, self.currency, self.symbols, quotes)
        return PositionView(position, price, pnl)

    def unrealized(self, quotes: Mapping[str, Quote]) -> Decimal:
        """Sum of the open positions' unrealized profit, each rounded to the cent."""
        return sum((self.value(p, quotes).unrealized_pnl for p in self.positions.values()), ZERO)

    def margin(self, quotes: Mapping[str, Quote], leverage: int) -> Decimal:
        """Margin of the open positions: notional at the current mid / leverage."""
        total = ZERO
        for position in self.positions.values():
            quote = quotes.get(position.symbol)
            if quote is None:
                continue
            symbol = self.symbols[position.symbol]
            mid_lots = Decimal(quote.bid + quote.ask) / 2 * position.volume
            total += points_value(mid_lots / leverage, symbol, self.currency, self.symbols, quotes)
        return total

    def equity_identity_holds(
        self,
        quotes: Mapping[str, Quote],
        realized: Decimal | None = None,
        commission: Decimal | None = None,
    ) -> bool:
        """True if ``balance + unrealized == start + realized + unrealized − commission``.

        ``balance`` is the running balance; ``realized`` and ``commission`` default to the
        book's own totals, pass a ledger's sums to check the balance against the ledger.
        """
        realized = self.realized if realized is None else realized
        commission = self.commission if commission is None else commission
        unrealized = self.unrealized(quotes)
        equity = self.balance + unrealized
        return equity == self.starting_balance + realized + unrealized - commission

    def state(
        self,
        quotes: Mapping[str, Quote],
        *,
        broker: str,
        leverage: int = DEFAULT_LEVERAGE,
        realized_today: Decimal = ZERO,
    ) -> AccountState:
        """The account's balances at ``quotes``."""
        unrealized = self.unrealized(quotes)
        equity = self.balance + unrealized
        margin = self.margin(quotes, leverage)
        level = int(equity * 10_000 / margin) if margin else 0
        return AccountState(
            account_id=self.account_id,
            broker=broker,
            currency=self.currency,
            starting_balance=self.starting_balance,
            balance=self.balance,
            equity=equity,
            unrealized_pnl=unrealized,
            realized_pnl=self.realized,
            commission=self.commission,
            margin=margin,
            free_margin=equity - margin,
            margin_level_bps=level,
            leverage=leverage,
            realized_pnl_today=realized_today,
            open_positions=len(self.positions),
        )


def check_conversions(
    symbols: Iterable[Symbol], account_currency: str, all_symbols: Mapping[str, Symbol]
) -> None:
    """Raise FailedPrecondition unless every symbol's profit converts to the account currency."""
    for symbol in symbols:
        conversion_symbol(symbol.currency_profit, account_currency, all_symbols)

"""The account ledger: fills and price marks → positions, trades and an equity curve.

Accounting rules (the tests check the equity curve against an independent cash-flow loop):

- **Money is exact.** Amounts are :class:`~decimal.Decimal` in the account currency, never
  rounded inside the ledger (round for display only). A price is
  ``price_points · 10^-digits``; the profit of ``v`` lots moving ``Δ`` points is
  ``Δ · 10^-digits · v · contract_size`` in the quote currency, times the ``conversion``
  factor into the account currency at the time of the fill (realized) or mark
  (unrealized). A broker that rounds each deal to the cent differs by at most half a cent
  per deal.
- **Positions** are keyed by ``position_id`` (a hedging account: a long and a short of one
  symbol are two positions). A fill with ``opens=True`` adds to its position; one with
  ``opens=False`` reduces it, first-in first-out, and must be on the opposite side and no
  larger than what is open. A position whose volume reaches zero is a closed **trade**.
- **Realized** profit is gross (before commission) and accrues at every exit fill,
  partial closes included. **Commission** is a cost, ≥ 0, charged when its fill happens.
- **Unrealized** profit marks each open position at the latest mark of its symbol: a long
  at the bid, a short at the ask (what closing it would get). Before its symbol's first
  mark a position is marked at its own entry prices, i.e. at zero.
- ``balance = start + realized − commission`` and ``equity = balance + unrealized``.
- The curve has one point per distinct event time, after every event of that time; at
  equal times marks are applied before fills, so a fill sees the mark of its instant.

Nothing here imports grpc.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from quantmesh.services.execution.orders import Side

__all__ = [
    "CONTRACT_SIZE",
    "Conversion",
    "EquityCurve",
    "Fill",
    "Ledger",
    "LedgerResult",
    "Mark",
    "OpenPosition",
    "Side",
    "Trade",
    "conversion_from_marks",
    "price",
    "run_ledger",
    "usd_quoted",
]

CONTRACT_SIZE = Decimal(100_000)  # units of the base currency in one lot

Conversion = Callable[[str, int], Decimal]
"""``(symbol, time_ms) → account-currency units per unit of the symbol's quote currency``."""


def price(points: int, digits: int) -> Decimal:
    """The exact price of ``points`` at ``digits`` decimals."""
    return Decimal(points).scaleb(-digits)


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution: an entry into or an exit from a position.

    ``commission`` is a cost in the account currency (≥ 0; MetaTrader reports it negative,
    so negate it when mapping). ``model_name``, ``model_version`` and ``signal_id`` come
    from the order's signal; a trade is credited to the model of its first entry fill.
    """

    order_id: str
    position_id: str
    symbol: str
    side: Side
    volume_lots: Decimal
    price_points: int
    digits: int
    commission: Decimal
    time_ms: int
    opens: bool
    model_name: str = ""
    model_version: str = ""
    signal_id: str = ""

    def __post_init__(self) -> None:
        if self.volume_lots <= 0:
            raise ValueError(f"fill {self.order_id}: volume must be > 0, got {self.volume_lots}")
        if self.price_points <= 0 or not 0 <= self.digits <= 9:
            raise ValueError(f"fill {self.order_id}: bad price {self.price_points}/{self.digits}")
        if self.commission < 0:
            raise ValueError(f"fill {self.order_id}: commission is a cost and must be >= 0")


@dataclass(frozen=True, slots=True)
class Mark:
    """A quote used to value open positions: bid and ask in integer points."""

    symbol: str
    time_ms: int
    bid_points: int
    ask_points: int
    digits: int

    def __post_init__(self) -> None:
        if not 0 < self.bid_points <= self.ask_points:
            raise ValueError(f"mark {self.symbol}@{self.time_ms}: need 0 < bid <= ask")

    @property
    def mid(self) -> Decimal:
        """``(bid + ask) / 2`` as an exact price."""
        return price(self.bid_points + self.ask_points, self.digits) / 2


def usd_quoted(symbol: str, time_ms: int) -> Decimal:
    """The default conversion for a USD account: 1 for ``*USD`` symbols, else an error."""
    if symbol.endswith("USD"):
        return Decimal(1)
    raise ValueError(
        f"{symbol} is not quoted in USD: pass a conversion (see conversion_from_marks)"
    )


def conversion_from_marks(marks: Iterable[Mark], account_currency: str = "USD") -> Conversion:
    """A conversion that reads quote→account rates from the mids of other symbols' marks.

    For a six-letter symbol ``BBBQQQ`` in an account in ``AAA``: 1 if ``QQQ == AAA``; the mid
    of ``QQQAAA`` (EURGBP in USD: GBPUSD); else ``1 / mid`` of ``AAAQQQ`` (USDJPY in USD:
    1/USDJPY). The mark used is the latest at or before the time asked.
    """
    table: dict[str, tuple[list[int], list[Decimal]]] = {}
    for mark in sorted(marks, key=lambda m: m.time_ms):
        times, mids = table.setdefault(mark.symbol, ([], []))
        times.append(mark.time_ms)
        mids.append(mark.mid)

    def rate(pair: str, time_ms: int) -> Decimal | None:
        if pair not in table:
            return None
        times, mids = table[pair]
        at = bisect.bisect_right(times, time_ms) - 1
        if at < 0:
            raise ValueError(f"no {pair} mark at or before {time_ms} to convert with")
        return mids[at]

    def convert(symbol: str, time_ms: int) -> Decimal:
        quote = symbol[3:6]
        if quote == account_currency:
            return Decimal(1)
        direct = rate(quote + account_currency, time_ms)
        if direct is not None:
            return direct
        inverse = rate(account_currency + quote, time_ms)
        if inverse is not None:
            return 1 / inverse
        raise ValueError(f"no {quote}{account_currency} or {account_currency}{quote} marks")

    return convert


@dataclass(frozen=True, slots=True)
class Trade:
    """A closed position. Prices are volume-weighted; amounts in the account currency.

    ``entry_mark`` and ``exit_mark`` are the marks of the symbol in force at the first
    entry and the last exit (None before any mark): the market the call was made in.
    """

    position_id: str
    symbol: str
    side: Side
    volume_lots: Decimal
    digits: int
    open_time_ms: int
    close_time_ms: int
    entry_price: Decimal
    exit_price: Decimal
    gross_pnl: Decimal
    commission: Decimal
    model_name: str
    model_version: str
    signal_id: str
    entry_mark: Mark | None
    exit_mark: Mark | None

    @property
    def net_pnl(self) -> Decimal:
        """Profit after commission."""
        return self.gross_pnl - self.commission

    @property
    def direction_hit(self) -> bool:
        """Did the market move the called way from entry to exit?

        Measured on mids of ``entry_mark``/``exit_mark`` so spread and commission do not
        count; on the fill prices when a mark is missing. No move is a miss.
        """
        if self.entry_mark is not None and self.exit_mark is not None:
            move = self.exit_mark.mid - self.entry_mark.mid
        else:
            move = self.exit_price - self.entry_price
        return self.side.sign * move > 0


@dataclass(frozen=True, slots=True)
class OpenPosition:
    """A position still open at the end of a run, marked as described in the module."""

    position_id: str
    symbol: str
    side: Side
    volume_lots: Decimal
    entry_price: Decimal
    open_time_ms: int
    unrealized_pnl: Decimal
    model_name: str
    model_version: str


@dataclass(frozen=True, slots=True)
class EquityCurve:
    """Balance and equity after each distinct event time, oldest first."""

    time_ms: tuple[int, ...]
    balance: tuple[Decimal, ...]
    equity: tuple[Decimal, ...]

    def __len__(self) -> int:
        return len(self.time_ms)


@dataclass
class _Position:
    symbol: str
    side: Side
    digits: int
    opened: Fill
    entry_mark: Mark | None
    lots: deque[tuple[Decimal, int]] = field(default_factory=deque)  # (volume, points) FIFO
    volume: Decimal = Decimal(0)
    entry_value: Decimal = Decimal(0)  # Σ volume · points of entries, for the average
    exit_value: Decimal = Decimal(0)
    exit_volume: Decimal = Decimal(0)
    realized: Decimal = Decimal(0)
    commission: Decimal = Decimal(0)


class Ledger:
    """Incremental accounting of one account; feed it fills and marks in time order.

    Parameters
    ----------
    start_balance:
        Balance before the first fill, in the account currency.
    contract_size:
        Units of the base currency in one lot.
    conversion:
        Quote→account currency factor, see :data:`Conversion`.
    """

    def __init__(
        self,
        start_balance: Decimal,
        *,
        contract_size: Decimal = CONTRACT_SIZE,
        conversion: Conversion = usd_quoted,
    ) -> None:
        self.start_balance = start_balance
        self.contract_size = contract_size
        self.conversion = conversion
        self.realized = Decimal(0)
        self.commission = Decimal(0)
        self.trades: list[Trade] = []
        self.time_ms = 0
        self._positions: dict[str, _Position] = {}
        self._marks: dict[str, Mark] = {}

    @property
    def balance(self) -> Decimal:
        """``start + realized − commission``."""
        return self.start_balance + self.realized - self.commission

    def mark(self, mark: Mark) -> None:
        """Record the latest quote of ``mark.symbol``."""
        self.time_ms = max(self.time_ms, mark.time_ms)
        self._marks[mark.symbol] = mark

    def fill(self, fill: Fill) -> None:
        """Apply one fill. Raises ValueError for a fill that contradicts its position."""
        self.time_ms = max(self.time_ms, fill.time_ms)
        self.commission += fill.commission
        position = self._positions.get(fill.position_id)
        if fill.opens:
            if position is None:
                mark = self._marks.get(fill.symbol)
                position = _Position(fill.symbol, fill.side, fill.digits, fill, mark)
                self._positions[fill.position_id] = position
            self._check(position, fill, fill.side is position.side, "entry on the other side")
            position.lots.append((fill.volume_lots, fill.price_points))
            position.volume += fill.volume_lots
            position.entry_value += fill.volume_lots * fill.price_points
            position.commission += fill.commission
            return
        if position is None:
            raise ValueError(f"fill {fill.order_id}: exit of unknown position {fill.position_id}")
        self._check(position, fill, fill.side is not position.side, "exit on the same side")
        self._check(position, fill, fill.volume_lots <= position.volume, "exit exceeds volume")
        points = self._consume(position, fill.volume_lots, fill.price_points)
        pnl = self._money(points, position, fill.time_ms)
        position.realized += pnl
        position.commission += fill.commission
        position.exit_value += fill.volume_lots * fill.price_points
        position.exit_volume += fill.volume_lots
        self.realized += pnl
        if position.volume == 0:
            del self._positions[fill.position_id]
            self.trades.append(self._trade(fill, position))

    def unrealized(self) -> Decimal:
        """Unrealized profit of every open position at the latest marks."""
        return sum((self._unrealized(p) for p in self._positions.values()), Decimal(0))

    def equity(self) -> Decimal:
        """``balance + unrealized``."""
        return self.balance + self.unrealized()

    def open_positions(self) -> list[OpenPosition]:
        """The open positions, in the order they opened."""
        return [
            OpenPosition(
                position_id,
                p.symbol,
                p.side,
                p.volume,
                price(1, p.digits) * sum(v * pts for v, pts in p.lots) / p.volume,
                p.opened.time_ms,
                self._unrealized(p),
                p.opened.model_name,
                p.opened.model_version,
            )
            for position_id, p in self._positions.items()
        ]

    def _check(self, position: _Position, fill: Fill, ok: bool, what: str) -> None:
        if not ok or fill.symbol != position.symbol or fill.digits != position.digits:
            raise ValueError(
                f"fill {fill.order_id} on position {fill.position_id}: "
                f"{what if not ok else 'symbol or digits differ from the position'}"
            )

    def _consume(self, position: _Position, volume: Decimal, exit_points: int) -> Decimal:
        """Close ``volume`` first-in first-out; the signed profit in volume · points."""
        points = Decimal(0)
        while volume > 0:
            lot_volume, entry_points = position.lots[0]
            take = min(volume, lot_volume)
            points += take * (exit_points - entry_points) * position.side.sign
            if take == lot_volume:
                position.lots.popleft()
            else:
                position.lots[0] = (lot_volume - take, entry_points)
            volume -= take
            position.volume -= take
        return points

    def _money(self, volume_points: Decimal, position: _Position, time_ms: int) -> Decimal:
        factor = self.conversion(position.symbol, time_ms)
        return volume_points.scaleb(-position.digits) * self.contract_size * factor

    def _unrealized(self, position: _Position) -> Decimal:
        mark = self._marks.get(position.symbol)
        if mark is None:
            return Decimal(0)
        if mark.digits != position.digits:
            raise ValueError(f"mark of {mark.symbol} has {mark.digits} digits, fills have more")
        close = mark.bid_points if position.side is Side.BUY else mark.ask_points
        points = sum(
            (v * (close - entry) * position.side.sign for v, entry in position.lots), Decimal(0)
        )
        return self._money(points, position, self.time_ms)

    def _trade(self, last: Fill, position: _Position) -> Trade:
        opened, unit = position.opened, price(1, position.digits)
        return Trade(
            position_id=last.position_id,
            symbol=position.symbol,
            side=position.side,
            volume_lots=position.exit_volume,
            digits=position.digits,
            open_time_ms=opened.time_ms,
            close_time_ms=last.time_ms,
            entry_price=unit * position.entry_value / position.exit_volume,
            exit_price=unit * position.exit_value / position.exit_volume,
            gross_pnl=position.realized,
            commission=position.commission,
            model_name=opened.model_name,
            model_version=opened.model_version,
            signal_id=opened.signal_id,
            entry_mark=position.entry_mark,
            exit_mark=self._marks.get(position.symbol),
        )


@dataclass(frozen=True, slots=True)
class LedgerResult:
    """Everything a run of the ledger produced; amounts in the account currency."""

    start_balance: Decimal
    curve: EquityCurve
    trades: tuple[Trade, ...]
    open_positions: tuple[OpenPosition, ...]
    realized: Decimal
    commission: Decimal
    unrealized: Decimal

    @property
    def balance(self) -> Decimal:
        """``start + realized − commission``."""
        return self.start_balance + self.realized - self.commission

    @property
    def equity(self) -> Decimal:
        """``start + realized + unrealized − commission``."""
        return self.balance + self.unrealized


def run_ledger(
    fills: Iterable[Fill],
    marks: Iterable[Mark],
    *,
    start_balance: Decimal,
    contract_size: Decimal = CONTRACT_SIZE,
    conversion: Conversion = usd_quoted,
) -> LedgerResult:
    """Replay ``fills`` and ``marks`` merged in time order through a :class:`Ledger`.

    Parameters
    ----------
    fills, marks:
        The run's events; each sequence is stably sorted by time (ties keep their order,
        and marks go before fills).
    start_balance, contract_size, conversion:
        As for :class:`Ledger`.

    Returns
    -------
    LedgerResult
        The equity curve (one point per distinct event time), closed trades, open
        positions and totals at the end.
    """
    ledger = Ledger(start_balance, contract_size=contract_size, conversion=conversion)
    events: list[tuple[int, int, int, Fill | Mark]] = [
        (m.time_ms, 0, i, m) for i, m in enumerate(marks)
    ]
    events += [(f.time_ms, 1, i, f) for i, f in enumerate(fills)]
    events.sort(key=lambda event: event[:3])
    times: list[int] = []
    balances: list[Decimal] = []
    equities: list[Decimal] = []
    for k, (time_ms, _, _, event) in enumerate(events):
        if isinstance(event, Mark):
            ledger.mark(event)
        else:
            ledger.fill(event)
        if k + 1 == len(events) or events[k + 1][0] != time_ms:
            times.append(time_ms)
            balances.append(ledger.balance)
            equities.append(ledger.equity())
    return LedgerResult(
        start_balance=start_balance,
        curve=EquityCurve(tuple(times), tuple(balances), tuple(equities)),
        trades=tuple(ledger.trades),
        open_positions=tuple(ledger.open_positions()),
        realized=ledger.realized,
        commission=ledger.commission,
        unrealized=ledger.unrealized(),
    )

"""The broker port and the paper broker: a simulated venue with stated fill rules.

A broker receives orders keyed by the client's idempotency key and reports what
happens to them as a journal of :class:`BrokerEvent`, numbered by ``seq``. Execution
reads the journal from its last applied ``seq`` (:meth:`Broker.events_since`), during
normal operation and after a crash alike, so no acknowledgement or fill is missed or
applied twice.

**The paper broker's rules** (its "reality models", named after LEAN's):

- *Latency* (:class:`FixedLatency`, :class:`RandomLatency`): an order arrives
  ``latency`` ms after submission and is first eligible on the next tick of its symbol
  at or after arrival (and strictly after submission).
- *Fills*: a market buy fills at the ASK, a sell at the BID, never the mid. A limit
  order fills when marketable at the tick's price (its limit or better, no slippage);
  a stop order triggers when the market reaches it and then fills as a market order.
- *Slippage* (:class:`NoSlippage`, :class:`FixedSlippage`, :class:`VolatilitySlippage`)
  moves market fills against the trader. A market order whose fill is more than its
  ``deviation_points`` worse than the quote at submission is rejected (MT5's requote).
- *Liquidity*: at most ``lots_per_tick`` lots per symbol and side fill on one tick;
  the rest waits for the next ticks (GTC/DAY/GTD), is cancelled (IOC), or the whole
  order is cancelled unfilled (FOK).
- *Commission* (:class:`PerLotCommission`): per lot per side in the account currency.
- *Stops*: a long's stop loss triggers when the bid <= stop, its take profit when the
  bid >= target; a short's on the ask. A stop loss closes at the tick's price (so a gap
  through the stop fills beyond it) minus slippage; a take profit at the tick's price,
  which is the target or better, without slippage. Stop-loss and take-profit closes
  fill in full at once, outside the per-tick liquidity.
- *Expiry*: GTD orders expire on the first tick at or after ``expire_time_ms``, DAY
  orders at 00:00 UTC after submission.

The paper broker keeps its own SQLite journal (orders received, positions, events),
apart from execution's store, and refuses a client key it has seen: it is the witness
that execution never sends an order twice. Random draws are keyed by order and fill,
not by call order, so a restart does not change them. Nothing here imports grpc.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from quantmesh.runtime.config import quantmesh_home
from quantmesh.runtime.errors import FailedPrecondition, NotFound
from quantmesh.runtime.sqlite import connect
from quantmesh.services.execution.accounts import MONEY_QUANTUM, Quote
from quantmesh.services.execution.orders import (
    BROKER_KEY_PREFIX,
    AlreadyExists,
    OrderType,
    Origin,
    Side,
    TimeInForce,
)
from quantmesh.services.marketdata.sources import Symbol

ZERO = Decimal(0)
DAY_MS = 86_400_000


# --- reality models -------------------------------------------------------------------


class LatencyModel(Protocol):
    """Milliseconds from submission to the order's arrival at the venue."""

    def latency_ms(self, draw_key: str) -> int: ...


@dataclass(frozen=True, slots=True)
class FixedLatency:
    """Every order arrives ``ms`` after submission."""

    ms: int = 50

    def latency_ms(self, draw_key: str) -> int:
        return self.ms


@dataclass(frozen=True, slots=True)
class RandomLatency:
    """Uniform latency in ``[min_ms, max_ms]``, drawn per order from ``seed``."""

    min_ms: int = 20
    max_ms: int = 120
    seed: int = 0

    def latency_ms(self, draw_key: str) -> int:
        return random.Random(f"{self.seed}:latency:{draw_key}").randint(self.min_ms, self.max_ms)


class SlippageModel(Protocol):
    """Points a fill moves against the trader (>= 0)."""

    def slippage_points(self, draw_key: str, quote: Quote, previous: Quote | None) -> int: ...


@dataclass(frozen=True, slots=True)
class NoSlippage:
    """Fills at the quote."""

    def slippage_points(self, draw_key: str, quote: Quote, previous: Quote | None) -> int:
        return 0


@dataclass(frozen=True, slots=True)
class FixedSlippage:
    """Every market fill ``points`` worse than the quote."""

    points: int = 1

    def slippage_points(self, draw_key: str, quote: Quote, previous: Quote | None) -> int:
        return self.points


@dataclass(frozen=True, slots=True)
class VolatilitySlippage:
    """``round(multiplier × |Δmid| × u)`` points, ``u`` uniform in [0, 1) from ``seed``.

    ``Δmid`` is the move of the symbol's mid from its previous tick to the fill tick:
    the faster the market, the worse the fill.
    """

    multiplier: float = 0.5
    seed: int = 0

    def slippage_points(self, draw_key: str, quote: Quote, previous: Quote | None) -> int:
        if previous is None:
            return 0
        move = abs(quote.bid + quote.ask - previous.bid - previous.ask) / 2
        u = random.Random(f"{self.seed}:slippage:{draw_key}").random()
        return round(self.multiplier * move * u)


class CommissionModel(Protocol):
    """Commission of one fill in the account currency."""

    def commission(self, symbol: Symbol, volume: Decimal) -> Decimal: ...


@dataclass(frozen=True, slots=True)
class PerLotCommission:
    """``per_lot_per_side`` × lots, rounded half up to the cent, on every fill."""

    per_lot_per_side: Decimal = Decimal("3.5")

    def commission(self, symbol: Symbol, volume: Decimal) -> Decimal:
        return (volume * self.per_lot_per_side).quantize(MONEY_QUANTUM, rounding=ROUND_HALF_UP)


@dataclass(frozen=True, slots=True)
class PaperBrokerConfig:
    """The paper broker's models (defaults: 50 ms, 1 point, 3.5/lot/side, 10 lots/tick)."""

    latency: LatencyModel = FixedLatency()
    slippage: SlippageModel = FixedSlippage()
    commission: CommissionModel = PerLotCommission()
    lots_per_tick: Decimal = Decimal("10")


# --- the port -------------------------------------------------------------------------


class BrokerEventKind(Enum):
    """What a broker reports about an order."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    FILL = "fill"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class BrokerOrder:
    """An order as sent to a broker (validated and normalised by execution).

    ``reference_price`` is the quote the client saw (ask for a buy, bid for a sell) for
    the deviation check; None when execution had no quote. ``submitted_ms`` is
    execution's clock at sending.
    """

    account_id: str
    client_key: str
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
    submitted_ms: int
    reference_price: int | None


@dataclass(frozen=True, slots=True)
class BrokerEvent:
    """One entry of a broker's journal.

    ACCEPTED events describe the order (``symbol``, ``side``, ``volume``,
    ``position_id``, ``origin``) so that execution can adopt orders the broker created
    itself (stop-loss and take-profit closes). FILL events carry the deal; their
    ``position_id`` is the position opened, added to or (``closing``) reduced.
    """

    seq: int
    kind: BrokerEventKind
    account_id: str
    client_key: str
    broker_order_id: str
    time_ms: int
    symbol: str
    side: Side
    volume: Decimal
    position_id: str = ""
    origin: Origin = Origin.CLIENT
    reason: str = ""
    deal_id: str = ""
    fill_volume: Decimal = ZERO
    fill_price: int = 0
    commission: Decimal = ZERO
    closing: bool = False


@dataclass(frozen=True, slots=True)
class BrokerOrderStatus:
    """What a broker knows of one order (for reconciliation)."""

    broker_order_id: str
    client_key: str
    filled_volume: Decimal
    done: bool


class Broker(Protocol):
    """What execution needs of a broker: the paper broker, later the MT5 adapter."""

    name: str

    @property
    def last_event_seq(self) -> int:
        """Seq of the newest journal event, -1 when empty."""
        ...

    @property
    def idle(self) -> bool:
        """True when no tick can cause an event (no working order, no SL/TP)."""
        ...

    def submit(self, order: BrokerOrder) -> None:
        """Receive ``order``; its acknowledgement or rejection goes to the journal."""
        ...

    def cancel(self, account_id: str, client_key: str, time_ms: int) -> None:
        """Cancel a working order (journal: CANCELLED)."""
        ...

    def lookup(self, account_id: str, client_key: str) -> BrokerOrderStatus | None:
        """The broker's record of a client key, None if it never received it."""
        ...

    def on_tick(self, quote: Quote) -> None:
        """Let a tick of the market act on working orders and positions."""
        ...

    def events_since(self, seq: int) -> list[BrokerEvent]:
        """Journal events with a seq greater than ``seq``, oldest first."""
        ...


# --- the paper broker -----------------------------------------------------------------


def default_journal_path() -> Path:
    """``$QUANTMESH_HOME/execution/paper_broker.sqlite3`` (``QUANTMESH_HOME``: ``./var``)."""
    return quantmesh_home() / "execution" / "paper_broker.sqlite3"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS broker_orders (
  broker_order_id TEXT    PRIMARY KEY,
  number          INTEGER NOT NULL UNIQUE,
  account_id      TEXT    NOT NULL,
  client_key      TEXT    NOT NULL,
  done            INTEGER NOT NULL,
  body            TEXT    NOT NULL,  -- JSON of the order and its progress
  UNIQUE (account_id, client_key)    -- a key reaches the venue once, ever
);
CREATE TABLE IF NOT EXISTS broker_positions (
  position_id TEXT    PRIMARY KEY,
  open        INTEGER NOT NULL,
  body        TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS broker_events (
  seq  INTEGER PRIMARY KEY,
  body TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS broker_counters (
  name  TEXT    PRIMARY KEY,
  value INTEGER NOT NULL
)
"""
_DECODERS: dict[str, Any] = {
    "side": Side,
    "type": OrderType,
    "time_in_force": TimeInForce,
    "kind": BrokerEventKind,
    "origin": Origin,
    "volume": Decimal,
    "fill_volume": Decimal,
    "commission": Decimal,
    "filled": Decimal,
}


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, Decimal):
            return str(value)
        if isinstance(value, Enum):
            return value.value
        return value

    return {key: plain(value) for key, value in values.items()}


def _dump(values: Mapping[str, Any]) -> str:
    return json.dumps(_plain(values), sort_keys=True)


def _decoded(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _DECODERS[key](v) if key in _DECODERS else v for key, v in raw.items()}


@dataclass
class _Working:
    """A received order and its progress at the venue."""

    broker_order_id: str
    number: int
    order: BrokerOrder
    arrival_ms: int
    expire_at_ms: int  # 0: never
    origin: Origin = Origin.CLIENT
    filled: Decimal = ZERO
    fills: int = 0
    triggered: bool = False  # a stop order that the market reached
    done: bool = False

    def body(self) -> str:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        order = _plain(dataclasses.asdict(fields.pop("order")))
        return json.dumps({"order": order, **_plain(fields)}, sort_keys=True)

    @classmethod
    def load(cls, body: str) -> _Working:
        raw = json.loads(body)
        order = BrokerOrder(**_decoded(raw.pop("order")))
        return cls(order=order, **_decoded(raw))


@dataclass
class _Position:
    """The venue's view of an open position: enough to close it and watch its stops."""

    position_id: str
    account_id: str
    symbol: str
    side: Side
    volume: Decimal
    stop_loss: int | None
    take_profit: int | None


class PaperBroker:
    """A simulated venue with a durable journal; see the module docstring for its rules.

    Parameters
    ----------
    path:
        SQLite file of the journal, created if missing; None for
        :func:`default_journal_path`. Keep it apart from execution's store: it plays
        the venue's own records.
    symbols:
        Tradable symbols by name.
    config:
        Latency, slippage, commission and liquidity models.
    """

    name = "paper"

    def __init__(
        self,
        path: Path | str | None,
        symbols: Mapping[str, Symbol],
        config: PaperBrokerConfig | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else default_journal_path()
        self.symbols = dict(symbols)
        self.config = config or PaperBrokerConfig()
        self._db = connect(self.path)
        for statement in _SCHEMA.split(";"):
            self._db.execute(statement)
        self._working: dict[str, _Working] = {}
        for (body,) in self._db.execute(
            "SELECT body FROM broker_orders WHERE done = 0 ORDER BY number"
        ):
            working = _Working.load(body)
            self._working[working.broker_order_id] = working
        self._positions: dict[str, _Position] = {}
        for (body,) in self._db.execute("SELECT body FROM broker_positions WHERE open = 1"):
            position = _Position(**_decoded(json.loads(body)))
            self._positions[position.position_id] = position
        counters = dict(self._db.execute("SELECT name, value FROM broker_counters").fetchall())
        self._orders_made = int(counters.get("order", 0))
        self._deals_made = int(counters.get("deal", 0))
        (last,) = self._db.execute("SELECT COALESCE(MAX(seq), -1) FROM broker_events").fetchone()
        self._last_seq = int(last)
        self._quotes: dict[str, Quote] = {}
        self._events: list[BrokerEvent] = []
        self._dirty_orders: dict[str, _Working] = {}
        self._dirty_positions: dict[str, _Position | None] = {}

    def close(self) -> None:
        """Close the journal."""
        self._db.close()

    @property
    def last_event_seq(self) -> int:
        return self._last_seq

    @property
    def idle(self) -> bool:
        return not self._working and not any(
            p.stop_loss is not None or p.take_profit is not None for p in self._positions.values()
        )

    def submit(self, order: BrokerOrder) -> None:
        if self.lookup(order.account_id, order.client_key) is not None:
            # A real venue might accept the key twice; the paper broker makes it loud.
            raise AlreadyExists(f"paper broker: key {order.client_key!r} was already received")
        latency = self.config.latency.latency_ms(order.client_key)
        working = self._receive(order, order.submitted_ms + latency, Origin.CLIENT)
        reason = self._refusal(order)
        if reason:
            self._finish(working, BrokerEventKind.REJECTED, working.arrival_ms, reason)
        else:
            self._event(BrokerEventKind.ACCEPTED, working, working.arrival_ms)
        self._commit()

    def cancel(self, account_id: str, client_key: str, time_ms: int) -> None:
        for working in self._working.values():
            if (working.order.account_id, working.order.client_key) == (account_id, client_key):
                self._finish(working, BrokerEventKind.CANCELLED, time_ms, "cancelled by the client")
                self._commit()
                return
        if self.lookup(account_id, client_key) is None:
            raise NotFound(f"paper broker: no order with key {client_key!r}")
        raise FailedPrecondition(f"paper broker: order {client_key!r} is no longer working")

    def lookup(self, account_id: str, client_key: str) -> BrokerOrderStatus | None:
        row = self._db.execute(
            "SELECT body FROM broker_orders WHERE account_id = ? AND client_key = ?",
            (account_id, client_key),
        ).fetchone()
        if row is None:
            return None
        working = self._working.get(json.loads(row[0])["broker_order_id"]) or _Working.load(row[0])
        return BrokerOrderStatus(working.broker_order_id, client_key, working.filled, working.done)

    def events_since(self, seq: int) -> list[BrokerEvent]:
        rows = self._db.execute(
            "SELECT seq, body FROM broker_events WHERE seq > ? ORDER BY seq", (seq,)
        )
        return [BrokerEvent(seq=n, **_decoded(json.loads(body))) for n, body in rows]

    def on_tick(self, quote: Quote) -> None:
        previous = self._quotes.get(quote.symbol)
        self._quotes[quote.symbol] = quote
        if self.idle or quote.symbol not in self.symbols:
            return
        for working in [w for w in self._working.values() if w.expire_at_ms]:
            if quote.time_ms >= working.expire_at_ms:
                reason = f"time in force {working.order.time_in_force.name} ran out"
                self._finish(working, BrokerEventKind.EXPIRED, quote.time_ms, reason)
        for position in [p for p in self._positions.values() if p.symbol == quote.symbol]:
            self._watch_stops(position, quote, previous)
        liquidity = {Side.BUY: self.config.lots_per_tick, Side.SELL: self.config.lots_per_tick}
        for working in [w for w in self._working.values() if w.order.symbol == quote.symbol]:
            self._work(working, quote, previous, liquidity)
        self._commit()

    # --- simulation -------------------------------------------------------------------

    def _refusal(self, order: BrokerOrder) -> str:
        symbol = self.symbols.get(order.symbol)
        if symbol is None:
            return f"unknown symbol {order.symbol}"
        if order.position_id:
            position = self._positions.get(order.position_id)
            if position is None:
                return f"position {order.position_id} is not open"
            if position.side is order.side or position.symbol != order.symbol:
                return f"order does not close position {order.position_id}"
        return ""

    def _work(
        self,
        working: _Working,
        quote: Quote,
        previous: Quote | None,
        liquidity: dict[Side, Decimal],
    ) -> None:
        order = working.order
        if (
            working.done
            or quote.time_ms <= order.submitted_ms
            or quote.time_ms < working.arrival_ms
        ):
            return
        immediate = order.time_in_force in (TimeInForce.IOC, TimeInForce.FOK)
        buy = order.side is Side.BUY
        market_price = quote.ask if buy else quote.bid
        position = self._positions.get(order.position_id) if order.position_id else None
        if order.position_id and position is None:
            reason = f"position {order.position_id} is closed"
            self._end(working, quote.time_ms, reason, refuse=True)
            return
        if order.type is OrderType.LIMIT:
            assert order.price is not None
            if (market_price - order.price) * order.side.sign > 0:  # not marketable
                if immediate:
                    self._end(working, quote.time_ms, f"limit {order.price} not marketable")
                return
            price = market_price  # the limit or better; a limit never slips
        else:
            if order.type is OrderType.STOP and not working.triggered:
                assert order.price is not None
                if (market_price - order.price) * order.side.sign < 0:  # not reached
                    if immediate:
                        self._end(working, quote.time_ms, f"stop {order.price} not reached")
                    return
                working.triggered = True
                self._dirty_orders[working.broker_order_id] = working
            draw = f"{working.broker_order_id}:{working.fills}"
            slip = self.config.slippage.slippage_points(draw, quote, previous)
            price = market_price + order.side.sign * slip
            if order.type is OrderType.MARKET:
                reference = market_price if order.reference_price is None else order.reference_price
                adverse = (price - reference) * order.side.sign
                if adverse > order.deviation_points:
                    self._end(
                        working,
                        quote.time_ms,
                        f"requote: fill {price} is {adverse} points worse than {reference}, "
                        f"beyond the deviation of {order.deviation_points}",
                        refuse=True,
                    )
                    return
        need = order.volume - working.filled
        available = liquidity[order.side]
        if order.time_in_force is TimeInForce.FOK and (
            need > available or (position is not None and position.volume < need)
        ):
            self._end(working, quote.time_ms, f"fill or kill: {need} lots not available at once")
            return
        volume = min(need, available, position.volume if position else need)
        if volume <= 0:
            if immediate:
                self._end(working, quote.time_ms, "no liquidity left on the tick")
            return
        if working.fills == 0 and position is None:
            reason = _invalid_stops(order, quote)
            if reason:
                self._finish(working, BrokerEventKind.REJECTED, quote.time_ms, reason)
                return
        liquidity[order.side] -= volume
        self._fill(working, quote.time_ms, volume, price)
        if not working.done and immediate:
            remaining = order.volume - working.filled
            self._end(working, quote.time_ms, f"immediate or cancel: {remaining} lots unfilled")

    def _watch_stops(self, position: _Position, quote: Quote, previous: Quote | None) -> None:
        price = quote.bid if position.side is Side.BUY else quote.ask
        sign = position.side.sign
        if position.stop_loss is not None and (price - position.stop_loss) * sign <= 0:
            slip = self.config.slippage.slippage_points(
                f"{position.position_id}:sl", quote, previous
            )
            origin, fill_price = Origin.STOP_LOSS, price - sign * slip
        elif position.take_profit is not None and (price - position.take_profit) * sign >= 0:
            origin, fill_price = Origin.TAKE_PROFIT, price
        else:
            return
        tag = "sl" if origin is Origin.STOP_LOSS else "tp"
        order = BrokerOrder(
            account_id=position.account_id,
            client_key=f"{BROKER_KEY_PREFIX}{tag}:{position.position_id}",
            symbol=position.symbol,
            side=position.side.opposite,
            type=OrderType.MARKET,
            volume=position.volume,
            price=None,
            stop_loss=None,
            take_profit=None,
            time_in_force=TimeInForce.IOC,
            expire_time_ms=0,
            deviation_points=0,
            position_id=position.position_id,
            submitted_ms=quote.time_ms,
            reference_price=None,
        )
        working = self._receive(order, quote.time_ms, origin)
        level = position.stop_loss if origin is Origin.STOP_LOSS else position.take_profit
        self._event(BrokerEventKind.ACCEPTED, working, quote.time_ms, f"{origin.value} {level}")
        self._fill(working, quote.time_ms, position.volume, fill_price)

    def _receive(self, order: BrokerOrder, arrival_ms: int, origin: Origin) -> _Working:
        self._orders_made += 1
        expire_at = 0
        if order.time_in_force is TimeInForce.GTD:
            expire_at = order.expire_time_ms
        elif order.time_in_force is TimeInForce.DAY:
            expire_at = (order.submitted_ms // DAY_MS + 1) * DAY_MS
        number = self._orders_made
        working = _Working(f"P{number}", number, order, arrival_ms, expire_at, origin)
        self._working[working.broker_order_id] = working
        self._dirty_orders[working.broker_order_id] = working
        return working

    def _fill(self, working: _Working, time_ms: int, volume: Decimal, price: int) -> None:
        order = working.order
        self._deals_made += 1
        working.filled += volume
        working.fills += 1
        closing = bool(order.position_id)
        if closing:
            position = self._positions[order.position_id]
            position.volume -= volume
            if not position.volume:
                del self._positions[position.position_id]
        else:
            position = self._positions.get(working.broker_order_id) or _Position(
                working.broker_order_id,
                order.account_id,
                order.symbol,
                order.side,
                ZERO,
                order.stop_loss,
                order.take_profit,
            )
            position.volume += volume
            self._positions[position.position_id] = position
        self._dirty_positions[position.position_id] = position if position.volume else None
        commission = self.config.commission.commission(self.symbols[order.symbol], volume)
        self._event(
            BrokerEventKind.FILL,
            working,
            time_ms,
            deal_id=f"D{self._deals_made}",
            fill_volume=volume,
            fill_price=price,
            commission=commission,
            closing=closing,
            position_id=position.position_id,
        )
        if working.filled == order.volume:
            working.done = True
            self._working.pop(working.broker_order_id, None)

    def _end(self, working: _Working, time_ms: int, reason: str, *, refuse: bool = False) -> None:
        # What filled stays filled and the rest is cancelled; an order the venue refuses
        # (requote, vanished position) before any fill is rejected instead.
        refused = refuse and not working.filled
        kind = BrokerEventKind.REJECTED if refused else BrokerEventKind.CANCELLED
        self._finish(working, kind, time_ms, reason)

    def _finish(self, working: _Working, kind: BrokerEventKind, time_ms: int, reason: str) -> None:
        working.done = True
        self._working.pop(working.broker_order_id, None)
        self._event(kind, working, time_ms, reason)

    def _event(
        self,
        kind: BrokerEventKind,
        working: _Working,
        time_ms: int,
        reason: str = "",
        **fill: Any,
    ) -> None:
        self._dirty_orders[working.broker_order_id] = working
        order = working.order
        self._last_seq += 1
        fields: dict[str, Any] = {
            "position_id": order.position_id,
            "origin": working.origin,
            "reason": reason,
            **fill,
        }
        self._events.append(
            BrokerEvent(
                self._last_seq,
                kind,
                order.account_id,
                order.client_key,
                working.broker_order_id,
                time_ms,
                order.symbol,
                order.side,
                order.volume,
                **fields,
            )
        )

    def _commit(self) -> None:
        # One transaction per submit, cancel or eventful tick. If it fails, memory is ahead
        # of the journal: drop this object and build a new broker from the file.
        if not (self._events or self._dirty_orders or self._dirty_positions):
            return
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for w in self._dirty_orders.values():
                db.execute(
                    "INSERT OR REPLACE INTO broker_orders (broker_order_id, number, account_id,"
                    " client_key, done, body) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        w.broker_order_id,
                        w.number,
                        w.order.account_id,
                        w.order.client_key,
                        int(w.done),
                        w.body(),
                    ),
                )
            for position_id, position in self._dirty_positions.items():
                body = _dump(dataclasses.asdict(position)) if position else "{}"
                if position is None:
                    db.execute(
                        "UPDATE broker_positions SET open = 0 WHERE position_id = ?", (position_id,)
                    )
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO broker_positions (position_id, open, body) "
                        "VALUES (?, 1, ?)",
                        (position_id, body),
                    )
            for event in self._events:
                values = dataclasses.asdict(event)
                del values["seq"]
                db.execute(
                    "INSERT INTO broker_events (seq, body) VALUES (?, ?)",
                    (event.seq, _dump(values)),
                )
            db.executemany(
                "INSERT OR REPLACE INTO broker_counters (name, value) VALUES (?, ?)",
                [("order", self._orders_made), ("deal", self._deals_made)],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            self._events.clear()
            self._dirty_orders.clear()
            self._dirty_positions.clear()


def _invalid_stops(order: BrokerOrder, quote: Quote) -> str:
    """Why ``order``'s stops are on the wrong side of the price its position closes at."""
    close = quote.bid if order.side is Side.BUY else quote.ask
    sign = order.side.sign
    if order.stop_loss is not None and (close - order.stop_loss) * sign <= 0:
        return f"invalid stops: stop loss {order.stop_loss} is not beyond the close price {close}"
    if order.take_profit is not None and (order.take_profit - close) * sign <= 0:
        return (
            f"invalid stops: take profit {order.take_profit} is not beyond the close price {close}"
        )
    return ""

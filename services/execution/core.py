"""The execution engine: validated, idempotent orders in front of a broker, with recovery.

Submitting an order (:meth:`ExecutionEngine.submit`):

1. validate it (nothing is written for a request that fails);
2. record it in state NEW with its idempotency key, durably (``UNIQUE`` on the key);
3. send it to the broker;
4. apply the broker's journal events from the engine's cursor (acknowledgement or
   rejection now, fills on later ticks), each batch in one store transaction that also
   advances the cursor.

A crash between 2 and 3 leaves a NEW order the broker never saw; a crash after 3 leaves
events the engine has not applied. :meth:`ExecutionEngine.recover` therefore applies
every journal event after the cursor, then checks each order still NEW, ACCEPTED or
PARTIALLY_FILLED against the broker's record: one the broker has is adopted, one it
never received is sent exactly once, and an accepted one the broker does not know is
rejected. Until ``recover()`` has run, submit, cancel and ticks answer UNAVAILABLE, as
the contract says ("retry with the same key").

The engine's clock is market time by default: the time of the last tick it processed
(0 before any), so a replay behaves the same at any speed; pass ``clock`` for wall time.
Calls are serialised by a lock; the engine is synchronous and does no network I/O.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TypeVar

import numpy as np

from quantmesh.runtime.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from quantmesh.services.execution.accounts import (
    DEFAULT_LEVERAGE,
    AccountState,
    Book,
    Fill,
    PositionView,
    Quote,
    check_conversions,
    conversion_rate,
    decimal_of,
)
from quantmesh.services.execution.broker import (
    Broker,
    BrokerEvent,
    BrokerEventKind,
    BrokerOrder,
)
from quantmesh.services.execution.orders import (
    AlreadyExists,
    Order,
    OrderEvent,
    OrderRequest,
    OrderState,
    OrderType,
    Origin,
    Side,
    TimeInForce,
    check_idempotency_key,
    new_order,
    next_state,
    transition,
    with_fill,
)
from quantmesh.services.execution.store import (
    AccountRecord,
    ExecutionReport,
    ExecutionStore,
    StoreTransaction,
    report_of,
)
from quantmesh.services.marketdata.sources import Symbol, TickColumns

_E = TypeVar("_E", Side, OrderType, TimeInForce)
DEFAULT_DEVIATION_POINTS = 10
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
DAY_MS = 86_400_000
WORKING_STATES = (OrderState.NEW, OrderState.ACCEPTED, OrderState.PARTIALLY_FILLED)
_BROKER_EVENTS = {
    BrokerEventKind.ACCEPTED: OrderEvent.ACCEPT,
    BrokerEventKind.REJECTED: OrderEvent.REJECT,
    BrokerEventKind.CANCELLED: OrderEvent.CANCEL,
    BrokerEventKind.EXPIRED: OrderEvent.EXPIRE,
}


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What :meth:`ExecutionEngine.recover` did, by idempotency key."""

    applied_events: int
    adopted: tuple[str, ...]
    resent: tuple[str, ...]
    lost: tuple[str, ...]
    reports: tuple[ExecutionReport, ...]


class ExecutionEngine:
    """Orders, positions and the account of one trading account at one broker.

    Parameters
    ----------
    store:
        Durable state; the engine loads orders, positions, balance and report seq from it.
    broker:
        The venue (:class:`~quantmesh.services.execution.broker.PaperBroker` or another
        :class:`~quantmesh.services.execution.broker.Broker`).
    symbols:
        Tradable symbols by name. Every symbol's quote currency must convert into
        ``currency`` through one of them (e.g. USDJPY for JPY), else FailedPrecondition.
    account_id, currency, starting_balance:
        The account; a store that already holds the account keeps its own balance.
    leverage:
        For margin, e.g. 100 for 1:100.
    default_deviation_points:
        Deviation of market orders that leave ``deviation_points`` at 0.
    clock:
        UTC epoch ms; None uses market time (the last tick processed).
    on_reports:
        Called with the new reports after each commit (e.g. to wake stream consumers).
    """

    def __init__(
        self,
        store: ExecutionStore,
        broker: Broker,
        *,
        symbols: Mapping[str, Symbol],
        account_id: str = "paper",
        currency: str = "USD",
        starting_balance: Decimal = Decimal("10000"),
        leverage: int = DEFAULT_LEVERAGE,
        default_deviation_points: int = DEFAULT_DEVIATION_POINTS,
        clock: Callable[[], int] | None = None,
        on_reports: Callable[[Sequence[ExecutionReport]], None] | None = None,
    ) -> None:
        self.store, self.broker = store, broker
        self.symbols = dict(symbols)
        self.account_id, self.currency, self.leverage = account_id, currency, leverage
        self.default_deviation_points = default_deviation_points
        check_conversions(self.symbols.values(), currency, self.symbols)
        self._clock, self._on_reports = clock, on_reports
        self._lock = threading.RLock()
        self._ready = False
        record = store.account(account_id)
        if record is None:
            record = AccountRecord(
                account_id, currency, starting_balance, starting_balance, Decimal(0), Decimal(0)
            )
            with store.transaction() as tx:
                tx.save_account(record)
        elif record.currency != currency:
            raise FailedPrecondition(
                f"account {account_id} is kept in {record.currency}, not {currency}"
            )
        self._cursor = record.broker_cursor
        self._book = Book(
            account_id,
            currency,
            self.symbols,
            record.starting_balance,
            record.balance,
            record.realized,
            record.commission,
            {p.position_id: p for p in store.positions(account_id)},
        )
        self._quotes: dict[str, Quote] = store.quotes()
        self._market_ms = max((q.time_ms for q in self._quotes.values()), default=0)
        # Ticks after the last stored quote may have acted on nothing (else a commit would
        # have stored them), so a restarted feed resumes there and changes nothing twice.
        self.resume_tick_seq = max((q.seq + 1 for q in self._quotes.values()), default=0)
        self._day = self._market_ms // DAY_MS if self._quotes else -1  # first tick opens a day
        self._day_start_equity = store.day_start_equity(account_id, self._day)

    # --- state ----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once :meth:`recover` has reconciled with the broker."""
        return self._ready

    @property
    def now_ms(self) -> int:
        """The engine's clock, UTC epoch ms."""
        return self._clock() if self._clock else self._market_ms

    @property
    def quotes(self) -> Mapping[str, Quote]:
        """Last quote of each symbol."""
        return dict(self._quotes)

    # --- commands -------------------------------------------------------------------

    def submit(self, request: OrderRequest) -> tuple[Order, bool]:
        """Record ``request`` and send it to the broker once; idempotent on its key.

        Returns
        -------
        (order, duplicate)
            The order as held after the broker's answer (ACCEPTED or REJECTED; fills come
            with ticks). ``duplicate`` is True when the key was known: the existing order
            is returned, whatever its state, and nothing is sent.

        Raises
        ------
        InvalidArgument
            Bad key, side, type, volume, price, time in force, stops or close request.
        NotFound
            Unknown account, symbol or position to close.
        AlreadyExists
            The key is known with different order fields (trace context aside).
        FailedPrecondition
            No quote yet to convert the symbol's profit into the account currency.
        Unavailable
            Before :meth:`recover`, or after a broker failure (retry with the same key).
        """
        with self._lock:
            self._require_ready()
            key = check_idempotency_key(request.idempotency_key)
            if request.account_id and request.account_id != self.account_id:
                raise NotFound(f"unknown account {request.account_id!r}")
            existing = self.store.order_by_key(self.account_id, key)
            if existing is not None:
                return self._duplicate(existing, request), True
            normalized = self._normalize(request)
            self._validate(normalized)
            with self.store.transaction() as tx:
                order_id = f"O{tx.next_id('order')}"
                order = new_order(normalized, order_id, self.account_id, self.now_ms, Origin.CLIENT)
                order = dataclasses.replace(order, reference_price=self._reference(order))
                tx.insert_order(order)
                reports = [tx.append_report(report_of(order, order.created_time_ms))]
            self._send(order)
            reports += self._drain(notify=False)
            result = self._order(order_id), False
        # Report streams wake once the order is answered and the lock is free, not while
        # it is sent: they would only wait for the lock and slow the submission down.
        # (Should the send fail, the NEW report reaches them with the next wake-up.)
        self._notify(reports)
        return result

    def cancel(self, order_id: str) -> Order:
        """Cancel a working order at the broker; return it (CANCELLED once confirmed).

        Raises
        ------
        NotFound
            No such order in this account.
        InvalidTransition
            (FailedPrecondition) The order is final.
        """
        with self._lock:
            self._require_ready()
            order = self._order(order_id)
            next_state(order.state, OrderEvent.CANCEL)  # raises for a final order
            self.broker.cancel(self.account_id, order.idempotency_key, self.now_ms)
            self._drain()
            return self._order(order_id)

    def on_ticks(self, columns: TickColumns, symbols: Sequence[str]) -> list[ExecutionReport]:
        """Let a batch of ticks act on orders and positions; return the reports it caused.

        ``symbols`` names the stream's symbol indices. Ticks of symbols the engine does
        not trade are skipped. Fills, stop-loss/take-profit closes and expiries are
        applied tick by tick, so conversions use the quotes of the fill's moment.
        """
        with self._lock:
            self._require_ready()
            rows: Sequence[int] = range(len(columns))
            if self.broker.idle:
                # No order or stop can react to these ticks: only each symbol's last quote
                # matters, so skip the per-tick loop (the common case of a flat book).
                index = np.asarray(columns.symbol_index)
                firsts_reversed = np.unique(index[::-1], return_index=True)[1]
                rows = sorted(int(i) for i in len(index) - 1 - firsts_reversed)
            reports: list[ExecutionReport] = []
            self._feed(columns, symbols, rows, reports)
            return reports

    def recover(self) -> RecoveryReport:
        """Reconcile with the broker after a (re)start; then the engine accepts orders.

        Idempotent: a second call finds nothing to do.
        """
        with self._lock:
            before = self._cursor
            new_keys = {o.idempotency_key for o in self._orders_in((OrderState.NEW,))}
            reports = self._drain()
            adopted, resent, lost = [], [], []
            for order in self._orders_in(WORKING_STATES):
                status = self.broker.lookup(self.account_id, order.idempotency_key)
                if order.state is OrderState.NEW and status is not None:
                    # Known to the broker but not in its journal: adopt its acknowledgement.
                    after = transition(
                        order,
                        OrderEvent.ACCEPT,
                        self.now_ms,
                        broker_order_id=status.broker_order_id,
                    )
                    reports += self._commit_change(order, after)
                    adopted.append(order.idempotency_key)
                elif order.state is OrderState.NEW:
                    self._send(order)
                    resent.append(order.idempotency_key)
                elif status is None:
                    reason = "the broker has no record of this order after a restart"
                    reports += self._commit_change(
                        order, transition(order, OrderEvent.REJECT, self.now_ms, reason=reason)
                    )
                    lost.append(order.idempotency_key)
            reports += self._drain()
            adopted += sorted(new_keys - set(resent) - set(adopted))
            self._ready = True
            return RecoveryReport(
                self._cursor - before, tuple(adopted), tuple(resent), tuple(lost), tuple(reports)
            )

    # --- queries --------------------------------------------------------------------

    def order(self, order_id: str) -> Order:
        """One order by execution id; NotFound if unknown."""
        with self._lock:
            return self._order(order_id)

    def order_by_key(self, idempotency_key: str) -> Order:
        """One order by idempotency key; NotFound if unknown."""
        with self._lock:
            order = self.store.order_by_key(self.account_id, idempotency_key)
            if order is None:
                raise NotFound(f"no order with idempotency key {idempotency_key!r}")
            return order

    def orders(
        self,
        *,
        states: Sequence[OrderState] = (),
        symbol: str = "",
        from_time_ms: int = 0,
        to_time_ms: int = 0,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[Order], str]:
        """Orders newest first, a page at a time: ``(orders, next_page_token)``.

        ``page_size`` 0 means 100 (at most 1,000); ``next_page_token`` is empty on the
        last page. InvalidArgument for a bad page size or token.
        """
        size = page_size or DEFAULT_PAGE_SIZE
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size must be 0..{MAX_PAGE_SIZE}, got {page_size}")
        if page_token and not (page_token.isdigit() and int(page_token) > 0):
            raise InvalidArgument(f"invalid page token {page_token!r}")
        with self._lock:
            rows = self.store.orders(
                self.account_id,
                states=states,
                symbol=symbol,
                from_time_ms=from_time_ms,
                to_time_ms=to_time_ms,
                before_seq=int(page_token or 0),
                limit=size + 1,
            )
        token = str(rows[size - 1][0]) if len(rows) > size else ""
        return [order for _, order in rows[:size]], token

    def positions(self, symbol: str = "") -> list[PositionView]:
        """Open positions, oldest first, valued at the last quotes."""
        with self._lock:
            open_ = sorted(
                self._book.positions.values(), key=lambda p: (p.open_time_ms, p.position_id)
            )
            return [self._book.value(p, self._quotes) for p in open_ if symbol in ("", p.symbol)]

    def account(self) -> AccountState:
        """Balance, equity, margin and totals at the last quotes."""
        with self._lock:
            day_start = self.now_ms // DAY_MS * DAY_MS
            today = self.store.fills(self.account_id, since_ms=day_start)
            realized_today = sum((f.realized_pnl - f.commission for f in today), Decimal(0))
            state = self._book.state(
                self._quotes,
                broker=self.broker.name,
                leverage=self.leverage,
                realized_today=realized_today,
            )
            # Before the first tick of a day is recorded, the day starts at today's equity.
            opening_equity = self._day_start_equity
            return dataclasses.replace(
                state,
                start_of_day_equity=state.equity if opening_equity is None else opening_equity,
                market_time_ms=self._market_ms,
            )

    def snapshot(self) -> tuple[AccountState, list[PositionView]]:
        """The account and its open positions, read together (no tick in between)."""
        with self._lock:
            return self.account(), self.positions()

    def reports_since(self, from_seq: int = 0, limit: int = 1000) -> list[ExecutionReport]:
        """Execution reports with ``seq >= from_seq``, oldest first (seqs start at 0).

        Reads committed reports without the engine's lock: streams never slow orders down.
        """
        return self.store.reports_since(from_seq, limit)

    def equity_identity_holds(self) -> bool:
        """True if balance + unrealized equals start + ledger realized + unrealized − ledger costs.

        The running balance is checked against the sums of the fills table, to the cent.
        """
        with self._lock:
            fills = self.store.fills(self.account_id)
            realized = sum((f.realized_pnl for f in fills), Decimal(0))
            costs = sum((f.commission for f in fills), Decimal(0))
            return self._book.equity_identity_holds(self._quotes, realized, costs)

    def closing_requests(
        self, symbol: str, idempotency_key: str, signal_id: str = ""
    ) -> list[OrderRequest]:
        """Market orders closing every open position of ``symbol`` (a CLOSE signal).

        Each gets the key ``{idempotency_key}:{position_id}``, so resubmitting them after a
        retry closes nothing twice.
        """
        with self._lock:
            return [
                OrderRequest(
                    idempotency_key=f"{idempotency_key}:{view.position.position_id}",
                    symbol=symbol,
                    side=view.position.side.opposite,
                    volume=view.position.volume,
                    position_id=view.position.position_id,
                    signal_id=signal_id,
                )
                for view in self.positions(symbol)
            ]

    # --- internals ------------------------------------------------------------------

    def _require_ready(self) -> None:
        if not self._ready:
            raise Unavailable(
                "execution is reconciling with the broker (recover() has not completed); "
                "retry with the same idempotency key"
            )

    def _order(self, order_id: str) -> Order:
        order = self.store.order(order_id)
        if order is None or order.account_id != self.account_id:
            raise NotFound(f"no order {order_id!r} in account {self.account_id}")
        return order

    def _orders_in(self, states: Sequence[OrderState]) -> list[Order]:
        rows = self.store.orders(self.account_id, states=states, limit=1_000_000)
        return [order for _, order in reversed(rows)]

    def _duplicate(self, existing: Order, request: OrderRequest) -> Order:
        try:
            differences = existing.differences(self._normalize(request))
        except DomainError as error:
            differences = [f"an invalid request ({error})"]
        if differences:
            raise AlreadyExists(
                f"idempotency key {existing.idempotency_key!r} already names order "
                f"{existing.order_id} with different {', '.join(differences)}"
            )
        return existing

    def _normalize(self, request: OrderRequest) -> OrderRequest:
        side = _enum(Side, request.side, "side", "BUY or SELL")
        type_ = _enum(OrderType, request.type, "type", "MARKET, LIMIT or STOP")
        tif = _enum(TimeInForce, request.time_in_force, "time_in_force", "a TimeInForce")
        if tif is TimeInForce.UNSPECIFIED:
            tif = TimeInForce.IOC if type_ is OrderType.MARKET else TimeInForce.GTC
        try:
            volume = decimal_of(request.volume)
        except (InvalidOperation, TypeError, ValueError):
            raise InvalidArgument(
                f"volume must be a decimal number of lots, got {request.volume!r}"
            ) from None
        return dataclasses.replace(
            request,
            side=side,
            type=type_,
            time_in_force=tif,
            volume=volume,
            deviation_points=request.deviation_points or self.default_deviation_points,
            account_id=self.account_id,
        )

    def _validate(self, request: OrderRequest) -> None:
        symbol = self.symbols.get(request.symbol)
        if symbol is None:
            known = ", ".join(sorted(self.symbols))
            raise NotFound(f"unknown symbol {request.symbol!r}; tradable: {known}")
        _check_volume(request.volume, symbol)
        if request.type is OrderType.MARKET and request.price is not None:
            raise InvalidArgument("a market order takes no price")
        if request.type is not OrderType.MARKET and (request.price is None or request.price <= 0):
            raise InvalidArgument(f"a {request.type.name} order needs a price > 0 in points")
        if request.time_in_force is TimeInForce.GTD:
            if request.expire_time_ms <= self.now_ms:
                raise InvalidArgument(
                    f"GTD needs expire_time_ms after now ({self.now_ms}), "
                    f"got {request.expire_time_ms}"
                )
        elif request.expire_time_ms:
            raise InvalidArgument("expire_time_ms is for GTD orders only; leave it 0")
        if request.deviation_points < 0:
            raise InvalidArgument(f"deviation_points must be >= 0, got {request.deviation_points}")
        for name in ("stop_loss", "take_profit"):
            level = getattr(request, name)
            if level is not None and level <= 0:
                raise InvalidArgument(f"{name} must be a price > 0 in points, got {level}")
        quote = self._quotes.get(request.symbol)
        if request.position_id:
            self._validate_close(request)
        else:
            _check_levels(request, quote)
        conversion_rate(symbol, self.currency, self.symbols, self._quotes)  # FailedPrecondition

    def _validate_close(self, request: OrderRequest) -> None:
        position = self._book.positions.get(request.position_id)
        if position is None:
            raise NotFound(f"no open position {request.position_id!r} to close")
        if position.symbol != request.symbol or position.side is request.side:
            raise InvalidArgument(
                f"closing position {position.position_id} ({position.side.name} "
                f"{position.symbol}) takes a {position.side.opposite.name} {position.symbol} order"
            )
        if request.volume > position.volume:
            raise InvalidArgument(
                f"volume {request.volume} exceeds the {position.volume} lots of position "
                f"{position.position_id}"
            )
        if request.type is not OrderType.MARKET:
            raise InvalidArgument("a closing order is a MARKET order")
        if request.stop_loss is not None or request.take_profit is not None:
            raise InvalidArgument("a closing order takes no stop loss or take profit")

    def _reference(self, order: Order) -> int | None:
        quote = self._quotes.get(order.symbol)
        if quote is None or order.type is not OrderType.MARKET:
            return None
        return quote.ask if order.side is Side.BUY else quote.bid

    def _send(self, order: Order) -> None:
        # Recovery may send an order recorded before a crash: it reaches the broker as of
        # when it was recorded, measured from the quote seen then, never earlier.
        reference = order.reference_price
        if reference is None:  # recorded without a quote (or by an older release)
            reference = self._reference(order)
        request = BrokerOrder(
            account_id=order.account_id,
            client_key=order.idempotency_key,
            symbol=order.symbol,
            side=order.side,
            type=order.type,
            volume=order.volume,
            price=order.price,
            stop_loss=order.stop_loss,
            take_profit=order.take_profit,
            time_in_force=order.time_in_force,
            expire_time_ms=order.expire_time_ms,
            deviation_points=order.deviation_points,
            position_id=order.position_id,
            submitted_ms=max(self.now_ms, order.created_time_ms),
            reference_price=reference,
        )
        try:
            self.broker.submit(request)
        except BaseException:
            # Did the broker get it? Only reconciliation can tell: stop until recover().
            self._ready = False
            raise

    def _feed(
        self,
        columns: TickColumns,
        symbols: Sequence[str],
        rows: Sequence[int],
        reports: list[ExecutionReport],
    ) -> None:
        index, times = columns.symbol_index, columns.time_msc
        bids, asks = columns.bid, columns.ask
        for i in rows:
            name = symbols[int(index[i])]
            if name not in self.symbols:
                continue
            quote = Quote(name, int(bids[i]), int(asks[i]), int(times[i]), columns.seq + i)
            if quote.time_ms // DAY_MS != self._day:
                self._begin_day(quote.time_ms // DAY_MS)
            self._quotes[name] = quote
            self._market_ms = max(self._market_ms, quote.time_ms)
            self.broker.on_tick(quote)
            if self.broker.last_event_seq > self._cursor:
                reports += self._drain()

    def _begin_day(self, day: int) -> None:
        # Equity at the last quotes of the previous day: the daily loss limit's base. A
        # restart re-feeding the day's first ticks finds the record and keeps it.
        equity = self._book.balance + self._book.unrealized(self._quotes)
        self.store.save_day_start(self.account_id, day, equity)
        self._day = day
        self._day_start_equity = self.store.day_start_equity(self.account_id, day)

    def _drain(self, notify: bool = True) -> list[ExecutionReport]:
        """Apply the broker's journal after the cursor, in one transaction."""
        if self.broker.last_event_seq <= self._cursor:
            return []
        events = self.broker.events_since(self._cursor)
        if not events:
            return []
        book = self._book.copy()  # swapped in only after the commit
        reports: list[ExecutionReport] = []
        # Not fsynced: recover() applies the broker journal again from the stored cursor.
        with self.store.transaction(durable=False) as tx:
            for event in events:
                if event.account_id == self.account_id:
                    reports += self._apply(tx, book, event)
            tx.save_account(self._record(book, events[-1].seq))
            tx.save_quotes(self._quotes.values())  # the rates this batch was converted at
        self._book, self._cursor = book, events[-1].seq
        if notify:
            self._notify(reports)
        return reports

    def _apply(self, tx: StoreTransaction, book: Book, event: BrokerEvent) -> list[ExecutionReport]:
        reports: list[ExecutionReport] = []
        order = tx.order_by_key(self.account_id, event.client_key)
        if (
            order is None
            and event.kind is BrokerEventKind.ACCEPTED
            and event.origin is not Origin.CLIENT
        ):
            order = self._broker_order(tx, event)
            reports.append(tx.append_report(report_of(order, event.time_ms)))
        if order is None:
            raise FailedPrecondition(
                f"broker event {event.seq} names key {event.client_key!r}, unknown to this "
                "store: the broker journal and the execution store do not belong together"
            )
        fill = None
        if event.kind is BrokerEventKind.FILL:
            fill, position = book.apply(
                Fill(
                    event.deal_id,
                    order.order_id,
                    event.position_id,
                    order.symbol,
                    order.side,
                    event.fill_volume,
                    event.fill_price,
                    event.commission,
                    event.time_ms,
                    event.closing,
                ),
                self._quotes,
                stop_loss=order.stop_loss,
                take_profit=order.take_profit,
                signal_id=order.signal_id,
            )
            tx.insert_fill(self.account_id, fill)
            tx.save_position(position)
            after = with_fill(order, fill.volume, fill.price, fill.commission, event.time_ms)
        else:
            after = transition(
                order,
                _BROKER_EVENTS[event.kind],
                event.time_ms,
                reason="" if event.kind is BrokerEventKind.ACCEPTED else event.reason,
                broker_order_id=event.broker_order_id,
            )
        tx.update_order(order, after)
        report = report_of(after, event.time_ms, fill)
        if event.kind is BrokerEventKind.ACCEPTED and event.reason:
            report = dataclasses.replace(report, reason=event.reason)  # e.g. "stop_loss 108000"
        reports.append(tx.append_report(report))
        return reports

    def _broker_order(self, tx: StoreTransaction, event: BrokerEvent) -> Order:
        request = OrderRequest(
            idempotency_key=event.client_key,
            symbol=event.symbol,
            side=event.side,
            volume=event.volume,
            time_in_force=TimeInForce.IOC,
            position_id=event.position_id,
        )
        position = self._book.positions.get(event.position_id)
        if position is not None:
            # A stop or target closes what a decision opened: it joins that decision's
            # story (audit log) and trace.
            opening = self.store.order(position.order_id)
            request = dataclasses.replace(
                request,
                signal_id=position.signal_id,
                traceparent=opening.traceparent if opening else "",
                tracestate=opening.tracestate if opening else "",
            )
        order = new_order(
            request, f"O{tx.next_id('order')}", self.account_id, event.time_ms, event.origin
        )
        tx.insert_order(order)
        return order

    def _commit_change(self, before: Order, after: Order) -> list[ExecutionReport]:
        with self.store.transaction() as tx:
            tx.update_order(before, after)
            reports = [tx.append_report(report_of(after, after.updated_time_ms))]
        self._notify(reports)
        return reports

    def _record(self, book: Book, cursor: int) -> AccountRecord:
        return AccountRecord(
            self.account_id,
            self.currency,
            book.starting_balance,
            book.balance,
            book.realized,
            book.commission,
            cursor,
        )

    def _notify(self, reports: Sequence[ExecutionReport]) -> None:
        if reports and self._on_reports is not None:
            self._on_reports(reports)


def _enum(kind: type[_E], value: object, name: str, allowed: str) -> _E:
    try:
        member = kind(value)  # type: ignore[arg-type]  # checked here, at run time
    except (ValueError, TypeError):
        member = None
    if member is None or (kind is not TimeInForce and int(member) == 0):
        raise InvalidArgument(f"{name} must be {allowed}, got {value!r}")
    return member


def _check_volume(volume: Decimal, symbol: Symbol) -> None:
    step = decimal_of(symbol.volume_step)
    if not volume.is_finite() or volume <= 0:
        raise InvalidArgument(f"volume must be greater than 0 lots, got {volume}")
    if volume % step:
        raise InvalidArgument(
            f"volume {volume} is not a multiple of {symbol.name}'s volume step {step}"
        )
    low, high = decimal_of(symbol.volume_min), decimal_of(symbol.volume_max)
    if not low <= volume <= high:
        raise InvalidArgument(f"volume {volume} is outside {symbol.name}'s {low}..{high} lots")


def _check_levels(request: OrderRequest, quote: Quote | None) -> None:
    """Stops and pending prices on the right side of the price (when one is known)."""
    sign, buy = request.side.sign, request.side is Side.BUY
    if quote is not None and request.type is not OrderType.MARKET:
        assert request.price is not None
        market = quote.ask if buy else quote.bid
        # A buy limit sits below the market and a buy stop above it; a sell mirrors.
        below = request.type is OrderType.LIMIT
        wrong = (
            (request.price - market) * sign >= 0 if below else (request.price - market) * sign <= 0
        )
        if wrong:
            where = ("below" if buy else "above") if below else ("above" if buy else "below")
            raise InvalidArgument(
                f"a {request.side.name} {request.type.name} price must be {where} the market "
                f"({market}), got {request.price}"
            )
    if request.type is not OrderType.MARKET:
        reference: int | None = request.price
    elif quote is not None:
        reference = quote.close_price(request.side)  # the price the position closes at
    else:
        reference = None  # no quote yet: the broker checks the stops at the fill
    if reference is None:
        return
    if request.stop_loss is not None and (reference - request.stop_loss) * sign <= 0:
        raise InvalidArgument(
            f"stop loss {request.stop_loss} of a {request.side.name} must be "
            f"{'below' if buy else 'above'} the price {reference}"
        )
    if request.take_profit is not None and (request.take_profit - reference) * sign <= 0:
        raise InvalidArgument(
            f"take profit {request.take_profit} of a {request.side.name} must be "
            f"{'above' if buy else 'below'} the price {reference}"
        )

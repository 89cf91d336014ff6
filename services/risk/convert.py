"""The one place where risk's protobuf messages meet its domain types.

Signals come in as ``quantmesh.decision.v1.Signal`` and leave as the core's
:class:`~quantmesh.services.risk.core.SignalView`; execution's account and positions
become an :class:`~quantmesh.services.risk.core.AccountState`; decisions, limits and
kill switches go out as ``quantmesh.risk.v1`` messages. Bad input raises the runtime's
domain errors with the field named, so clients learn what to fix.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from quantmesh.common.v1 import common_pb2
from quantmesh.decision.v1 import decision_pb2
from quantmesh.execution.v1 import execution_pb2
from quantmesh.risk.v1 import risk_pb2
from quantmesh.runtime.errors import InvalidArgument, NotFound
from quantmesh.services.decision.policy import Action
from quantmesh.services.execution.convert import (
    lots_from_proto,
    lots_to_proto,
    money_from_proto,
    money_to_proto,
)
from quantmesh.services.risk.core import AccountState, RiskDecision, SignalView
from quantmesh.services.risk.rules import KillSwitch, RiskLimits, RuleVerdict
from quantmesh.services.risk.sizing import ZERO, Quote, Quotes, SymbolSpec, fmt, to_decimal

# Execution's idempotency key alphabet: the driver uses the signal id as the key (and
# ``signal_id:position_id`` for closes), so an id outside it could never be traded.
_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")
MAX_SIGNAL_ID_LENGTH = 64
PROBABILITY_UP = "probability_up"
_NANOS_PER_UNIT = 1_000_000_000


# --- signals ------------------------------------------------------------------------


def symbol_spec(name: str, symbols: Mapping[str, SymbolSpec]) -> SymbolSpec:
    """The symbol ``name`` of ``symbols``; InvalidArgument when empty, NotFound when unknown."""
    if not name:
        raise InvalidArgument("signal.symbol is required")
    spec = symbols.get(name)
    if spec is None:
        raise NotFound(f"unknown symbol {name!r}; risk knows {', '.join(sorted(symbols))}")
    return spec


def _price(signal: decision_pb2.Signal, field: str, digits: int, source: str) -> int | None:
    if not signal.HasField(field):  # type: ignore[arg-type]
        return None
    price: common_pb2.Price = getattr(signal, field)
    if price.digits != digits:
        raise InvalidArgument(f"signal.{field} has {price.digits} digits, {source} {digits}")
    return int(price.points)


def _named(names: Iterable[str], values: Iterable[float], what: str) -> dict[str, float]:
    names, values = list(names), list(values)
    if len(names) != len(values):
        raise InvalidArgument(
            f"signal.{what}_names has {len(names)} entries but signal.{what}_values {len(values)}"
        )
    return dict(zip(names, values, strict=True))


def check_signal_id(signal_id: str) -> str:
    """``signal_id`` if it can key an order at execution, else InvalidArgument."""
    if not signal_id:
        raise InvalidArgument("signal.signal_id is required")
    if len(signal_id) > MAX_SIGNAL_ID_LENGTH or not set(signal_id) <= _KEY_CHARS:
        raise InvalidArgument(
            f"signal.signal_id {signal_id[:80]!r} must be 1 to {MAX_SIGNAL_ID_LENGTH} characters "
            "of A-Z, a-z, 0-9 and '._:-' (it becomes the order's idempotency key)"
        )
    return signal_id


def signal_view_from_proto(signal: decision_pb2.Signal, symbol: SymbolSpec) -> SignalView:
    """What the risk core needs from a signal.

    The action, confidence and the sides of the stop and target are checked by the core
    (InvalidArgument there too); here the fields that only the wire can get wrong are:
    the id, prices with mixed digits and name/value lists of different lengths. A signal
    with no price at all (a CLOSE may carry none) is read in the symbol's digits.
    """
    check_signal_id(signal.signal_id)
    if signal.HasField("reference_price"):
        digits, source = signal.reference_price.digits, "signal.reference_price has"
    else:
        digits, source = symbol.digits, f"{symbol.name} quotes with"
    outputs = _named(signal.output_names, signal.output_values, "output")
    return SignalView(
        signal_id=signal.signal_id,
        symbol=signal.symbol,
        action=int(signal.action),
        confidence=signal.confidence,
        digits=digits,
        reference_points=_price(signal, "reference_price", digits, source),
        stop_loss_points=_price(signal, "stop_loss", digits, source),
        take_profit_points=_price(signal, "take_profit", digits, source),
        model_name=signal.model_name,
        model_version=signal.model_version,
        probability_up=outputs.get(PROBABILITY_UP),
        features=_named(signal.feature_names, signal.feature_values, "feature"),
        reason=signal.reason,
        time_msc=signal.time_msc,
    )


def is_actionable(signal: decision_pb2.Signal) -> bool:
    """True for BUY, SELL and CLOSE: the signals that may become orders."""
    return int(signal.action) in (Action.BUY, Action.SELL, Action.CLOSE)


# --- account state from execution -----------------------------------------------------


def account_state_from_proto(
    account: execution_pb2.Account, positions: Iterable[execution_pb2.Position]
) -> AccountState:
    """The core's view of an account: execution's balances plus its open positions.

    ``open_volumes`` is the total open volume of each symbol, longs and shorts added: the
    account hedges (a buy and a sell are two positions), and a CLOSE closes both. The
    open position count is the larger of the account's and the listing's: the two reads
    are not atomic, and the larger count is the stricter one. An account whose execution
    does not report ``start_of_day_equity`` gets 0, which the daily loss rule rejects
    (fail safe) rather than guessing a base.
    """
    listed = list(positions)
    volumes: dict[str, Decimal] = {}
    for position in listed:
        volumes[position.symbol] = volumes.get(position.symbol, ZERO) + lots_from_proto(
            position.volume
        )
    start = (
        money_from_proto(account.start_of_day_equity)
        if account.HasField("start_of_day_equity")
        else ZERO
    )
    return AccountState(
        account_id=account.account_id,
        currency=account.currency,
        equity=money_from_proto(account.equity),
        balance=money_from_proto(account.balance),
        start_of_day_equity=start,
        open_positions=max(int(account.open_positions), len(listed)),
        realized_pnl_today=money_from_proto(account.realized_pnl_today),
        open_volumes={symbol: Decimal(fmt(volume)) for symbol, volume in volumes.items()},
    )


@dataclass
class _LastPrice:
    points: int
    time_ms: int


class QuoteBook:
    """The last known price of each symbol, for the core's currency conversions.

    Execution has no quote query, so risk collects prices where they pass by: the
    reference price of every signal the driver reads (HOLDs included; the ask for a buy,
    the bid otherwise) and the current price of open positions (the bid of a long, the
    ask of a short). A one-sided price stands for both bid and ask: a conversion rate is
    then off by at most half a spread (under 0.01 % on the majors), far below what
    rounding a volume down to its step changes. A symbol never seen has no quote, and
    the core answers FAILED_PRECONDITION for a conversion that needs it.
    """

    def __init__(self, symbols: Mapping[str, SymbolSpec]) -> None:
        self._symbols = dict(symbols)
        self._last: dict[str, _LastPrice] = {}

    def observe(self, signal: decision_pb2.Signal) -> None:
        """Remember the signal's reference price unless a later one is known."""
        spec = self._symbols.get(signal.symbol)
        if spec is None or not signal.HasField("reference_price"):
            return
        price = signal.reference_price
        if price.digits != spec.digits or price.points <= 0:
            return
        last = self._last.get(signal.symbol)
        if last is None or signal.time_msc >= last.time_ms:
            self._last[signal.symbol] = _LastPrice(int(price.points), signal.time_msc)

    def quotes(self, positions: Iterable[execution_pb2.Position] = ()) -> Quotes:
        """Quotes of every symbol known; open positions' prices (current) win over signals'."""
        bids: dict[str, int] = {}
        asks: dict[str, int] = {}
        for position in positions:
            spec = self._symbols.get(position.symbol)
            price = position.current_price
            if spec is None or price.digits != spec.digits or price.points <= 0:
                continue
            side = bids if position.side == common_pb2.SIDE_BUY else asks
            side[position.symbol] = int(price.points)
        quotes: list[Quote] = []
        for name, spec in sorted(self._symbols.items()):
            last = self._last.get(name)
            pair = _bid_ask(bids.get(name), asks.get(name), None if last is None else last.points)
            if pair is not None:
                base, profit = spec.currency_base, spec.currency_profit
                quotes.append(Quote.from_points(name, base, profit, *pair, spec.digits))
        return Quotes(quotes)


def _bid_ask(bid: int | None, ask: int | None, last: int | None) -> tuple[int, int] | None:
    """Both sides when known and ordered, else the one price known for both sides."""
    if bid is not None and ask is not None:
        return (bid, ask) if bid <= ask else (bid, bid)
    price = bid if bid is not None else ask if ask is not None else last
    return None if price is None else (price, price)


# --- decisions, verdicts, kill switches -------------------------------------------------


def verdict_to_proto(verdict: RuleVerdict) -> risk_pb2.RuleVerdict:
    return risk_pb2.RuleVerdict(
        rule=verdict.rule,
        passed=verdict.passed,
        reason=verdict.reason,
        measured=verdict.measured,
        limit=verdict.limit,
        unit=verdict.unit,
    )


def decision_to_proto(
    decision: RiskDecision, trace: common_pb2.TraceContext | None = None
) -> risk_pb2.RiskDecision:
    """The wire form of a decision, every verdict included; ``trace`` is the signal's."""
    message = risk_pb2.RiskDecision(
        signal_id=decision.signal_id,
        account_id=decision.account_id,
        approved=decision.approved,
        volume=lots_to_proto(decision.volume),
        risk_amount=money_to_proto(decision.risk_amount, decision.currency),
        verdicts=[verdict_to_proto(verdict) for verdict in decision.verdicts],
        reason=decision.reason,
        time_msc=decision.time_msc,
    )
    if trace is not None:
        message.trace.CopyFrom(trace)
    return message


def kill_switch_to_proto(switch: KillSwitch) -> risk_pb2.KillSwitch:
    return risk_pb2.KillSwitch(
        account_id=switch.account_id,
        engaged=switch.engaged,
        reason=switch.reason,
        changed_by=switch.changed_by,
        changed_time_ms=switch.changed_time_ms,
    )


# --- limits -------------------------------------------------------------------------------


def limits_to_proto(limits: RiskLimits) -> risk_pb2.RiskLimits:
    """The six fields the contract has; the model guards' settings stay inside risk."""
    return risk_pb2.RiskLimits(
        risk_per_trade_bps=limits.risk_per_trade_bps,
        max_daily_loss_bps=limits.max_daily_loss_bps,
        max_open_positions=limits.max_open_positions,
        min_volume=lots_to_proto(limits.min_volume),
        max_volume=lots_to_proto(limits.max_volume),
        min_reward_risk=float(limits.min_reward_risk),
    )


def _lots_field(message: risk_pb2.RiskLimits, name: str, problems: list[str]) -> Decimal | None:
    if not message.HasField(name):  # type: ignore[arg-type]
        problems.append(f"{name} is required")
        return None
    lots: common_pb2.Lots = getattr(message, name)
    if lots.units < 0 or not 0 <= lots.nanos < _NANOS_PER_UNIT:
        problems.append(
            f"{name} must have units >= 0 and nanos in 0..999999999, "
            f"got units {lots.units} nanos {lots.nanos}"
        )
        return None
    return Decimal(fmt(lots_from_proto(lots)))


def limits_from_proto(message: risk_pb2.RiskLimits, current: RiskLimits) -> RiskLimits:
    """Check every field of a SetLimits request; the limits it sets.

    The request replaces the contract's six fields; the model guards (confidence,
    volatility and ATR bands), which have no field yet, keep ``current``'s values.
    Every problem is reported at once, each naming its field.

    Raises
    ------
    InvalidArgument
        A field out of its documented range, a volume that is missing, negative or not
        a valid Lots, or ``max_volume < min_volume``.
    """
    problems: list[str] = []
    for name, low in (
        ("risk_per_trade_bps", 1),
        ("max_daily_loss_bps", 1),
        ("max_open_positions", 1),
    ):
        value = getattr(message, name)
        high = 10_000 if name.endswith("_bps") else None
        if value < low or (high is not None and value > high):
            bound = f"{low}..{high}" if high is not None else f"at least {low}"
            problems.append(f"{name} must be {bound}, got {value}")
    min_volume = _lots_field(message, "min_volume", problems)
    max_volume = _lots_field(message, "max_volume", problems)
    if min_volume is not None and min_volume <= ZERO:
        problems.append(f"min_volume must be greater than 0, got {min_volume}")
    if min_volume is not None and max_volume is not None and max_volume < min_volume:
        problems.append(f"max_volume {max_volume} must be at least min_volume {min_volume}")
    reward_risk = message.min_reward_risk
    if not (math.isfinite(reward_risk) and 0.0 <= reward_risk <= 100.0):
        problems.append(f"min_reward_risk must be 0..100, got {reward_risk}")
    if problems:
        raise InvalidArgument("invalid limits: " + "; ".join(problems))
    assert min_volume is not None
    assert max_volume is not None
    # RiskLimits checks everything again on construction (the guards included).
    return dataclasses.replace(
        current,
        risk_per_trade_bps=int(message.risk_per_trade_bps),
        max_daily_loss_bps=int(message.max_daily_loss_bps),
        max_open_positions=int(message.max_open_positions),
        min_volume=min_volume,
        max_volume=max_volume,
        min_reward_risk=to_decimal(reward_risk),
    )

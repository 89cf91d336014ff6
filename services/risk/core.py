"""The risk engine: every signal checked against its account's limits, then sized.

:meth:`RiskEngine.evaluate` runs every rule of :data:`~.rules.RULES`, in order, even
after one fails, and returns a :class:`RiskDecision` with all their verdicts. A signal is
approved only if every verdict passed; a rejected signal has volume 0 and never becomes an
order. What each action gets:

- **BUY / SELL** open risk, so every rule applies; the size comes from
  :func:`~.sizing.size_position` with a budget of ``equity × risk_per_trade_bps``, scaled
  by the confidence and regime factors.
- **CLOSE** reduces risk, so it is approved without sizing, always, even while a kill
  switch is engaged or the daily loss limit is reached. Its volume is the account's open
  volume of the symbol when :attr:`AccountState.open_volumes` knows it, else 0 (close it all).
- **HOLD** is rejected by ``signal_shape``: nothing to do.

Malformed input raises :class:`~quantmesh.runtime.errors.InvalidArgument` instead of
returning verdicts: an unknown action, a stop or target on the wrong side of the
reference price, prices in other digits than the symbol's, a confidence outside [0, 1].
A signal that is well formed but incomplete (no stop loss, no take profit) is rejected
with a verdict. No conversion path from the symbol's profit currency to the account
currency raises :class:`~quantmesh.runtime.errors.FailedPrecondition`.

**Kill switch.** There is one per account and a global one. Reaching the daily loss limit
engages the account's switch automatically (changed by ``risk/max_daily_loss``, at the
signal's market time). It stays engaged until an operator releases it, also across UTC
days: a loss limit hit is a reason for a person to look before trading resumes.

Time is always the signal's market time, never the wall clock, so a backtest and the live
mesh make the same decisions. Nothing here imports grpc.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from quantmesh.runtime.errors import InvalidArgument
from quantmesh.services.decision.policy import Action
from quantmesh.services.risk.rules import (
    RULES,
    DriftMonitor,
    KillSwitch,
    RiskLimits,
    RuleVerdict,
    check_band,
    check_daily_loss,
    check_kill_switch,
    check_open_positions,
    check_reward_risk,
    check_risk_per_trade,
    check_volume_bounds,
    confidence_scale,
    regime_scale,
    skipped,
)
from quantmesh.services.risk.sizing import (
    ZERO,
    Quote,
    Quotes,
    Sizing,
    SymbolSpec,
    fmt,
    points_to_price,
    size_position,
    to_decimal,
)

MAX_REASON_LENGTH = 500
AUTO_ENGAGED_BY = "risk/max_daily_loss"
_CURRENCY = re.compile(r"[A-Z]{3}")


@dataclass(frozen=True, slots=True)
class AccountState:
    """What risk needs to know about an account at the time of a signal.

    Attributes
    ----------
    account_id, currency:
        The account and its ISO 4217 currency, e.g. ``USD``.
    equity:
        Balance plus unrealized profit, account currency; positions are sized from it.
    balance:
        Settled money, account currency (informational).
    start_of_day_equity:
        Equity at 00:00 UTC today; the daily loss is measured from it.
    open_positions:
        Number of positions open now, across all symbols.
    realized_pnl_today:
        Realized profit since 00:00 UTC (informational; equity already includes it).
    open_volumes:
        Net open lots per symbol, where known; the volume a CLOSE reports.
    """

    account_id: str
    currency: str
    equity: Decimal
    balance: Decimal
    start_of_day_equity: Decimal
    open_positions: int = 0
    realized_pnl_today: Decimal = ZERO
    open_volumes: Mapping[str, Decimal] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.account_id:
            raise InvalidArgument("account_id is required")
        if not _CURRENCY.fullmatch(self.currency):
            raise InvalidArgument(
                f"account currency must be an ISO 4217 code, got {self.currency!r}"
            )
        money = (self.equity, self.balance, self.start_of_day_equity, self.realized_pnl_today)
        if not all(isinstance(value, Decimal) and value.is_finite() for value in money):
            raise InvalidArgument("account amounts must be finite Decimals, never floats")
        if self.open_positions < 0:
            raise InvalidArgument(f"open_positions must not be negative, got {self.open_positions}")


@dataclass(frozen=True, slots=True)
class SignalView:
    """What risk needs from a ``quantmesh.decision.v1.Signal``.

    Prices are integer points with the symbol's ``digits``; an unset price is None.
    ``action`` is the proto's Action value (0 or unknown raises InvalidArgument).
    ``probability_up`` comes from the ``probability_up`` model output and ``features``
    from ``feature_names``/``feature_values``; a NaN in either counts as absent.
    """

    signal_id: str
    symbol: str
    action: int
    confidence: float
    digits: int
    reference_points: int | None
    stop_loss_points: int | None = None
    take_profit_points: int | None = None
    model_name: str = ""
    model_version: str = ""
    probability_up: float | None = None
    features: Mapping[str, float] = field(default_factory=dict)
    reason: str = ""
    time_msc: int = 0

    def feature(self, name: str) -> Decimal | None:
        """A feature value as a Decimal, or None when absent or NaN."""
        value = self.features.get(name)
        return None if value is None or not math.isfinite(value) else to_decimal(value)


@dataclass(frozen=True, slots=True)
class RiskDecision:
    """Risk's verdict on one signal for one account; mirrors ``quantmesh.risk.v1.RiskDecision``.

    ``volume`` (lots) and ``risk_amount`` (``currency``) are 0 unless approved, except
    that an approved CLOSE carries the volume to close and no risk. ``sizing`` keeps the
    arithmetic of the size (None when none was computed); it has no proto field.
    """

    signal_id: str
    account_id: str
    approved: bool
    volume: Decimal
    risk_amount: Decimal
    currency: str
    verdicts: tuple[RuleVerdict, ...]
    reason: str
    time_msc: int
    sizing: Sizing | None = None

    def verdict(self, rule: str) -> RuleVerdict:
        """The verdict of ``rule``; KeyError if the decision has none."""
        for verdict in self.verdicts:
            if verdict.rule == rule:
                return verdict
        raise KeyError(rule)


class RiskEngine:
    """Per-account limits, kill switches and the drift monitor; evaluates signals.

    Parameters
    ----------
    limits_by_account:
        Limits of accounts that do not use ``default_limits``.
    default_limits:
        Limits of every other account; :class:`~.rules.RiskLimits` defaults if None.
    drift:
        The model drift monitor, shared by all accounts (drift is the model's, not the
        account's); a default :class:`~.rules.DriftMonitor` if None.
    """

    def __init__(
        self,
        limits_by_account: Mapping[str, RiskLimits] | None = None,
        default_limits: RiskLimits | None = None,
        drift: DriftMonitor | None = None,
    ) -> None:
        self._limits: dict[str, RiskLimits] = dict(limits_by_account or {})
        self.default_limits = default_limits or RiskLimits()
        self.drift = drift or DriftMonitor()
        self._switches: dict[str, KillSwitch] = {}

    def limits(self, account_id: str) -> RiskLimits:
        """The limits in force for ``account_id``."""
        return self._limits.get(account_id, self.default_limits)

    def uses_default_limits(self, account_id: str) -> bool:
        """True if ``set_limits`` was never called for ``account_id``."""
        return account_id not in self._limits

    def set_limits(self, account_id: str, limits: RiskLimits) -> RiskLimits:
        """Replace the limits of ``account_id`` (already validated by RiskLimits)."""
        if not account_id:
            raise InvalidArgument("account_id is required")
        self._limits[account_id] = limits
        return limits

    def kill_switch(self, account_id: str = "") -> KillSwitch:
        """The switch of ``account_id`` (empty: the global one).

        An account's switch reads as engaged while the global one is, with the global
        switch's reason, author and time.
        """
        glob = self._switches.get("", KillSwitch())
        if not account_id:
            return glob
        own = self._switches.get(account_id, KillSwitch(account_id))
        if glob.engaged and not own.engaged:
            return dataclasses.replace(
                glob, account_id=account_id, reason=f"global kill switch: {glob.reason}"
            )
        return own

    def set_kill_switch(
        self, account_id: str, *, engaged: bool, reason: str, changed_by: str, time_ms: int
    ) -> KillSwitch:
        """Engage or release the switch of ``account_id`` (empty: the global one).

        Raises
        ------
        InvalidArgument
            Engaging without a reason, or a reason over 500 characters.
        """
        reason = reason.strip()
        if engaged and not reason:
            raise InvalidArgument("a reason is required to engage the kill switch")
        if len(reason) > MAX_REASON_LENGTH:
            raise InvalidArgument(f"reason is longer than {MAX_REASON_LENGTH} characters")
        switch = KillSwitch(account_id, engaged, reason, changed_by, time_ms)
        self._switches[account_id] = switch
        return switch

    def evaluate(
        self, signal: SignalView, account: AccountState, quotes: Quotes, symbol: SymbolSpec
    ) -> RiskDecision:
        """Check ``signal`` against ``account``'s limits and size it.

        Parameters
        ----------
        signal:
            The signal to evaluate.
        account:
            The account's state now.
        quotes:
            Current quotes for the profit → account currency conversion. The traded
            symbol's own quote defaults to the signal's reference price.
        symbol:
            The traded symbol (``marketdata.sources.Symbol`` fits).

        Raises
        ------
        InvalidArgument
            Malformed signal (see the module docstring).
        FailedPrecondition
            No quotes link the symbol's profit currency to the account currency.
        """
        action = _validate(signal, symbol)
        limits = self.limits(account.account_id)
        p_up = signal.probability_up
        if p_up is not None and math.isfinite(p_up) and signal.model_name:
            self.drift.observe(
                signal.model_name, signal.model_version, signal.signal_id, to_decimal(p_up)
            )
        daily = check_daily_loss(
            account.equity, account.start_of_day_equity, account.currency, limits
        )
        # Only a measured loss engages the switch: an account that has no start-of-day
        # equity yet (unfunded) is rejected by the rule but needs no operator to reset.
        reached = not daily.passed and account.start_of_day_equity > ZERO
        if reached and not self._switches.get(account.account_id, KillSwitch()).engaged:
            self.set_kill_switch(
                account.account_id,
                engaged=True,
                reason=daily.reason,
                changed_by=AUTO_ENGAGED_BY,
                time_ms=signal.time_msc,
            )
        switch = self.kill_switch(account.account_id)
        if action is Action.BUY or action is Action.SELL:
            return self._opening(signal, action, account, limits, quotes, symbol, switch, daily)
        opening_rules = RULES[2:]
        verdicts = [check_kill_switch(switch, opening=False)]
        if action is Action.HOLD:
            verdicts.append(RuleVerdict("signal_shape", False, "HOLD: nothing to do"))
            verdicts += [skipped(rule, "not applicable to HOLD") for rule in opening_rules]
            return _decision(signal, account, verdicts, ZERO, ZERO, None, "")
        volume = account.open_volumes.get(signal.symbol, ZERO)
        known = f"{volume} lots open" if signal.symbol in account.open_volumes else "volume unknown"
        verdicts.append(
            RuleVerdict("signal_shape", True, f"CLOSE {signal.symbol} ({known}): reduces risk")
        )
        for rule in opening_rules:
            if rule == "max_daily_loss":
                verdicts.append(
                    dataclasses.replace(
                        daily, passed=True, reason=f"{daily.reason}; closing is allowed"
                    )
                )
            else:
                verdicts.append(skipped(rule, "not applicable to CLOSE: closing reduces risk"))
        return _decision(signal, account, verdicts, volume, ZERO, None, f"CLOSE {signal.symbol}")

    def _opening(
        self,
        signal: SignalView,
        action: Action,
        account: AccountState,
        limits: RiskLimits,
        quotes: Quotes,
        symbol: SymbolSpec,
        switch: KillSwitch,
        daily: RuleVerdict,
    ) -> RiskDecision:
        side = action.name
        reference = signal.reference_points
        assert reference is not None  # _validate requires it for BUY and SELL
        direction = 1 if action is Action.BUY else -1
        stop = take = None
        if signal.stop_loss_points is not None:
            stop = direction * (reference - signal.stop_loss_points)
        if signal.take_profit_points is not None:
            take = direction * (signal.take_profit_points - reference)
        verdicts = [check_kill_switch(switch, opening=True)]
        if stop is None:
            shape = RuleVerdict(
                "signal_shape", False, f"{side} without a stop loss: its loss has no bound"
            )
            verdicts += [shape, skipped("min_reward_risk", "skipped: no stop loss")]
        else:
            target = f"target {take} points" if take is not None else "no target"
            shape = RuleVerdict(
                "signal_shape", True, f"{side} at {reference}: stop {stop} points, {target}"
            )
            verdicts += [shape, check_reward_risk(stop, take, limits)]
        verdicts += [daily, check_open_positions(account.open_positions, limits)]
        verdicts.append(
            check_band(
                "volatility",
                "volatility_20",
                signal.feature("volatility_20"),
                limits.volatility_min,
                limits.volatility_max,
                "log-return",
            )
        )
        verdicts.append(
            check_band(
                "atr",
                "atr_14_rel",
                signal.feature("atr_14_rel"),
                limits.atr_rel_min,
                limits.atr_rel_max,
                "ratio",
            )
        )
        if signal.probability_up is None or not math.isfinite(signal.probability_up):
            verdicts.append(skipped("drift", "not checked: the signal carries no probability_up"))
        elif not signal.model_name:
            verdicts.append(skipped("drift", "not checked: the signal names no model"))
        else:
            verdicts.append(self.drift.check(signal.model_name, signal.model_version))
        conf_scale, conf_verdict = confidence_scale(to_decimal(signal.confidence), limits)
        vol_scale, vol_verdict = regime_scale(signal.feature("volatility_20"), limits)
        verdicts += [conf_verdict, vol_verdict]
        scale = conf_scale * vol_scale
        sizing = None
        if stop is None or scale == ZERO:
            why = (
                "skipped: no stop loss" if stop is None else "skipped: no budget at this confidence"
            )
            verdicts += [skipped("risk_per_trade", why), skipped("volume_bounds", why)]
        else:
            price = points_to_price(reference, symbol.digits)
            own = Quote(symbol.name, symbol.currency_base, symbol.currency_profit, price, price)
            conversion = quotes.with_quote(own).conversion(symbol.currency_profit, account.currency)
            budget = max(ZERO, account.equity) * limits.risk_fraction * scale
            sizing = size_position(
                budget=budget,
                stop_points=stop,
                symbol=symbol,
                conversion=conversion,
                min_volume=limits.min_volume,
                max_volume=limits.max_volume,
            )
            verdicts.append(
                check_risk_per_trade(
                    sizing,
                    equity=account.equity,
                    currency=account.currency,
                    limits=limits,
                    scale=scale,
                )
            )
            verdicts.append(check_volume_bounds(sizing, account.currency))
        volume = sizing.volume if sizing is not None else ZERO
        risk = sizing.risk_amount if sizing is not None else ZERO
        summary = f"{side} {volume} lots {signal.symbol}, risk {fmt(risk)} {account.currency}"
        if sizing is not None and sizing.capped:
            summary += f" (capped at {sizing.max_volume} lots)"
        return _decision(signal, account, verdicts, volume, risk, sizing, summary)


def _decision(
    signal: SignalView,
    account: AccountState,
    verdicts: list[RuleVerdict],
    volume: Decimal,
    risk: Decimal,
    sizing: Sizing | None,
    summary: str,
) -> RiskDecision:
    assert tuple(v.rule for v in verdicts) == RULES, "every rule gets one verdict, in order"
    failed = [verdict for verdict in verdicts if not verdict.passed]
    if failed:
        volume = risk = ZERO  # a rejected signal never becomes an order
        reason = "rejected: " + "; ".join(_failure(verdict) for verdict in failed)
    else:
        reason = f"approved: {summary}"
    return RiskDecision(
        signal_id=signal.signal_id,
        account_id=account.account_id,
        approved=not failed,
        volume=volume,
        risk_amount=risk,
        currency=account.currency,
        verdicts=tuple(verdicts),
        reason=reason,
        time_msc=signal.time_msc,
        sizing=sizing,
    )


def _failure(verdict: RuleVerdict) -> str:
    """``max_open_positions 5/5``, ``max_daily_loss 520/500 bps``, or the rule's reason."""
    if verdict.measured and verdict.limit and verdict.unit != "bool":
        unit = "" if verdict.unit in ("count", "ratio") else f" {verdict.unit}"
        return f"{verdict.rule} {verdict.measured}/{verdict.limit}{unit}"
    return f"{verdict.rule} ({verdict.reason})"


def _validate(signal: SignalView, symbol: SymbolSpec) -> Action:
    """The signal's action, after the checks whose failure is bad input, not a rejection."""
    try:
        action = Action(signal.action)
    except ValueError:
        raise InvalidArgument(
            f"signal {signal.signal_id}: action {signal.action} is not BUY, SELL, CLOSE or HOLD"
        ) from None
    where = f"signal {signal.signal_id} ({action.name} {signal.symbol})"
    if signal.symbol != symbol.name:
        raise InvalidArgument(f"{where}: evaluated against symbol {symbol.name}")
    if not (math.isfinite(signal.confidence) and 0.0 <= signal.confidence <= 1.0):
        raise InvalidArgument(f"{where}: confidence must be in [0, 1], got {signal.confidence}")
    if signal.digits != symbol.digits:
        raise InvalidArgument(
            f"{where}: prices have {signal.digits} digits, {symbol.name} has {symbol.digits}"
        )
    if action is not Action.BUY and action is not Action.SELL:
        return action
    reference, stop, take = (
        signal.reference_points,
        signal.stop_loss_points,
        signal.take_profit_points,
    )
    if reference is None:
        raise InvalidArgument(f"{where}: a reference price is required")
    if any(price is not None and price <= 0 for price in (reference, stop, take)):
        raise InvalidArgument(f"{where}: prices must be positive")
    # BUY: stop < reference < target; SELL: stop > reference > target. Anything else is
    # a bug upstream, not a trade to judge.
    direction = 1 if action is Action.BUY else -1
    if stop is not None and direction * (reference - stop) <= 0:
        side = "below" if action is Action.BUY else "above"
        raise InvalidArgument(f"{where}: stop loss {stop} must be {side} the reference {reference}")
    if take is not None and direction * (take - reference) <= 0:
        side = "above" if action is Action.BUY else "below"
        raise InvalidArgument(
            f"{where}: take profit {take} must be {side} the reference {reference}"
        )
    return action

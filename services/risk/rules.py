"""Risk limits and the rules that check a signal against them, one verdict each.

Every rule is a pure function that returns a :class:`RuleVerdict`: the rule's name,
whether it passed, a sentence for a person, and what it measured against which limit as
exact decimal strings in a named unit. The engine (:mod:`.core`) runs them all, in the
order of :data:`RULES`, even after one fails, so a rejection tells its whole story.

A rule that cannot be checked (a feature the signal does not carry, a size that cannot
be computed without a stop) *passes* with a reason that starts ``not checked:`` or
``skipped:``; it never blocks on missing data by itself, and a rule that did fail says so.

The model guards (the "AI part"):

- **confidence** scales the risk budget linearly from ``min_confidence_scale`` at
  ``min_confidence`` up to 1 at ``full_size_confidence`` and above; below
  ``min_confidence`` the signal is rejected.
- **regime** scales the budget down as ``volatility_20`` (std of the last 20 H1 log
  returns) rises: 1 up to ``volatility_taper_from``, then linearly down to
  ``min_volatility_scale`` at ``volatility_max``.
- **volatility** and **atr** block trading when ``volatility_20`` or ``atr_14_rel`` (ATR14
  / close) is outside its band: a dead market makes stops meaninglessly tight, a wild one
  makes them meaningless. On the shipped 2017 EUR/USD H1 data ``volatility_20`` ranges
  0.00027–0.0037 and ``atr_14_rel`` 0.00047–0.0036, so the default bands block nothing
  there; they are for feeds that freeze or markets that break.
- **drift** blocks a model whose recent predictions look broken (see :class:`DriftMonitor`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, fields
from decimal import ROUND_DOWN, Decimal, localcontext

from quantmesh.runtime.errors import InvalidArgument
from quantmesh.services.risk.sizing import ONE, PRECISION, ZERO, Sizing, fmt, quantize_down

# Evaluation order; every decision carries one verdict per rule, in this order.
RULES = (
    "kill_switch",
    "signal_shape",
    "min_reward_risk",
    "max_daily_loss",
    "max_open_positions",
    "volatility",
    "atr",
    "drift",
    "confidence",
    "regime",
    "risk_per_trade",
    "volume_bounds",
)
BPS = Decimal(10_000)
DISPLAY = Decimal("0.0001")  # ratios in reasons and verdicts, rounded down


@dataclass(frozen=True, slots=True)
class RuleVerdict:
    """Verdict of one rule; mirrors ``quantmesh.risk.v1.RuleVerdict``.

    ``measured`` and ``limit`` are exact decimal strings in ``unit`` (``bps``, ``lots``,
    ``count``, ``ratio``, ``bool``, ``log-return``, ``probability`` or an ISO 4217 code);
    both are empty when the rule measured nothing.
    """

    rule: str
    passed: bool
    reason: str
    measured: str = ""
    limit: str = ""
    unit: str = ""


@dataclass(frozen=True, slots=True)
class RiskLimits:
    """Risk limits of one account; every field is validated at construction.

    The first six fields mirror ``quantmesh.risk.v1.RiskLimits``; the rest configure the
    model guards and have no proto field yet, so an adapter keeps them from the account's
    current limits (or the defaults) when it applies a SetLimits request.

    Attributes
    ----------
    risk_per_trade_bps:
        Largest loss at the stop of one trade, basis points of equity (200 = 2 %). 1–10,000.
    max_daily_loss_bps:
        Largest loss from the UTC day's starting equity (realized plus unrealized, i.e.
        equity), in bps (500 = 5 %). Reaching it rejects opening signals and engages the
        account's kill switch, which stays engaged until an operator releases it. 1–10,000.
    max_open_positions:
        Most positions open at once; a signal that would open one more is rejected. ≥ 1.
    min_volume, max_volume:
        Lots. A computed size below ``min_volume`` rejects the signal (never sized up);
        above ``max_volume`` it is capped. ``0 < min_volume <= max_volume``.
    min_reward_risk:
        Smallest take-profit distance / stop distance. 0–100; 0 disables the rule.
    min_confidence:
        Smallest signal confidence traded, in [0, 1].
    full_size_confidence:
        Confidence from which the full budget is risked; ``>= min_confidence``.
    min_confidence_scale:
        Share of the budget risked at ``min_confidence``, in (0, 1].
    volatility_min, volatility_max:
        Band of ``volatility_20`` (std of H1 log returns) that may trade.
    volatility_taper_from:
        ``volatility_20`` above which the budget shrinks; within the band.
    min_volatility_scale:
        Share of the budget risked at ``volatility_max``, in (0, 1].
    atr_rel_min, atr_rel_max:
        Band of ``atr_14_rel`` (ATR14 / close) that may trade.
    """

    risk_per_trade_bps: int = 200
    max_daily_loss_bps: int = 500
    max_open_positions: int = 5
    min_volume: Decimal = Decimal("0.01")
    max_volume: Decimal = Decimal("1.0")
    min_reward_risk: Decimal = Decimal(2)
    min_confidence: Decimal = Decimal("0.1")
    full_size_confidence: Decimal = Decimal("0.3")
    min_confidence_scale: Decimal = Decimal("0.5")
    volatility_min: Decimal = Decimal("0.0002")
    volatility_max: Decimal = Decimal("0.004")
    volatility_taper_from: Decimal = Decimal("0.0015")
    min_volatility_scale: Decimal = Decimal("0.5")
    atr_rel_min: Decimal = Decimal("0.0003")
    atr_rel_max: Decimal = Decimal("0.004")

    def __post_init__(self) -> None:
        for spec in fields(self):
            value: object = getattr(self, spec.name)
            # Exact types only: a float would carry binary error into money, a bool is no count.
            if spec.type == "int":
                valid = type(value) is int
            else:
                valid = isinstance(value, Decimal) and value.is_finite()
            if not valid:
                raise InvalidArgument(f"RiskLimits.{spec.name} must be a finite {spec.type}")
        problems = [message for ok, message in self._checks() if not ok]
        if problems:
            raise InvalidArgument("invalid risk limits: " + "; ".join(problems))

    def _checks(self) -> list[tuple[bool, str]]:
        return [
            (1 <= self.risk_per_trade_bps <= 10_000, "risk_per_trade_bps must be 1..10000"),
            (1 <= self.max_daily_loss_bps <= 10_000, "max_daily_loss_bps must be 1..10000"),
            (self.max_open_positions >= 1, "max_open_positions must be at least 1"),
            (self.min_volume > ZERO, "min_volume must be greater than 0"),
            (self.max_volume >= self.min_volume, "max_volume must be at least min_volume"),
            (ZERO <= self.min_reward_risk <= 100, "min_reward_risk must be 0..100"),
            (
                ZERO <= self.min_confidence <= self.full_size_confidence <= ONE,
                "need 0 <= min_confidence <= full_size_confidence <= 1",
            ),
            (ZERO < self.min_confidence_scale <= ONE, "min_confidence_scale must be in (0, 1]"),
            (
                ZERO <= self.volatility_min <= self.volatility_taper_from < self.volatility_max,
                "need 0 <= volatility_min <= volatility_taper_from < volatility_max",
            ),
            (ZERO < self.min_volatility_scale <= ONE, "min_volatility_scale must be in (0, 1]"),
            (ZERO <= self.atr_rel_min < self.atr_rel_max, "need 0 <= atr_rel_min < atr_rel_max"),
        ]

    @property
    def risk_fraction(self) -> Decimal:
        """``risk_per_trade_bps`` as a fraction of equity (200 → 0.02)."""
        return Decimal(self.risk_per_trade_bps) / BPS


@dataclass(frozen=True, slots=True)
class KillSwitch:
    """State of a kill switch; mirrors ``quantmesh.risk.v1.KillSwitch``.

    ``account_id`` is empty for the global switch. ``changed_time_ms`` is UTC epoch ms of
    the last change, 0 if never changed.
    """

    account_id: str = ""
    engaged: bool = False
    reason: str = ""
    changed_by: str = ""
    changed_time_ms: int = 0


def _ratio(value: Decimal) -> str:
    return fmt(value.quantize(DISPLAY, rounding=ROUND_DOWN))


def skipped(rule: str, why: str) -> RuleVerdict:
    """A passing verdict for a rule that does not apply or could not be checked."""
    return RuleVerdict(rule, True, why)


def check_kill_switch(switch: KillSwitch, *, opening: bool) -> RuleVerdict:
    """Opening signals fail while the switch (the account's or the global one) is engaged."""
    state = "true" if switch.engaged else "false"
    if not switch.engaged:
        return RuleVerdict("kill_switch", True, "kill switch released", state, "false", "bool")
    why = f"kill switch engaged by {switch.changed_by or 'unknown'}: {switch.reason}"
    if not opening:
        return RuleVerdict(
            "kill_switch", True, f"{why}; closing is allowed while engaged", state, "false", "bool"
        )
    return RuleVerdict("kill_switch", False, why, state, "false", "bool")


def check_reward_risk(stop_points: int, take_points: int | None, limits: RiskLimits) -> RuleVerdict:
    """Take-profit distance / stop distance must reach ``min_reward_risk`` (0 disables)."""
    limit = fmt(limits.min_reward_risk)
    if limits.min_reward_risk == ZERO:
        return skipped("min_reward_risk", "not checked: min_reward_risk is 0 (disabled)")
    if take_points is None:
        return RuleVerdict(
            "min_reward_risk",
            False,
            "no take profit: reward:risk cannot be measured",
            "",
            limit,
            "ratio",
        )
    with localcontext() as ctx:
        ctx.prec = PRECISION
        ratio = Decimal(take_points) / Decimal(stop_points)
    # Compared exactly by cross-multiplying; the ratio string is rounded down for display.
    passed = take_points >= limits.min_reward_risk * stop_points
    relation = ">=" if passed else "<"
    return RuleVerdict(
        "min_reward_risk",
        passed,
        f"reward:risk {_ratio(ratio)} (target {take_points} / stop {stop_points} points) "
        f"{relation} {limit}",
        _ratio(ratio),
        limit,
        "ratio",
    )


def check_daily_loss(
    equity: Decimal, start_of_day_equity: Decimal, currency: str, limits: RiskLimits
) -> RuleVerdict:
    """Loss since the start of the UTC day must stay below ``max_daily_loss_bps``."""
    limit = str(limits.max_daily_loss_bps)
    if start_of_day_equity <= ZERO:
        return RuleVerdict(
            "max_daily_loss",
            False,
            f"start-of-day equity {fmt(start_of_day_equity)} {currency} is not positive",
            "",
            limit,
            "bps",
        )
    loss = max(ZERO, start_of_day_equity - equity)
    with localcontext() as ctx:
        ctx.prec = PRECISION
        loss_bps = loss * BPS / start_of_day_equity
    shown = fmt(loss_bps.quantize(Decimal("0.01"), rounding=ROUND_DOWN))
    passed = loss * BPS < limits.max_daily_loss_bps * start_of_day_equity
    relation = "<" if passed else ">="
    return RuleVerdict(
        "max_daily_loss",
        passed,
        f"daily loss {fmt(loss)} {currency} = {shown} bps of start-of-day equity "
        f"{fmt(start_of_day_equity)} {currency} {relation} {limit} bps",
        shown,
        limit,
        "bps",
    )


def check_open_positions(open_positions: int, limits: RiskLimits) -> RuleVerdict:
    """Fewer than ``max_open_positions`` must be open for one more to open."""
    passed = open_positions < limits.max_open_positions
    limit = limits.max_open_positions
    return RuleVerdict(
        "max_open_positions",
        passed,
        f"{open_positions} open positions, limit {limit}"
        + ("" if passed else ": no room for another"),
        str(open_positions),
        str(limit),
        "count",
    )


def check_band(
    rule: str, feature: str, value: Decimal | None, low: Decimal, high: Decimal, unit: str
) -> RuleVerdict:
    """``value`` of ``feature`` must lie in ``[low, high]``; a missing value is not checked."""
    if value is None:
        return skipped(rule, f"not checked: the signal carries no {feature}")
    band = f"[{fmt(low)}, {fmt(high)}]"
    if value < low:
        return RuleVerdict(
            rule, False, f"{feature} {fmt(value)} below the band {band}", fmt(value), fmt(low), unit
        )
    if value > high:
        return RuleVerdict(
            rule,
            False,
            f"{feature} {fmt(value)} above the band {band}",
            fmt(value),
            fmt(high),
            unit,
        )
    return RuleVerdict(
        rule, True, f"{feature} {fmt(value)} within {band}", fmt(value), fmt(high), unit
    )


def confidence_scale(confidence: Decimal, limits: RiskLimits) -> tuple[Decimal, RuleVerdict]:
    """Share of the risk budget a signal of this confidence gets, and its verdict.

    Linear from ``min_confidence_scale`` at ``min_confidence`` to 1 at
    ``full_size_confidence``; 1 above it; 0 (rejected) below ``min_confidence``. The scale
    is rounded down to 4 decimals: rounding never adds risk.
    """
    low, full, floor = (
        limits.min_confidence,
        limits.full_size_confidence,
        limits.min_confidence_scale,
    )
    measured, limit = fmt(confidence), fmt(low)
    if confidence < low:
        reason = f"confidence {measured} < {limit}: too unsure to trade"
        return ZERO, RuleVerdict("confidence", False, reason, measured, limit, "ratio")
    if confidence >= full:
        scale = ONE
    else:
        with localcontext() as ctx:
            ctx.prec = PRECISION
            scale = floor + (ONE - floor) * (confidence - low) / (full - low)
        scale = scale.quantize(DISPLAY, rounding=ROUND_DOWN)
    reason = (
        f"confidence {measured}: size ×{fmt(scale)} "
        f"(×{fmt(floor)} at {limit} rising to ×1 at {fmt(full)})"
    )
    return scale, RuleVerdict("confidence", True, reason, measured, limit, "ratio")


def regime_scale(volatility: Decimal | None, limits: RiskLimits) -> tuple[Decimal, RuleVerdict]:
    """Share of the risk budget in the current volatility regime, and its verdict.

    1 while ``volatility_20 <= volatility_taper_from``, then linear down to
    ``min_volatility_scale`` at ``volatility_max`` (and no lower; the volatility rule
    blocks beyond). Without ``volatility_20`` the scale is 1 and the verdict says so.
    """
    if volatility is None:
        return ONE, skipped("regime", "not checked: the signal carries no volatility_20; size ×1")
    start, end, floor = (
        limits.volatility_taper_from,
        limits.volatility_max,
        limits.min_volatility_scale,
    )
    if volatility <= start:
        scale = ONE
    else:
        with localcontext() as ctx:
            ctx.prec = PRECISION
            share = min(ONE, (volatility - start) / (end - start))
            scale = (ONE - (ONE - floor) * share).quantize(DISPLAY, rounding=ROUND_DOWN)
    reason = (
        f"volatility_20 {fmt(volatility)}: size ×{fmt(scale)} "
        f"(×1 up to {fmt(start)}, falling to ×{fmt(floor)} at {fmt(end)})"
    )
    return scale, RuleVerdict("regime", True, reason, fmt(volatility), fmt(start), "log-return")


def check_risk_per_trade(
    sizing: Sizing, *, equity: Decimal, currency: str, limits: RiskLimits, scale: Decimal
) -> RuleVerdict:
    """The loss at the stop with the sized volume must not exceed the account's budget.

    The limit is the unscaled budget, ``equity × risk_per_trade_bps``; the sized budget
    (after the confidence and regime scales) is in the reason, with the arithmetic.
    """
    limit = max(ZERO, equity) * limits.risk_fraction
    conversion = sizing.conversion
    per_point = _money(sizing.value_per_point)
    reason = (
        f"risk {fmt(sizing.risk_amount)} {currency} at {sizing.volume} lots: stop "
        f"{sizing.stop_points} points × {per_point} {currency}/point/lot "
        f"(rate {conversion.source}→{conversion.target} {conversion.path}); budget "
        f"{limits.risk_per_trade_bps} bps of equity {fmt(equity)} {currency} = "
        f"{fmt(limit)} {currency}"
        f", ×{fmt(scale)} = {fmt(sizing.budget)} {currency}"
    )
    passed = sizing.risk_amount <= limit and sizing.budget > ZERO
    return RuleVerdict(
        "risk_per_trade", passed, reason, fmt(sizing.risk_amount), fmt(limit), currency
    )


def check_volume_bounds(sizing: Sizing, currency: str) -> RuleVerdict:
    """The size must reach the minimum volume; above the maximum it is capped (and passes)."""
    raw = _lots(sizing.raw_volume, sizing.step)
    low, high = sizing.min_volume, sizing.max_volume
    if sizing.below_min:
        reason = (
            f"computed {raw} lots is below the minimum {low}: {low} lots would risk "
            f"{fmt(sizing.min_volume_risk)} {currency}, over the budget "
            f"{fmt(sizing.budget)} {currency}"
        )
        shown = quantize_down(sizing.raw_volume, sizing.step)
        return RuleVerdict("volume_bounds", False, reason, str(shown), str(low), "lots")
    if sizing.capped:
        reason = f"computed {raw} lots capped at the maximum {high} lots"
        return RuleVerdict("volume_bounds", True, reason, str(sizing.volume), str(high), "lots")
    reason = (
        f"computed {raw} lots, rounded down to {sizing.volume} (step {sizing.step}) "
        f"within [{low}, {high}]"
    )
    return RuleVerdict("volume_bounds", True, reason, str(sizing.volume), str(high), "lots")


def _lots(value: Decimal, step: Decimal) -> str:
    # Six decimals, rounded down, but never fewer decimals than the step has (1 → 1.00).
    text = fmt(value.quantize(Decimal("0.000001"), rounding=ROUND_DOWN))
    decimals = len(text.partition(".")[2])
    exponent = step.as_tuple().exponent
    places = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    return f"{Decimal(text):.{places}f}" if decimals < places else text


def _money(value: Decimal) -> str:
    # A rate such as 1/150 does not terminate; nine decimals is Money's resolution.
    return fmt(value.quantize(Decimal("0.000000001"), rounding=ROUND_DOWN))


@dataclass(frozen=True, slots=True)
class DriftStatus:
    """Rolling statistics of one model's recent predictions.

    ``mean_p_up`` and the shares are 0 when ``samples`` is 0.
    """

    model: str
    samples: int
    mean_p_up: Decimal
    up_share: Decimal
    down_share: Decimal


class _Window:
    """The last ``size`` predictions of one model, with running sums (O(1) per update)."""

    def __init__(self, size: int) -> None:
        self.items: deque[tuple[str, Decimal]] = deque()
        self.ids: set[str] = set()
        self.size = size
        self.total = ZERO  # exact: p_up enters as the Decimal of its repr
        self.up = self.down = 0

    def add(self, signal_id: str, p_up: Decimal) -> None:
        if signal_id in self.ids:
            return  # the same signal evaluated for another account is one prediction
        if len(self.items) == self.size:
            old_id, old = self.items.popleft()
            self.ids.discard(old_id)
            self._count(old, -1)
        self.items.append((signal_id, p_up))
        self.ids.add(signal_id)
        self._count(p_up, 1)

    def _count(self, p_up: Decimal, sign: int) -> None:
        self.total += sign * p_up
        if p_up > Decimal("0.5"):
            self.up += sign
        elif p_up < Decimal("0.5"):
            self.down += sign


class DriftMonitor:
    """Detects drift of a model from its recent predictions, per (model name, version).

    A model has **drifted** when, over its last ``window`` predictions (each signal's
    ``probability_up``, counted once per signal id),

    - the mean ``p_up`` leaves ``[mean_low, mean_high]`` (default [0.35, 0.65]): the model
      has a bias its training did not have, or
    - more than ``max_direction_share`` (default 90 %) of them point the same way
      (``p_up > 0.5`` up, ``< 0.5`` down): the model is stuck.

    Until ``min_samples`` predictions are in, nothing is judged. Memory is O(window) per
    model and an update is O(1). The monitor should see every prediction, so the adapter
    subscribes to decision with ``include_hold``; seeing only BUY and SELL signals it sees
    the confident tail, whose mean lies further from 0.5.
    """

    def __init__(
        self,
        window: int = 100,
        min_samples: int = 50,
        mean_low: Decimal = Decimal("0.35"),
        mean_high: Decimal = Decimal("0.65"),
        max_direction_share: Decimal = Decimal("0.9"),
    ) -> None:
        if not 1 <= min_samples <= window:
            raise InvalidArgument("DriftMonitor needs 1 <= min_samples <= window")
        if not ZERO <= mean_low < mean_high <= ONE:
            raise InvalidArgument("DriftMonitor needs 0 <= mean_low < mean_high <= 1")
        if not ZERO < max_direction_share <= ONE:
            raise InvalidArgument("DriftMonitor needs 0 < max_direction_share <= 1")
        self.window, self.min_samples = window, min_samples
        self.mean_low, self.mean_high = mean_low, mean_high
        self.max_direction_share = max_direction_share
        self._windows: dict[tuple[str, str], _Window] = {}

    def observe(self, model_name: str, model_version: str, signal_id: str, p_up: Decimal) -> None:
        """Record one prediction; a signal id already in the window is ignored."""
        key = (model_name, model_version)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window(self.window)
        window.add(signal_id, p_up)

    def status(self, model_name: str, model_version: str) -> DriftStatus:
        """The rolling statistics of a model (zeros if it was never observed)."""
        model = f"{model_name}@{model_version}"
        window = self._windows.get((model_name, model_version))
        if window is None or not window.items:
            return DriftStatus(model, 0, ZERO, ZERO, ZERO)
        n = Decimal(len(window.items))
        with localcontext() as ctx:
            ctx.prec = PRECISION
            return DriftStatus(
                model, len(window.items), window.total / n, window.up / n, window.down / n
            )

    def check(self, model_name: str, model_version: str) -> RuleVerdict:
        """The ``drift`` verdict for a model."""
        status = self.status(model_name, model_version)
        if status.samples < self.min_samples:
            return skipped(
                "drift",
                f"not checked: {status.samples} of {self.min_samples} predictions of "
                f"{status.model} seen so far",
            )
        mean, band = _ratio(status.mean_p_up), f"[{fmt(self.mean_low)}, {fmt(self.mean_high)}]"
        last = f"the last {status.samples} predictions of {status.model}"
        if not self.mean_low <= status.mean_p_up <= self.mean_high:
            edge = self.mean_low if status.mean_p_up < self.mean_low else self.mean_high
            reason = f"drift: mean p_up {mean} over {last} is outside {band}"
            return RuleVerdict("drift", False, reason, mean, fmt(edge), "probability")
        share = max(status.up_share, status.down_share)
        direction = "up" if status.up_share >= status.down_share else "down"
        limit = fmt(self.max_direction_share)
        if share > self.max_direction_share:
            reason = f"drift: {_ratio(share)} of {last} point {direction}, more than {limit}"
            return RuleVerdict("drift", False, reason, _ratio(share), limit, "ratio")
        reason = (
            f"no drift: mean p_up {mean} within {band}, {_ratio(share)} of {last} "
            f"point {direction} (at most {limit})"
        )
        return RuleVerdict("drift", True, reason, _ratio(share), limit, "ratio")

"""The decision policy: a model's probability plus market context → an action, with a reason.

Rules, in order (the first that applies decides; every decision says which):

1. **No prediction** (the model's features are still warming up): HOLD.
2. **Stale model**: the model's training data ends more than ``max_model_age_ms`` before
   the row: HOLD (or CLOSE an open directional signal).
3. **Thin data**: the bar had fewer than ``min_bar_ticks`` ticks, so its close is not a
   price to trade on: HOLD (or CLOSE).
4. **Blocked regime** (default: high volatility): HOLD (or CLOSE).
5. **Closed session**: none of ``allowed_sessions`` is open (default London or New York):
   HOLD (or CLOSE).
6. **Confidence** ``|2·p_up − 1|`` below ``min_confidence``: HOLD.
7. Otherwise BUY when ``p_up > 0.5``, SELL when ``p_up < 0.5``. The stop sits
   ``stop_atr_multiple`` ATRs from the reference price and the target ``reward_risk``
   times as far on the other side, so risk sees a 2:1 reward:risk by default.

"Or CLOSE": when a filter blocks trading while the last directional signal of the symbol
is still standing, the policy emits CLOSE once, so positions do not outlive the
conditions they were opened in.

The policy is deterministic: the same inputs in the same order give the same decisions,
ids included (ids derive from the inputs, see :func:`signal_id`). Its only state is the
last directional action per symbol.

**Similar past states** (optional, off by default: ``QUANTMESH_DECISION_SIMILAR_STATES``
is 0). When an input carries :class:`SimilarOutcomes` (what followed the k past market
states most like this row, :mod:`quantmesh.services.decision.similar`), the decision's
reason ends with them, e.g. "12 similar past states: 8 rose over 1h, mean +4.1 bps".
They are context for the people and the audit log only: they never change the action,
the confidence, the stop, the target or the id. An input without them (the default)
gets exactly the decision it got before they existed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import uuid
from dataclasses import dataclass, field
from enum import IntEnum

POLICY_NAME = "threshold@1"

SESSION_NAMES = {1: "Sydney", 2: "Tokyo", 4: "London", 8: "New York"}
REGIME_NAMES = {
    0: "unknown",
    1: "trend up",
    2: "trend down",
    3: "ranging",
    4: "high volatility",
    5: "low volatility",
    6: "breakout",
}
HIGH_VOLATILITY = 4


class Action(IntEnum):
    """What a signal asks for; values match ``quantmesh.decision.v1.Action``."""

    BUY = 1
    SELL = 2
    CLOSE = 3
    HOLD = 4


@dataclass(frozen=True)
class PolicyConfig:
    """Thresholds and filters of the policy (documented defaults).

    Attributes
    ----------
    min_confidence:
        Smallest ``|2·p_up − 1|`` that trades; 0.1 means p_up ≥ 0.55 or ≤ 0.45.
    blocked_regimes:
        Regime values in which no new trade is opened.
    allowed_sessions:
        Session bit mask; a row trades only if one of these sessions is open.
    stop_atr_multiple:
        Stop distance in ATRs.
    reward_risk:
        Target distance / stop distance.
    min_bar_ticks:
        Fewest ticks a bar needs for its close to be traded on.
    max_model_age_ms:
        Oldest the model's training data may be, relative to the row, before the model
        counts as stale.
    """

    min_confidence: float = 0.1
    blocked_regimes: frozenset[int] = frozenset({HIGH_VOLATILITY})
    allowed_sessions: int = 4 | 8
    stop_atr_multiple: float = 1.5
    reward_risk: float = 2.0
    min_bar_ticks: int = 4
    max_model_age_ms: int = 90 * 86_400_000


@dataclass(frozen=True)
class SimilarOutcomes:
    """What followed the past market states most similar to an input's row.

    Attributes
    ----------
    count:
        How many similar states were found (up to the configured k).
    rose:
        How many of them the price rose after, over ``horizon_ms``.
    mean_bps:
        Their mean return over ``horizon_ms``, in basis points (0 when ``count`` is 0).
    horizon_ms:
        How far ahead the outcomes look.
    """

    count: int
    rose: int
    mean_bps: float
    horizon_ms: int

    def describe(self) -> str:
        """E.g. ``12 similar past states: 8 rose over 1h, mean +4.1 bps``."""
        if not self.count:
            return "no similar past states yet"
        states = "state" if self.count == 1 else "states"
        return (
            f"{self.count} similar past {states}: {self.rose} rose over "
            f"{_duration(self.horizon_ms)}, mean {self.mean_bps:+.1f} bps"
        )


@dataclass(frozen=True)
class DecisionInput:
    """Everything one decision is made from: one feature row and its prediction."""

    symbol: str
    digits: int
    time_msc: int
    feature_seq: int
    prediction_seq: int
    probability_up: float  # NaN: no prediction
    model_name: str
    model_version: str
    model_alias: str
    model_data_to_ms: int
    close_points: int  # ask close of the bar
    spread_points: float
    atr_points: float  # NaN while warming up
    tick_count: int
    regime: int
    session_mask: int
    feature_names: tuple[str, ...] = ()
    feature_values: tuple[float, ...] = ()
    similar: SimilarOutcomes | None = None  # context for the reason only


@dataclass(frozen=True)
class Decision:
    """The policy's answer for one input, prices in integer points."""

    signal_id: str
    action: Action
    confidence: float
    reference_points: int
    stop_loss_points: int | None
    take_profit_points: int | None
    reason: str
    source: DecisionInput


@dataclass
class DecisionPolicy:
    """Apply :class:`PolicyConfig` to a stream of inputs (state: last action per symbol)."""

    config: PolicyConfig = field(default_factory=PolicyConfig)
    _standing: dict[str, Action] = field(default_factory=dict)

    def decide(self, row: DecisionInput) -> Decision:
        decision = self._decide(row)
        if row.similar is None:
            return decision
        # Similar past states are context: only the reason changes, never the decision.
        return dataclasses.replace(decision, reason=f"{decision.reason}; {row.similar.describe()}")

    def _decide(self, row: DecisionInput) -> Decision:
        config = self.config
        p = row.probability_up
        blocked = self._blocking_filter(row)
        if math.isnan(p):
            return self._hold(row, 0.0, "no prediction: the model's features are warming up")
        confidence = abs(2.0 * p - 1.0)
        if blocked is not None:
            if row.symbol in self._standing:
                del self._standing[row.symbol]
                return self._decision(row, Action.CLOSE, confidence, f"close: {blocked}")
            return self._hold(row, confidence, f"hold: {blocked}")
        context = self._context(row)
        if confidence < config.min_confidence:
            return self._hold(
                row,
                confidence,
                f"hold: p_up {p:.3f} is within {config.min_confidence / 2:.3f} of 0.5 "
                f"(confidence {confidence:.3f} < {config.min_confidence:.3f}); {context}",
            )
        if math.isnan(row.atr_points) or row.atr_points <= 0:
            return self._hold(row, confidence, "hold: ATR is still warming up, no stop to set")
        action = Action.BUY if p > 0.5 else Action.SELL
        self._standing[row.symbol] = action
        side = "buy" if action is Action.BUY else "sell"
        threshold = 0.5 + config.min_confidence / 2
        comparison = f">= {threshold:.3f}" if action is Action.BUY else f"<= {1 - threshold:.3f}"
        return self._decision(
            row,
            action,
            confidence,
            f"{side}: p_up {p:.3f} {comparison} (confidence {confidence:.3f}); {context}; "
            f"stop {config.stop_atr_multiple:g} ATR, target {config.reward_risk:g}R",
        )

    def _blocking_filter(self, row: DecisionInput) -> str | None:
        config = self.config
        if row.time_msc - row.model_data_to_ms > config.max_model_age_ms:
            age_days = (row.time_msc - row.model_data_to_ms) / 86_400_000
            return f"model is stale (its data ends {age_days:.0f} days before this bar)"
        if row.tick_count < config.min_bar_ticks:
            return f"thin data ({row.tick_count} ticks in the bar)"
        if row.regime in config.blocked_regimes:
            return f"regime is {REGIME_NAMES.get(row.regime, str(row.regime))}"
        if not row.session_mask & config.allowed_sessions:
            return f"no allowed session open ({_sessions(config.allowed_sessions)})"
        return None

    def _context(self, row: DecisionInput) -> str:
        regime = REGIME_NAMES.get(row.regime, str(row.regime))
        return f"{_sessions(row.session_mask)} session, regime {regime}"

    def _hold(self, row: DecisionInput, confidence: float, reason: str) -> Decision:
        return self._decision(row, Action.HOLD, confidence, reason)

    def _decision(
        self, row: DecisionInput, action: Action, confidence: float, reason: str
    ) -> Decision:
        # A buy is made at the ask (the bars are ask bars), a sell or close at the bid.
        spread = round(row.spread_points) if math.isfinite(row.spread_points) else 0
        reference = row.close_points if action is Action.BUY else row.close_points - spread
        stop = target = None
        if action in (Action.BUY, Action.SELL):
            distance = max(1, round(self.config.stop_atr_multiple * row.atr_points))
            direction = 1 if action is Action.BUY else -1
            stop = reference - direction * distance
            target = reference + direction * round(self.config.reward_risk * distance)
        return Decision(
            signal_id=signal_id(row),
            action=action,
            confidence=round(confidence, 12),
            reference_points=reference,
            stop_loss_points=stop,
            take_profit_points=target,
            reason=reason,
            source=row,
        )


def signal_id(row: DecisionInput) -> str:
    """A UUIDv7 whose time is the row's and whose random bits hash the inputs.

    Time-ordered like any UUIDv7, yet reproducible: replaying the same inputs gives the
    same ids, so a consumer can recognise a signal it has seen.
    """
    key = f"{row.symbol}|{row.feature_seq}|{row.model_name}|{row.model_version}|{POLICY_NAME}"
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:10], "big")
    value = (row.time_msc & (2**48 - 1)) << 80
    value |= 0x7 << 76  # version 7
    value |= (digest >> 68) << 64  # 12 bits rand_a
    value |= 0b10 << 62  # RFC 4122 variant
    value |= digest & (2**62 - 1)  # 62 bits rand_b
    return str(uuid.UUID(int=value))


def _duration(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1_000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _sessions(mask: int) -> str:
    names = [name for bit, name in SESSION_NAMES.items() if mask & bit]
    return " + ".join(names) if names else "no"

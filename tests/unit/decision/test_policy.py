"""The decision policy: every rule, reproducible ids, stop and target geometry."""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import AsyncIterator

from quantmesh.services.decision.core import SignalSubscription, numbered_signals
from quantmesh.services.decision.policy import Action, DecisionInput, DecisionPolicy, signal_id

LONDON, SYDNEY = 4, 1
TREND_UP, HIGH_VOLATILITY = 1, 4


def row(**changes: object) -> DecisionInput:
    base = DecisionInput(
        symbol="EURUSD",
        digits=5,
        time_msc=1_500_000_000_000,
        feature_seq=100,
        prediction_seq=100,
        probability_up=0.62,
        model_name="eurusd-direction",
        model_version="1",
        model_alias="champion",
        model_data_to_ms=1_500_000_000_000,
        close_points=110_000,
        spread_points=12.0,
        atr_points=100.0,
        tick_count=90,
        regime=TREND_UP,
        session_mask=LONDON,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_decide_when_confident_up_buys_at_ask_with_two_to_one_target() -> None:
    decision = DecisionPolicy().decide(row())
    assert decision.action is Action.BUY
    assert decision.reference_points == 110_000
    assert decision.stop_loss_points == 110_000 - 150  # 1.5 ATR below
    assert decision.take_profit_points == 110_000 + 300  # twice as far above
    assert math.isclose(decision.confidence, 0.24)
    assert "p_up 0.620 >= 0.550" in decision.reason
    assert "London session" in decision.reason


def test_decide_when_confident_down_sells_at_bid_with_stop_above() -> None:
    decision = DecisionPolicy().decide(row(probability_up=0.3))
    assert decision.action is Action.SELL
    assert decision.reference_points == 110_000 - 12
    assert decision.stop_loss_points == decision.reference_points + 150
    assert decision.take_profit_points == decision.reference_points - 300


def test_decide_when_confidence_below_threshold_holds() -> None:
    decision = DecisionPolicy().decide(row(probability_up=0.53))
    assert decision.action is Action.HOLD
    assert decision.stop_loss_points is None
    assert "confidence 0.060 < 0.100" in decision.reason


def test_decide_when_no_prediction_holds_and_says_warming_up() -> None:
    decision = DecisionPolicy().decide(row(probability_up=float("nan")))
    assert decision.action is Action.HOLD
    assert "warming up" in decision.reason


def test_decide_when_filter_blocks_after_a_buy_closes_once_then_holds() -> None:
    policy = DecisionPolicy()
    assert policy.decide(row()).action is Action.BUY
    blocked = policy.decide(row(feature_seq=101, regime=HIGH_VOLATILITY))
    assert blocked.action is Action.CLOSE
    assert "regime is high volatility" in blocked.reason
    again = policy.decide(row(feature_seq=102, regime=HIGH_VOLATILITY))
    assert again.action is Action.HOLD


def test_decide_when_session_closed_or_data_thin_or_model_stale_holds() -> None:
    policy = DecisionPolicy()
    assert "no allowed session" in policy.decide(row(session_mask=SYDNEY)).reason
    assert "thin data" in policy.decide(row(tick_count=2)).reason
    stale = policy.decide(row(model_data_to_ms=1_500_000_000_000 - 200 * 86_400_000))
    assert stale.action is Action.HOLD
    assert "model is stale" in stale.reason


def test_signal_id_is_a_uuid7_at_row_time_and_reproducible() -> None:
    first, second = signal_id(row()), signal_id(row())
    parsed = uuid.UUID(first)
    assert first == second
    assert parsed.version == 7
    assert parsed.int >> 80 == 1_500_000_000_000
    assert signal_id(row(feature_seq=101)) != first


async def _groups(rows: list[DecisionInput]) -> AsyncIterator[list[DecisionInput]]:
    for start in range(0, len(rows), 3):
        yield rows[start : start + 3]


async def test_numbered_signals_when_resumed_replays_the_same_signals() -> None:
    rows = [
        row(feature_seq=i, probability_up=p, regime=r)
        for i, (p, r) in enumerate(
            [(0.7, 1), (0.52, 1), (0.3, 1), (0.6, 4), (0.6, 4), (0.8, 1), (0.1, 3), (0.5, 3)]
        )
    ]
    request = SignalSubscription(batch_size=2)
    full = [
        (n.seq + i, d.signal_id, d.action)
        async for n in numbered_signals(_groups(rows), DecisionPolicy(), request)
        for i, d in enumerate(n.decisions)
    ]
    assert [seq for seq, _, _ in full] == list(range(len(full)))
    assert Action.HOLD not in {action for _, _, action in full}
    resumed_request = dataclasses.replace(request, from_seq=3)
    resumed = [
        (n.seq + i, d.signal_id, d.action)
        async for n in numbered_signals(_groups(rows), DecisionPolicy(), resumed_request)
        for i, d in enumerate(n.decisions)
    ]
    assert resumed == full[3:]

"""Similar past states in the decision's reason: off by default, reason only, no lookahead.

The streams are real features (the shipped EUR/USD H1 2017 bars through the features
code, and a second symbol from the same bars scaled), encoded as the features and
inference services send them, joined by the decision service's own code.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from functools import cache

import numpy as np
import pytest

from quantmesh.datasets import load_h1_bars
from quantmesh.features.v1 import features_pb2
from quantmesh.inference.v1 import inference_pb2
from quantmesh.services.decision.config import DecisionSettings
from quantmesh.services.decision.core import SignalSubscription, numbered_signals
from quantmesh.services.decision.policy import (
    Action,
    Decision,
    DecisionInput,
    DecisionPolicy,
    SimilarOutcomes,
)
from quantmesh.services.decision.servicer import DecisionServicer
from quantmesh.services.decision.similar import SimilarStates, open_similar_store, summarise
from quantmesh.services.decision.upstream import joined_inputs
from quantmesh.services.features.engine import features_from_bars
from quantmesh.services.features.schema import FEATURE_INDEX, FEATURE_NAMES, FeatureRows
from quantmesh.storage.urls import StoreConfigError
from quantmesh.storage.vectors.embedding import FEATURE_NAMES as EMBEDDED
from quantmesh.storage.vectors.embedding import embed_rows, market_states
from quantmesh.storage.vectors.memory import NumpyVectors
from quantmesh.storage.vectors.port import unit_vector

H = 3_600_000
SYMBOLS = ["EURUSD", "GBPUSD"]
ROWS_PER_SYMBOL = 700
K = 12
MODELS = [
    inference_pb2.ModelRef(name="direction", version="1", alias="champion"),
    inference_pb2.ModelRef(name="direction", version="2", alias="shadow", shadow=True),
]


@cache
def stream_rows() -> FeatureRows:
    """Two symbols' rows interleaved by time, with tick counts and spreads that trade."""
    bars = load_h1_bars()
    first = features_from_bars(bars).take(np.arange(ROWS_PER_SYMBOL))
    scaled = dataclasses.replace(
        bars, open=bars.open * 3, high=bars.high * 3, low=bars.low * 3, close=bars.close * 3
    )
    # The second symbol lags by 150 bars, so the two are not the same series.
    second = features_from_bars(scaled).take(np.arange(150, 150 + ROWS_PER_SYMBOL))
    second = dataclasses.replace(second, symbol_index=np.ones(ROWS_PER_SYMBOL, np.uint32))
    both = FeatureRows.concat([first, second])
    rows = both.take(np.argsort(both.time_msc, kind="stable"))
    values = rows.values.copy()
    values[:, FEATURE_INDEX["tick_count"]] = 120.0
    values[:, FEATURE_INDEX["spread_mean_points"]] = 8.0
    return dataclasses.replace(rows, values=values)


async def feature_batches() -> AsyncIterator[features_pb2.FeatureBatch]:
    rows = stream_rows()
    for start in range(0, len(rows), 50):
        part = rows.take(np.arange(start, min(start + 50, len(rows))))
        yield features_pb2.FeatureBatch(
            seq=start,
            symbols=SYMBOLS,
            symbol_index=part.symbol_index.tolist(),
            time_msc=part.time_msc.tolist(),
            feature_names=FEATURE_NAMES,
            values=part.values.ravel().tolist(),
            session_mask=part.session_mask.tolist(),
            regime=part.regime.tolist(),
        )


async def prediction_batches() -> AsyncIterator[inference_pb2.PredictionBatch]:
    """Predictions for two rows in three (the third has none), each with a shadow too."""
    rows = stream_rows()
    predicted = [seq for seq in range(len(rows)) if seq % 3 != 2]
    out_seq = 0
    for start in range(0, len(predicted), 40):
        seqs = predicted[start : start + 40]
        batch = inference_pb2.PredictionBatch(seq=out_seq, symbols=SYMBOLS, models=MODELS)
        for seq in seqs:
            for model in (0, 1):
                batch.symbol_index.append(int(rows.symbol_index[seq]))
                batch.time_msc.append(int(rows.time_msc[seq]))
                batch.model_index.append(model)
                batch.probability_up.append(0.2 + 0.6 * ((seq * 37) % 11) / 10)
                batch.feature_seq.append(seq)
        out_seq += len(batch.time_msc)
        yield batch


def model_info(name: str, version: str) -> tuple[int, tuple[str, ...]]:
    return int(stream_rows().time_msc[-1]), ("log_return_1", "rsi_14")


async def inputs(similar: SimilarStates | None = None, pass_it: bool = True) -> list[DecisionInput]:
    digits = {"EURUSD": 5, "GBPUSD": 5}
    if pass_it:
        joined = joined_inputs(
            feature_batches(), prediction_batches(), digits, model_info, similar=similar
        )
    else:
        joined = joined_inputs(feature_batches(), prediction_batches(), digits, model_info)
    return [row async for group in joined for row in group]


async def decisions_of(rows: list[DecisionInput]) -> list[Decision]:
    async def groups() -> AsyncIterator[list[DecisionInput]]:
        for start in range(0, len(rows), 25):
            yield rows[start : start + 25]

    request = SignalSubscription(include_hold=True, batch_size=1000)
    return [
        d async for n in numbered_signals(groups(), DecisionPolicy(), request) for d in n.decisions
    ]


# -- off by default ------------------------------------------------------------------------


def test_the_lookup_is_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("QUANTMESH_DECISION_SIMILAR_STATES", "QUANTMESH_DECISION_VECTORS_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = DecisionSettings()
    assert settings.similar_states == 0
    assert settings.vectors_url == "memory://"
    assert open_similar_store(settings) is None
    assert SimilarStates.over(None, settings) is None


def test_the_settings_turn_it_on_and_a_wrong_url_fails_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QUANTMESH_DECISION_SIMILAR_STATES", "12")
    monkeypatch.setenv("QUANTMESH_DECISION_SIMILAR_HORIZON_MS", str(4 * H))
    settings = DecisionSettings()
    assert (settings.similar_states, settings.similar_horizon_ms) == (12, 4 * H)
    assert isinstance(open_similar_store(settings), NumpyVectors)

    monkeypatch.setenv("QUANTMESH_DECISION_VECTORS_URL", "postgresql://db/x")
    with pytest.raises(StoreConfigError, match="QUANTMESH_DECISION_VECTORS_URL"):
        DecisionServicer(DecisionSettings(), asyncio.Event())
    monkeypatch.setenv("QUANTMESH_DECISION_SIMILAR_STATES", "0")  # off: the URL is not read
    DecisionServicer(DecisionSettings(), asyncio.Event())


async def test_without_the_lookup_the_inputs_are_unchanged() -> None:
    plain = await inputs(pass_it=False)
    explicit_off = await inputs(similar=None)
    assert len(plain) == len(stream_rows()) * 2 // 3 + 1
    assert all(row.similar is None for row in explicit_off)
    assert [repr(row) for row in plain] == [repr(row) for row in explicit_off]


# -- the reason, and nothing else -------------------------------------------------------


def test_outcomes_read_as_a_sentence() -> None:
    assert (
        SimilarOutcomes(count=12, rose=8, mean_bps=4.06, horizon_ms=H).describe()
        == "12 similar past states: 8 rose over 1h, mean +4.1 bps"
    )
    assert (
        SimilarOutcomes(1, 0, -2.0, 30 * 60_000).describe()
        == "1 similar past state: 0 rose over 30min, mean -2.0 bps"
    )
    assert SimilarOutcomes(3, 3, 0.5, 86_400_000).describe().endswith("over 1d, mean +0.5 bps")
    assert SimilarOutcomes(0, 0, 0.0, H).describe() == "no similar past states yet"


def test_summarise_counts_rises_and_averages_the_outcomes() -> None:
    store = NumpyVectors()
    states = market_states(stream_rows(), SYMBOLS, H)[:200]
    store.upsert(states)
    found = store.nearest(states[0].vector, 10)
    summary = summarise(found, H)
    returns = [n.state.next_return_bps for n in found]
    assert summary == SimilarOutcomes(10, sum(r > 0 for r in returns), float(np.mean(returns)), H)
    assert summarise([], H) == SimilarOutcomes(0, 0, 0.0, H)


async def test_the_lookup_changes_the_reason_only() -> None:
    store = NumpyVectors()
    with_lookup = await inputs(SimilarStates(store, K, H))
    plain = await inputs(pass_it=False)
    assert [repr(dataclasses.replace(row, similar=None)) for row in with_lookup] == [
        repr(row) for row in plain
    ]

    on, off = await decisions_of(with_lookup), await decisions_of(plain)
    actions = {d.action for d in on}
    assert {Action.BUY, Action.SELL, Action.HOLD} <= actions  # every kind of decision covered
    described = 0
    for with_, without in zip(on, off, strict=True):
        assert (with_.signal_id, with_.action, with_.confidence) == (
            without.signal_id,
            without.action,
            without.confidence,
        )
        assert (with_.reference_points, with_.stop_loss_points, with_.take_profit_points) == (
            without.reference_points,
            without.stop_loss_points,
            without.take_profit_points,
        )
        if with_.source.similar is None:
            assert with_.reason == without.reason
        else:
            assert with_.reason == f"{without.reason}; {with_.source.similar.describe()}"
            described += 1
    assert described > 800


# -- no lookahead --------------------------------------------------------------------------


def expected_outcomes(store: NumpyVectors) -> dict[tuple[str, int], SimilarOutcomes]:
    """What a store holding every state of the stream answers at each row's time."""
    rows = stream_rows()
    answers = {}
    for code, symbol in enumerate(SYMBOLS):
        mine = np.flatnonzero(rows.symbol_index == code)
        vectors = embed_rows(rows.select(EMBEDDED)[mine])
        for i, index in enumerate(mine):
            if np.isnan(vectors[i, 0]):
                continue
            time_msc = int(rows.time_msc[index])
            found = store.nearest(unit_vector(vectors[i]), K, symbol, before_ms=time_msc)
            answers[symbol, time_msc] = summarise(found, H)
    return answers


async def test_each_row_sees_only_states_whose_outcome_was_known_at_its_time() -> None:
    rows = stream_rows()
    everything = NumpyVectors()  # what a store filled by an earlier, complete run holds
    everything.upsert(market_states(rows, SYMBOLS, H))
    expected = expected_outcomes(everything)

    live = NumpyVectors()
    got = await inputs(SimilarStates(live, K, H))

    with_outcomes = [row for row in got if row.similar is not None]
    assert len(with_outcomes) > 800
    for row in with_outcomes:
        assert row.similar == expected[row.symbol, row.time_msc], (row.symbol, row.time_msc)
    # Early rows find fewer than K states; later ones K.
    assert with_outcomes[0].similar is not None
    assert with_outcomes[0].similar.count < K
    assert {row.similar.count for row in with_outcomes[-100:] if row.similar} == {K}
    # The rows every decision was made on were observed, and every row before them too.
    assert live.count() == len(
        [s for s in market_states(rows, SYMBOLS, H) if s.outcome_ms <= got[-1].time_msc]
    )


async def test_a_store_that_holds_the_future_gives_the_same_answers() -> None:
    rows = stream_rows()
    prefilled = NumpyVectors()
    prefilled.upsert(market_states(rows, SYMBOLS, H))  # every state, the last included

    fresh = await inputs(SimilarStates(NumpyVectors(), K, H))
    replayed = await inputs(SimilarStates(prefilled, K, H))

    assert [row.similar for row in replayed] == [row.similar for row in fresh]

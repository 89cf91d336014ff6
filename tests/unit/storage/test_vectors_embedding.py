"""The market-state embedding and outcomes: deterministic, scale-free, no lookahead.

The rows are the features service's own (``features_from_bars``) over the shipped
EUR/USD H1 2017 bars, so "prices after t" are real bars changed after t.
"""

from __future__ import annotations

import dataclasses
from functools import cache

import numpy as np
import pytest

from quantmesh.datasets import load_h1_bars
from quantmesh.services.features.engine import features_from_bars
from quantmesh.services.features.schema import (
    FEATURE_NAMES,
    FEATURE_SPECS,
    MODEL_FEATURES,
    FeatureRows,
)
from quantmesh.services.marketdata.sources import Bars
from quantmesh.storage.vectors.embedding import (
    DIMENSIONS,
    EMBEDDING_FEATURES,
    WINDOW_ROWS,
    StateRecorder,
    embed_rows,
    market_states,
)
from quantmesh.storage.vectors.embedding import FEATURE_NAMES as EMBEDDED
from quantmesh.storage.vectors.port import MarketState, state_id

H = 3_600_000


@cache
def bars() -> Bars:
    return load_h1_bars()


@cache
def plain_rows() -> FeatureRows:
    return features_from_bars(bars())


def rows_of(changed: Bars | None = None) -> FeatureRows:
    return plain_rows() if changed is None else features_from_bars(changed)


def with_closes_after(index: int, factor: float) -> Bars:
    """The bars, every price after bar ``index`` scaled by ``factor`` (a different future)."""
    b = bars()

    def changed(column: np.ndarray) -> np.ndarray:
        out = column.copy()
        out[index + 1 :] = np.round(out[index + 1 :] * factor).astype(column.dtype)
        return out

    return dataclasses.replace(
        b, open=changed(b.open), high=changed(b.high), low=changed(b.low), close=changed(b.close)
    )


def by_time(states: list[MarketState]) -> dict[int, MarketState]:
    return {state.time_msc: state for state in states}


def test_the_embedding_uses_scale_free_model_features_only() -> None:
    assert set(EMBEDDED) <= set(MODEL_FEATURES)  # no price level, no tick-generator noise
    assert "close_points" not in EMBEDDED
    assert WINDOW_ROWS * len(EMBEDDING_FEATURES) == DIMENSIONS
    assert all(scale > 0 for _, _, scale in EMBEDDING_FEATURES)


def test_vectors_are_unit_length_and_absent_while_warming_up() -> None:
    rows = rows_of()
    vectors = embed_rows(rows.select(EMBEDDED))
    defined = ~np.isnan(vectors[:, 0])
    assert vectors.shape == (len(rows), DIMENSIONS)
    assert vectors.dtype == np.float32
    # The slowest input's warm-up (EMA30: 30 bars), then the window's other rows.
    warmup = max(spec.warmup_bars for spec in FEATURE_SPECS if spec.name in EMBEDDED)
    first = warmup - 1 + WINDOW_ROWS - 1
    assert warmup == 30
    assert not defined[:first].any()
    assert defined[first:].all()
    norms = np.linalg.norm(vectors[defined].astype(np.float64), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-6)
    assert np.isnan(vectors[~defined]).all()


def test_the_embedding_is_deterministic() -> None:
    first = market_states(rows_of(), ["EURUSD"])
    second = market_states(rows_of(), ["EURUSD"])
    assert [s.id for s in first] == [s.id for s in second]
    assert all(np.array_equal(a.vector, b.vector) for a, b in zip(first, second, strict=True))
    assert [s.next_return_bps for s in first] == [s.next_return_bps for s in second]
    assert first[0].id == state_id("EURUSD", first[0].time_msc)


def test_the_embedding_and_outcomes_do_not_depend_on_the_price_level() -> None:
    b = bars()
    doubled = dataclasses.replace(
        b, open=b.open * 2, high=b.high * 2, low=b.low * 2, close=b.close * 2
    )
    plain = market_states(rows_of(), ["EURUSD"])
    scaled = market_states(rows_of(doubled), ["EURUSD"])

    assert [s.time_msc for s in plain] == [s.time_msc for s in scaled]
    for a, b_ in zip(plain, scaled, strict=True):
        assert np.allclose(a.vector, b_.vector, atol=1e-5)
        assert a.next_return_bps == pytest.approx(b_.next_return_bps, abs=1e-9)


def test_a_states_vector_does_not_change_with_prices_after_it() -> None:
    cut = 3_000
    original = rows_of()
    changed = rows_of(with_closes_after(cut, 1.07))
    assert not np.array_equal(original.values[cut + 1 :], changed.values[cut + 1 :], equal_nan=True)

    before = embed_rows(original.select(EMBEDDED))
    after = embed_rows(changed.select(EMBEDDED))

    assert np.array_equal(before[: cut + 1], after[: cut + 1], equal_nan=True)
    assert not np.array_equal(before[cut + 1 :], after[cut + 1 :], equal_nan=True)
    # The same holds for the embedding alone: a prefix of rows gives a prefix of vectors.
    assert np.array_equal(
        embed_rows(original.select(EMBEDDED)[: cut + 1]), before[: cut + 1], equal_nan=True
    )


def test_an_outcome_uses_only_the_prices_up_to_its_horizon() -> None:
    horizon = 4 * H
    cut = 3_000
    times = rows_of().time_msc
    original = by_time(market_states(rows_of(), ["EURUSD"], horizon))
    changed = by_time(market_states(rows_of(with_closes_after(cut, 1.07)), ["EURUSD"], horizon))

    ended = [t for t in original if t + horizon <= times[cut]]
    open_ = [t for t in original if t <= times[cut] < t + horizon]
    assert ended
    assert open_
    for t in ended:  # horizon over by the cut: nothing after it counts
        assert changed[t].next_return_bps == original[t].next_return_bps
        assert np.array_equal(changed[t].vector, original[t].vector)
    for t in open_:  # horizon spans the cut: the later prices are its outcome
        assert changed[t].next_return_bps != pytest.approx(original[t].next_return_bps)
        assert np.array_equal(changed[t].vector, original[t].vector)


def test_an_outcome_is_the_return_to_the_close_when_the_horizon_ends() -> None:
    rows = rows_of()
    close = rows.column("close_points")
    states = market_states(rows, ["EURUSD"], 2 * H)
    index = {int(t): i for i, t in enumerate(rows.time_msc)}
    checked = 0
    for state in states:
        i = index[state.time_msc]
        j = index.get(state.time_msc + 2 * H)
        if j is not None:
            assert state.next_return_bps == pytest.approx((close[j] / close[i] - 1) * 1e4)
            checked += 1
    assert checked > 5_000


def test_a_state_exists_only_once_its_outcome_time_has_passed() -> None:
    rows = rows_of()
    everything = by_time(market_states(rows, ["EURUSD"], 4 * H))
    for stop in (1_000, 2_500, 4_000):
        prefix = rows.take(np.arange(stop))
        now = int(prefix.time_msc[-1])
        known = market_states(prefix, ["EURUSD"], 4 * H)
        assert known
        assert all(s.outcome_ms <= now for s in known)
        # Exactly the states of the whole year whose outcome time had passed, unchanged.
        assert [s.time_msc for s in known] == [t for t in everything if t + 4 * H <= now]
        for state in known:
            full = everything[state.time_msc]
            assert state.next_return_bps == full.next_return_bps
            assert np.array_equal(state.vector, full.vector)


def test_the_last_bar_before_a_weekend_has_no_one_hour_outcome() -> None:
    rows = rows_of()
    times = rows.time_msc
    gaps = np.flatnonzero(np.diff(times) > H)
    states = by_time(market_states(rows, ["EURUSD"], H))
    assert len(gaps) > 40
    for i in gaps:
        if i >= 40:  # past the warm-up
            assert int(times[i]) not in states  # nothing traded inside its hour
            assert int(times[i - 1]) in states


def test_the_recorder_builds_the_same_states_row_by_row() -> None:
    first = np.arange(2_000)
    eurusd = rows_of().take(first)
    gbpusd = dataclasses.replace(
        rows_of(with_closes_after(0, 1.2)).take(first), symbol_index=np.ones(2_000, np.uint32)
    )
    both = FeatureRows.concat([eurusd, gbpusd])
    order = np.argsort(both.time_msc, kind="stable")  # interleaved, as a stream sends them
    stream = both.take(order)
    symbols = ["EURUSD", "GBPUSD"]

    recorder = StateRecorder(3 * H)
    online: list[MarketState] = []
    vectors: dict[tuple[str, int], np.ndarray | None] = {}
    for i in range(len(stream)):
        symbol = symbols[int(stream.symbol_index[i])]
        values = dict(zip(FEATURE_NAMES, stream.values[i].tolist(), strict=True))
        observation = recorder.observe(symbol, int(stream.time_msc[i]), values)
        online.extend(observation.resolved)
        vectors[symbol, int(stream.time_msc[i])] = observation.vector
        if i % 500 == 0:  # a replayed row adds nothing
            again = recorder.observe(symbol, int(stream.time_msc[i]), values)
            assert again.vector is None
            assert again.resolved == ()

    batch = market_states(both, symbols, 3 * H)
    assert sorted(s.id for s in online) == sorted(s.id for s in batch)
    online_by_id = {s.id: s for s in online}
    for state in batch:
        twin = online_by_id[state.id]
        assert twin.next_return_bps == state.next_return_bps
        assert np.array_equal(twin.vector, state.vector)
        queried = vectors[state.symbol, state.time_msc]
        assert queried is not None
        assert np.array_equal(queried, state.vector)
    # Each state is released by the first row at or after its outcome time, never before.
    assert all(s.outcome_ms <= int(stream.time_msc[-1]) for s in online)


def test_rows_out_of_time_order_are_refused_by_the_batch_builder() -> None:
    rows = rows_of()
    reversed_rows = rows.take(np.arange(len(rows))[::-1])
    with pytest.raises(ValueError, match="increasing time_msc"):
        market_states(reversed_rows, ["EURUSD"])

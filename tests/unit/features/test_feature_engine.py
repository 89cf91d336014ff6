"""The feature engine: schema, rows, warm-up, intrabar features, symbols, errors, memory."""

from __future__ import annotations

import gc
import hashlib
import itertools
import math
import re
import tracemalloc
from collections.abc import Iterable

import numpy as np
import pytest

from quantmesh.datasets import load_h1_bars
from quantmesh.services.features.engine import FeatureEngine, features_from_bars
from quantmesh.services.features.schema import (
    FEATURE_NAMES,
    FEATURE_SPECS,
    MODEL_FEATURES,
    SCHEMA_VERSION,
    FeatureRows,
    feature_columns,
    schema_digest,
)
from quantmesh.services.features.sessions import SESSIONS, session_mask
from quantmesh.services.marketdata.sources import (
    EURUSD,
    GBPUSD,
    Bars,
    ReplaySource,
    TickColumns,
)

H1 = 3_600_000
INTRABAR = ("m5_rsi_14", "m1_realized_vol_60", "spread_mean_points", "tick_count")
REFERENCE = ("close_points",)  # a price for stops and targets, never a model input


def run(engine: FeatureEngine, batches: Iterable[TickColumns]) -> FeatureRows:
    return FeatureRows.concat([*(engine.on_ticks(b) for b in batches), engine.finish()])


def join(batches: Iterable[TickColumns]) -> TickColumns:
    parts = list(batches)
    return TickColumns(
        parts[0].seq,
        *(
            np.concatenate([getattr(p, f) for p in parts])
            for f in ("symbol_index", "time_msc", "bid", "ask", "volume")
        ),
    )


def head(ticks: TickColumns, n: int) -> TickColumns:
    return TickColumns(
        ticks.seq,
        ticks.symbol_index[:n],
        ticks.time_msc[:n],
        ticks.bid[:n],
        ticks.ask[:n],
        ticks.volume[:n],
    )


def ref_rsi(close: list[float], n: int = 14) -> list[float]:
    out = [math.nan] * len(close)
    changes = [b - a for a, b in itertools.pairwise(close)]
    if len(changes) < n:
        return out
    gain = sum(max(d, 0.0) for d in changes[:n]) / n
    loss = sum(max(-d, 0.0) for d in changes[:n]) / n
    for i in range(n, len(close)):
        if i > n:
            gain = (gain * (n - 1) + max(changes[i - 1], 0.0)) / n
            loss = (loss * (n - 1) + max(-changes[i - 1], 0.0)) / n
        out[i] = 0.5 if gain + loss == 0 else gain / (gain + loss)
    return out


def ref_closes(period: int, ticks: TickColumns) -> tuple[np.ndarray, np.ndarray]:
    """(open ms, ask close) of each bar of ``period``, by a plain loop."""
    opens: list[int] = []
    closes: list[int] = []
    for t, ask in zip(ticks.time_msc.tolist(), ticks.ask.tolist(), strict=True):
        bar = t - t % period
        if not opens or opens[-1] != bar:
            opens.append(bar)
            closes.append(ask)
        closes[-1] = ask
    return np.array(opens), np.array(closes, np.float64)


@pytest.fixture(scope="module")
def replay() -> ReplaySource:
    return ReplaySource.eurusd()


@pytest.fixture(scope="module")
def ticks(replay: ReplaySource) -> TickColumns:
    return join(replay.read(["EURUSD"], batch_size=100_000))


@pytest.fixture(scope="module")
def rows(replay: ReplaySource) -> FeatureRows:
    return run(FeatureEngine(replay.symbols), replay.read(["EURUSD"], batch_size=1000))


# --- schema -----------------------------------------------------------------------------


def test_schema_when_listed_has_unique_snake_case_names_with_units_and_warmups() -> None:
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES) == len(FEATURE_SPECS)
    for spec in FEATURE_SPECS:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", spec.name)
        assert spec.description
        assert isinstance(spec.unit, str)
        assert isinstance(spec.warmup_bars, int)
        assert spec.warmup_bars >= 0
        assert spec.timeframe in ("H1", "M5", "M1", "time")
    assert isinstance(SCHEMA_VERSION, str)
    assert SCHEMA_VERSION


def test_model_features_when_listed_exclude_every_tick_derived_feature() -> None:
    assert set(MODEL_FEATURES) < set(FEATURE_NAMES)
    assert not set(MODEL_FEATURES) & set(INTRABAR)
    assert set(FEATURE_NAMES) - set(MODEL_FEATURES) == {*INTRABAR, *REFERENCE}
    assert list(MODEL_FEATURES) == [n for n in FEATURE_NAMES if n in MODEL_FEATURES]


def test_schema_digest_when_computed_is_sha256_of_names_joined_by_newlines() -> None:
    expected = hashlib.sha256("\n".join(FEATURE_NAMES).encode()).hexdigest()
    assert schema_digest() == expected
    assert len(bytes.fromhex(schema_digest())) == 32
    assert schema_digest(MODEL_FEATURES) != expected


# --- FeatureRows ------------------------------------------------------------------------


def test_feature_rows_when_empty_concat_and_take_keep_dtypes_and_layout(
    rows: FeatureRows,
) -> None:
    empty = FeatureRows.empty(3)
    assert len(empty) == 0
    assert empty.values.shape == (0, 3)
    assert len(FeatureRows.concat([])) == 0
    assert FeatureRows.concat([empty]).n_features == 3
    both = FeatureRows.concat([rows.take(np.arange(0, 5)), empty, rows.take(np.arange(5, 9))])
    assert len(both) == 9
    assert np.array_equal(both.values, rows.values[:9], equal_nan=True)
    assert both.values.flags.c_contiguous
    for r in (rows, both):
        assert r.symbol_index.dtype == np.uint32
        assert r.time_msc.dtype == r.bar_open_ms.dtype == np.int64
        assert r.values.dtype == np.float64
        assert r.values.flags.c_contiguous
        assert r.session_mask.dtype == np.uint32
        assert r.regime.dtype == np.uint8
        assert r.tick_seq_first.dtype == r.tick_seq_last.dtype == np.int64


def test_feature_rows_when_columns_disagree_or_values_not_contiguous_raise() -> None:
    good = FeatureRows.empty(2)
    with pytest.raises(ValueError, match="same length"):
        FeatureRows(**{**{f: getattr(good, f) for f in good.__slots__}, "regime": np.zeros(1)})
    with pytest.raises(ValueError, match="C-contiguous"):
        FeatureRows(**{**{f: getattr(good, f) for f in good.__slots__}, "values": np.zeros(3)})


def test_feature_rows_when_selecting_by_name_returns_those_columns(rows: FeatureRows) -> None:
    picked = rows.select(["rsi_14", "log_return_1"])
    assert picked.flags.c_contiguous
    assert np.array_equal(picked[:, 0], rows.column("rsi_14"), equal_nan=True)
    assert feature_columns(["rsi_14"]).tolist() == [FEATURE_NAMES.index("rsi_14")]
    with pytest.raises(KeyError):
        rows.column("nope")


# --- rows from the replay ---------------------------------------------------------------


def test_on_ticks_when_fed_the_replay_emits_one_row_per_h1_bar_at_its_end(
    rows: FeatureRows, ticks: TickColumns
) -> None:
    bars = load_h1_bars()
    assert len(rows) == len(bars)
    assert np.array_equal(rows.bar_open_ms, bars.time_ms)
    assert np.array_equal(rows.time_msc, bars.time_ms + H1)
    assert (rows.symbol_index == 0).all()
    # The rows' tick ranges tile the stream, and every tick lies inside its row's bar.
    assert rows.tick_seq_first[0] == 0
    assert rows.tick_seq_last[-1] == len(ticks) - 1
    assert np.array_equal(rows.tick_seq_first[1:], rows.tick_seq_last[:-1] + 1)
    t = ticks.time_msc
    assert (t[rows.tick_seq_first] >= rows.bar_open_ms).all()
    assert (t[rows.tick_seq_last] < rows.time_msc).all()


def test_on_ticks_when_fed_the_replay_equals_h1_features_of_the_csv_bars_exactly(
    rows: FeatureRows,
) -> None:
    from_csv = features_from_bars(load_h1_bars())
    model = feature_columns(MODEL_FEATURES)
    assert np.array_equal(rows.values[:, model], from_csv.values[:, model], equal_nan=True)
    assert np.array_equal(rows.regime, from_csv.regime)
    assert np.array_equal(rows.session_mask, from_csv.session_mask)
    assert np.isnan(from_csv.values[:, feature_columns(INTRABAR)]).all()
    assert (from_csv.tick_seq_first == -1).all()


def test_features_when_warming_up_are_nan_until_their_documented_bar(rows: FeatureRows) -> None:
    for spec in FEATURE_SPECS:
        if spec.timeframe not in ("H1", "time"):
            continue
        column = rows.column(spec.name)
        first = max(spec.warmup_bars - 1, 0)
        assert np.isnan(column[:first]).all(), spec.name
        assert np.isfinite(column[first:]).all(), spec.name


def test_intrabar_features_when_warming_up_wait_for_enough_m5_and_m1_bars(
    rows: FeatureRows, ticks: TickColumns
) -> None:
    some = head(ticks, 20_000)
    for name, period in (("m5_rsi_14", 300_000), ("m1_realized_vol_60", 60_000)):
        warmup = FEATURE_SPECS[FEATURE_NAMES.index(name)].warmup_bars
        opens, _ = ref_closes(period, some)
        # Bars of the period opening before each H1 row's end.
        known = np.searchsorted(opens, rows.time_msc[:150], side="left")
        defined = ~np.isnan(rows.column(name)[:150])
        assert np.array_equal(defined, known >= warmup), name


def test_intrabar_features_when_compared_to_loop_references_match(
    rows: FeatureRows, ticks: TickColumns
) -> None:
    n_rows = 300
    some = head(ticks, int(rows.tick_seq_last[n_rows - 1]) + 1)
    ends = rows.time_msc[:n_rows]
    # Spread and tick count of each H1 bar, from its ticks.
    first, last = rows.tick_seq_first[:n_rows], rows.tick_seq_last[:n_rows]
    spread = (some.ask - some.bid).astype(np.float64)
    mean_spread = [spread[a : b + 1].mean() for a, b in zip(first, last, strict=True)]
    np.testing.assert_allclose(rows.column("spread_mean_points")[:n_rows], mean_spread)
    assert np.array_equal(rows.column("tick_count")[:n_rows], last - first + 1)
    # M5 RSI at the last M5 bar opening before the H1 end.
    m5_open, m5_close = ref_closes(300_000, some)
    rsi = np.array(ref_rsi(m5_close.tolist()))
    expected = rsi[np.searchsorted(m5_open, ends, side="left") - 1]
    np.testing.assert_allclose(rows.column("m5_rsi_14")[:n_rows], expected, rtol=1e-9)
    # Realized volatility of the last 60 M1 returns.
    m1_open, m1_close = ref_closes(60_000, some)
    returns = [math.nan, *np.diff(np.log(m1_close)).tolist()]
    expected_rv = []
    for j in np.searchsorted(m1_open, ends, side="left") - 1:
        window = returns[j - 59 : j + 1] if j >= 60 else [math.nan]
        expected_rv.append(math.sqrt(sum(r * r for r in window)))
    np.testing.assert_allclose(rows.column("m1_realized_vol_60")[:n_rows], expected_rv, rtol=1e-9)


def test_clock_features_when_computed_follow_the_row_time(rows: FeatureRows) -> None:
    hours = (rows.time_msc % 86_400_000) / H1
    np.testing.assert_allclose(rows.column("hour_sin"), np.sin(2 * np.pi * hours / 24))
    np.testing.assert_allclose(rows.column("hour_cos"), np.cos(2 * np.pi * hours / 24))
    assert np.array_equal(rows.session_mask, session_mask(rows.time_msc))
    for spec in SESSIONS:
        flag = (rows.session_mask & spec.flag) != 0
        assert np.array_equal(rows.column(spec.column), flag.astype(np.float64))
    assert (rows.session_mask != 0).mean() > 0.9  # FX trades around the clock on weekdays


# --- several symbols --------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair() -> tuple[ReplaySource, dict[str, Bars]]:
    """EURUSD (300 bars) and GBPUSD on every third hour of a longer span: gappy, overlapping."""
    bars = load_h1_bars()
    eur = bars.slice_time(0, int(bars.time_ms[300]))
    every_third = np.arange(0, 450, 3)
    offset = 20_000
    gbp = Bars(
        bars.time_ms[every_third],
        bars.open[every_third] + offset,
        bars.high[every_third] + offset,
        bars.low[every_third] + offset,
        bars.close[every_third] + offset,
        bars.tick_volume[every_third],
    )
    by_name = {"EURUSD": eur, "GBPUSD": gbp}
    return ReplaySource({"EURUSD": (EURUSD, eur), "GBPUSD": (GBPUSD, gbp)}), by_name


def test_on_ticks_when_stream_merges_symbols_each_symbol_equals_its_own_rows(
    pair: tuple[ReplaySource, dict[str, Bars]],
) -> None:
    source, by_name = pair
    names = ["EURUSD", "GBPUSD"]
    merged = join(source.read(names, batch_size=10_000))
    rows = run(FeatureEngine(source.symbols), source.read(names, batch_size=1000))
    assert len(rows) == sum(len(b) for b in by_name.values())
    for index, name in enumerate(names):
        mine = rows.take(np.flatnonzero(rows.symbol_index == index))
        from_csv = features_from_bars(by_name[name], symbol_index=index)
        model = feature_columns(MODEL_FEATURES)
        assert np.array_equal(mine.values[:, model], from_csv.values[:, model], equal_nan=True)
        assert np.array_equal(mine.regime, from_csv.regime)
        assert np.array_equal(mine.bar_open_ms, by_name[name].time_ms)
        # Alone, with the same seqs: intrabar features depend on the symbol's ticks only.
        # Its ticks' seqs are not consecutive, so they go one per batch.
        alone = FeatureEngine([source.symbols[index]])
        solo = FeatureRows.concat(
            [
                alone.on_ticks(
                    TickColumns(
                        merged.seq + int(i),
                        np.zeros(1, np.uint32),
                        merged.time_msc[i : i + 1],
                        merged.bid[i : i + 1],
                        merged.ask[i : i + 1],
                        merged.volume[i : i + 1],
                    )
                )
                for i in np.flatnonzero(merged.symbol_index == index)[:4_000]
            ]
        )
        n = len(solo)
        assert n > 20
        assert np.array_equal(mine.values[:n], solo.values, equal_nan=True)
        assert np.array_equal(mine.tick_seq_first[:n], solo.tick_seq_first)
        assert np.array_equal(mine.tick_seq_last[:n], solo.tick_seq_last)


def test_on_ticks_when_symbols_close_bars_in_one_batch_orders_rows_by_closing_tick() -> None:
    t0 = 1_483_315_200_000  # Monday 2017-01-02 00:00 UTC
    engine = FeatureEngine([EURUSD, GBPUSD])
    engine.on_ticks(
        TickColumns(0, np.array([0, 1], np.uint32), np.array([t0, t0 + 1]),
                    np.array([10, 20]), np.array([11, 21]), np.ones(2))
    )  # fmt: skip
    # GBPUSD's next-hour tick comes first, so its row comes first despite its index.
    out = engine.on_ticks(
        TickColumns(2, np.array([1, 0], np.uint32), np.array([t0 + H1 + 5, t0 + H1 + 9]),
                    np.array([20, 10]), np.array([21, 11]), np.ones(2))
    )  # fmt: skip
    assert out.symbol_index.tolist() == [1, 0]
    assert out.tick_seq_first.tolist() == [1, 0]
    assert engine.finish().symbol_index.tolist() == [0, 1]  # end of stream: by index


# --- errors and state -------------------------------------------------------------------


def tick_batch(seq: int, times: list[int], symbol: int = 0) -> TickColumns:
    n = len(times)
    return TickColumns(
        seq,
        np.full(n, symbol, np.uint32),
        np.array(times, np.int64),
        np.full(n, 100, np.int64),
        np.full(n, 101, np.int64),
        np.ones(n),
    )


def test_engine_when_misused_raises_clear_errors() -> None:
    with pytest.raises(ValueError, match="at least one symbol"):
        FeatureEngine([])
    engine = FeatureEngine([EURUSD])
    assert len(engine.on_ticks(tick_batch(0, []))) == 0
    with pytest.raises(ValueError, match="out of range"):
        engine.on_ticks(tick_batch(0, [5], symbol=1))
    engine.on_ticks(tick_batch(0, [1_000, 2_000]))
    with pytest.raises(ValueError, match="back in time"):
        engine.on_ticks(tick_batch(2, [1_500]))
    with pytest.raises(ValueError, match="back in time"):
        engine.on_ticks(tick_batch(2, [3_000, 2_500]))
    engine.finish()
    with pytest.raises(RuntimeError, match="finished"):
        engine.on_ticks(tick_batch(3, [4_000]))
    with pytest.raises(RuntimeError, match="already"):
        engine.finish()


def test_engine_when_properties_read_reports_symbols_and_feature_names() -> None:
    engine = FeatureEngine([EURUSD, GBPUSD])
    assert engine.symbols == (EURUSD, GBPUSD)
    assert engine.feature_names == FEATURE_NAMES
    assert len(engine.finish()) == 0


def test_engine_when_fed_more_history_keeps_constant_memory(replay: ReplaySource) -> None:
    batches = list(replay.read(["EURUSD"], batch_size=1000))
    engine = FeatureEngine(replay.symbols)
    gc.collect()
    tracemalloc.start()
    try:
        for batch in batches[:100]:
            engine.on_ticks(batch)
        gc.collect()
        early = tracemalloc.get_traced_memory()[0]
        for batch in batches[100:400]:
            engine.on_ticks(batch)
        gc.collect()
        late = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # 4x the history (about 3,000 more H1 bars, 300k ticks) and no growth beyond noise.
    assert late - early < 16_384, (early, late)

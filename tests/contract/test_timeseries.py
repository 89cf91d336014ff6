"""The timeseries port's contract, on chDB and through clickhouse-connect.

Three ways to reach the engine, one suite:

- ``chdb``: the embedded adapter, always;
- ``clickhouse-connect-on-chdb``: the server adapter (:class:`ClickHouseTimeseries`)
  driving clickhouse-connect's own chDB backend, always. No ClickHouse server runs on
  this machine, so this is how the server adapter's client calls (parameter binding,
  ``INSERT … FORMAT Arrow``, Arrow results) run here against the real engine;
- ``clickhouse-server``: the server adapter on the server that
  ``QUANTMESH_TEST_CLICKHOUSE_URL`` names (a fresh database per test, dropped after),
  skipped when it is not set.

chDB runs one embedded database per process, so every store a test opens is closed
before the next one opens.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect
import numpy as np
import pyarrow as pa
import pytest

from quantmesh.storage.resilience import Backoff
from quantmesh.storage.timeseries import (
    PredictedClass,
    PredictionRows,
    SeqGapError,
    TickRows,
    open_timeseries,
)
from quantmesh.storage.timeseries import sql as timeseries_sql
from quantmesh.storage.timeseries.chdb import ChdbTimeseries
from quantmesh.storage.timeseries.clickhouse import ClickHouseTimeseries
from quantmesh.storage.timeseries.sql import SqlTimeseries, tick_table

SERVER_URL_SETTING = "QUANTMESH_TEST_CLICKHOUSE_URL"
M1 = 60_000
H1 = 3_600_000
QUICK = Backoff(attempts=3, first_delay=0.01, max_delay=0.02)

Opener = Callable[[], SqlTimeseries]


def _server_url() -> str:
    url = os.environ.get(SERVER_URL_SETTING, "")
    if not url:
        pytest.skip(
            f"no ClickHouse server: set {SERVER_URL_SETTING}="
            "clickhouse://user:password@host:8123/db to run this contract on one"
        )
    return url


@pytest.fixture(params=["chdb", "clickhouse-connect-on-chdb", "clickhouse-server"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the store under test; a second call reopens the same data."""
    opened: list[SqlTimeseries] = []
    folder = tmp_path / "timeseries"
    cleanup: Callable[[], None] = lambda: None  # noqa: E731

    if request.param == "chdb":

        def opener() -> SqlTimeseries:
            return ChdbTimeseries(folder, url=f"chdb:///{folder}", setting="TEST")

    elif request.param == "clickhouse-connect-on-chdb":

        def opener() -> SqlTimeseries:
            client = clickhouse_connect.get_client(dsn=f"chdb://{folder}")
            store = ClickHouseTimeseries(client, url="chdb-backend", setting="TEST", backoff=QUICK)
            store.create_schema()
            return store

    else:
        parts = urlsplit(_server_url())
        database = f"quantmesh_test_{uuid.uuid4().hex[:12]}"
        url = urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))

        def opener() -> SqlTimeseries:
            store = open_timeseries(url, SERVER_URL_SETTING, backoff=QUICK)
            assert isinstance(store, ClickHouseTimeseries)
            return store

        def cleanup() -> None:
            store = opener()
            store._command(f"DROP DATABASE IF EXISTS {database}")
            store.close()

    def tracked() -> SqlTimeseries:
        for store in opened:
            store.close()
        opened.clear()
        opened.append(opener())
        return opened[-1]

    yield tracked
    for store in opened:
        store.close()
    cleanup()


@pytest.fixture
def store(open_store: Opener) -> SqlTimeseries:
    return open_store()


def ticks(symbols: list[str], times: list[int], bids: list[int], volume: float = 1.0) -> TickRows:
    """Rows whose ask is the bid plus 2 points."""
    return TickRows.of(symbols, times, bids, [b + 2 for b in bids], [volume] * len(times))


def stored_seqs(store: SqlTimeseries, stream: str) -> list[int]:
    return [int(seq) for seq in store.read_ticks(stream).seq]


# Cursor and idempotent inserts.


def test_last_seq_of_an_empty_stream_is_none(store: SqlTimeseries) -> None:
    assert store.last_seq("EURUSD") is None
    assert len(store.read_ticks("EURUSD")) == 0


def test_insert_ticks_stores_rows_as_consecutive_seqs(store: SqlTimeseries) -> None:
    rows = ticks(["EURUSD", "GBPUSD", "EURUSD"], [1_000, 1_000, 2_000], [110_000, 125_000, 110_005])

    assert store.insert_ticks("EURUSD,GBPUSD", 0, rows) == 3

    assert store.last_seq("EURUSD,GBPUSD") == 2
    back = store.read_ticks("EURUSD,GBPUSD")
    assert back.seq.tolist() == [0, 1, 2]
    assert back.rows.symbol().tolist() == ["EURUSD", "GBPUSD", "EURUSD"]
    assert back.rows.time_msc.tolist() == [1_000, 1_000, 2_000]
    assert back.rows.bid.tolist() == [110_000, 125_000, 110_005]
    assert back.rows.ask.tolist() == [110_002, 125_002, 110_007]
    assert back.rows.volume.tolist() == [1.0, 1.0, 1.0]


def test_inserting_a_stored_range_again_stores_nothing(store: SqlTimeseries) -> None:
    rows = ticks(["EURUSD"] * 10, list(range(0, 10_000, 1_000)), list(range(100, 110)))
    store.insert_ticks("s", 0, rows)

    assert store.insert_ticks("s", 0, rows) == 0

    assert stored_seqs(store, "s") == list(range(10))


def test_an_overlapping_insert_stores_only_the_new_seqs(store: SqlTimeseries) -> None:
    times = list(range(0, 15_000, 1_000))
    rows = ticks(["EURUSD"] * 15, times, list(range(100, 115)))
    store.insert_ticks("s", 0, rows.rows(0, 10))

    # seqs 5..14: 5..9 are stored already.
    assert store.insert_ticks("s", 5, rows.rows(5, 15)) == 5

    back = store.read_ticks("s")
    assert back.seq.tolist() == list(range(15))
    assert back.rows.bid.tolist() == list(range(100, 115))


def test_an_insert_past_the_cursor_is_refused_as_a_gap(store: SqlTimeseries) -> None:
    store.insert_ticks("s", 0, ticks(["EURUSD"] * 3, [1, 2, 3], [100, 101, 102]))

    with pytest.raises(SeqGapError, match="seqs up to 2"):
        store.insert_ticks("s", 4, ticks(["EURUSD"], [4], [103]))

    assert stored_seqs(store, "s") == [0, 1, 2]


def test_an_empty_stream_accepts_any_first_seq_and_streams_are_independent(
    store: SqlTimeseries,
) -> None:
    store.insert_ticks("late", 100, ticks(["EURUSD"] * 2, [1, 2], [100, 101]))
    store.insert_ticks("other", 0, ticks(["GBPUSD"], [1], [120]))

    assert store.last_seq("late") == 101
    assert store.last_seq("other") == 0
    assert stored_seqs(store, "late") == [100, 101]


def test_a_failure_between_chunks_leaves_a_prefix_and_a_retry_completes_it_once(
    store: SqlTimeseries, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(timeseries_sql, "INSERT_CHUNK_ROWS", 4)
    rows = ticks(["EURUSD"] * 10, list(range(10)), list(range(100, 110)))
    real_insert = store._insert
    calls = 0

    def crash_on_second_chunk(table: str, data: pa.Table, token: str | None) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("process died here")  # not a transient error: no retry
        real_insert(table, data, token)

    monkeypatch.setattr(store, "_insert", crash_on_second_chunk)
    with pytest.raises(RuntimeError, match="process died"):
        store.insert_ticks("s", 0, rows)
    assert stored_seqs(store, "s") == [0, 1, 2, 3]

    assert store.insert_ticks("s", 0, rows) == 6

    assert stored_seqs(store, "s") == list(range(10))


def test_a_block_inserted_again_with_its_token_is_dropped_by_the_engine(
    store: SqlTimeseries,
) -> None:
    # The race a retry can lose: it read the cursor before the first attempt committed.
    rows = ticks(["EURUSD"] * 3, [1, 2, 3], [100, 101, 102])
    block = tick_table("s", 0, rows)

    store._insert("ticks", block, "s:0:2")
    store._insert("ticks", block, "s:0:2")

    assert stored_seqs(store, "s") == [0, 1, 2]


def test_ticks_survive_closing_and_reopening(open_store: Opener) -> None:
    store = open_store()
    store.insert_ticks("s", 0, ticks(["EURUSD"] * 3, [1, 2, 3], [100, 101, 102]))

    reopened = open_store()

    assert reopened.last_seq("s") == 2
    assert reopened.insert_ticks("s", 0, ticks(["EURUSD"] * 3, [1, 2, 3], [100, 101, 102])) == 0
    assert stored_seqs(reopened, "s") == [0, 1, 2]


# Bars.


def test_ohlc_by_hand_breaks_ties_in_a_millisecond_by_seq(store: SqlTimeseries) -> None:
    rows = ticks(
        ["EURUSD", "GBPUSD", "EURUSD", "EURUSD", "EURUSD", "EURUSD", "EURUSD", "EURUSD"],
        [10_000, 20_000, 59_999, 60_000, 60_000, 90_000, 90_000, H1 + 5],
        [100, 500, 105, 103, 101, 108, 107, 99],
        volume=0.5,
    )
    store.insert_ticks("EURUSD,GBPUSD", 0, rows)

    bars = store.ohlc("EURUSD", M1, 0, 2 * H1)

    assert bars.time_ms.tolist() == [0, M1, H1]
    assert bars.open.tolist() == [100, 103, 99]  # 103 precedes 101 in the same ms
    assert bars.high.tolist() == [105, 108, 99]
    assert bars.low.tolist() == [100, 101, 99]
    assert bars.close.tolist() == [105, 107, 99]  # 107 follows 108 in the same ms
    assert bars.ticks.tolist() == [2, 4, 1]
    assert bars.volume.tolist() == [1.0, 2.0, 0.5]


def test_ohlc_reads_the_half_open_range(store: SqlTimeseries) -> None:
    rows = ticks(["EURUSD"] * 3, [M1 - 1, M1, 2 * M1], [100, 101, 102])
    store.insert_ticks("s", 0, rows)

    bars = store.ohlc("EURUSD", M1, M1, 2 * M1)

    assert bars.time_ms.tolist() == [M1]
    assert bars.ticks.tolist() == [1]


def test_ohlc_of_no_ticks_is_empty_and_the_timeframe_must_be_positive(
    store: SqlTimeseries,
) -> None:
    assert len(store.ohlc("EURUSD", M1, 0, H1)) == 0
    with pytest.raises(ValueError, match="timeframe_ms"):
        store.ohlc("EURUSD", 0, 0, H1)


def _random_stream(count: int, seed: int) -> TickRows:
    """Two symbols over three hours, in time order, with many ticks sharing a ms."""
    rng = np.random.default_rng(seed)
    times = np.sort(rng.integers(0, 3 * H1, count) // 250 * 250)  # coarse: ties
    names = np.where(rng.random(count) < 0.7, "EURUSD", "GBPUSD")
    bids = 110_000 + np.cumsum(rng.integers(-5, 6, count))
    volume = np.round(rng.uniform(0.1, 3.0, count), 2)
    return TickRows.of(names, times, bids, bids + 12, volume)


def _reference_bars(rows: TickRows, symbol: str, timeframe: int) -> dict[str, list[float]]:
    """Bars by numpy from rows in seq order (time order with ties in seq order)."""
    mine = rows.symbol() == symbol
    time, bid, volume = rows.time_msc[mine], rows.bid[mine], rows.volume[mine]
    bucket = time // timeframe * timeframe
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    ends = np.r_[starts[1:], len(bucket)] - 1
    return {
        "time_ms": bucket[starts].tolist(),
        "open": bid[starts].tolist(),
        "high": np.maximum.reduceat(bid, starts).tolist(),
        "low": np.minimum.reduceat(bid, starts).tolist(),
        "close": bid[ends].tolist(),
        "ticks": (ends - starts + 1).tolist(),
        "volume": np.add.reduceat(volume, starts).tolist(),
    }


@pytest.mark.parametrize("timeframe", [M1, H1], ids=["m1", "h1"])
def test_ohlc_matches_a_numpy_rollup(store: SqlTimeseries, timeframe: int) -> None:
    rows = _random_stream(20_000, seed=11)
    # Written as a recorder would: batches, one of them replayed over the stored range.
    store.insert_ticks("s", 0, rows.rows(0, 8_000))
    store.insert_ticks("s", 5_000, rows.rows(5_000, 14_000))
    store.insert_ticks("s", 14_000, rows.rows(14_000, 20_000))

    for symbol in ("EURUSD", "GBPUSD"):
        bars = store.ohlc(symbol, timeframe, 0, 3 * H1)
        expected = _reference_bars(rows, symbol, timeframe)
        assert bars.time_ms.tolist() == expected["time_ms"]
        assert bars.open.tolist() == expected["open"]
        assert bars.high.tolist() == expected["high"]
        assert bars.low.tolist() == expected["low"]
        assert bars.close.tolist() == expected["close"]
        assert bars.ticks.tolist() == expected["ticks"]
        np.testing.assert_allclose(bars.volume, expected["volume"], rtol=1e-12)


# Predictions and their accuracy.

UP, DOWN, FLAT = int(PredictedClass.UP), int(PredictedClass.DOWN), int(PredictedClass.FLAT)

# EURUSD bids (asks = bid + 2, so mids move with the bids), in seq order.
ACCURACY_TICKS = [
    (5_000, 100),
    (10_000, 101),
    (10_000, 102),  # the price known at 10_000: the last tick of that ms
    (40_000, 105),
    (70_000, 95),  # exactly 10_000 + 60_000: inside that prediction's horizon
    (70_001, 200),  # 1 ms past it: using it would be lookahead
    (H1, 150),
    (H1 + 30_000, 140),
    (H1 + 45_000, 140),  # a tick after H1 + 30_000, at the same price
    (H1 + 100_000, 160),  # the last stored tick
]

# (model, version, time, class) → why it scores as it does, with a 60 s horizon.
ACCURACY_PREDICTIONS = [
    ("m", 1, 10_000, UP),  # 102 → 95: wrong (the 200 at 70_001 is out of reach)
    ("m", 1, 40_000, DOWN),  # 105 → 200: wrong
    ("m", 1, H1, DOWN),  # 150 → 140: right
    ("m", 1, H1 + 10_000, FLAT),  # FLAT is not scored
    ("m", 1, H1 + 30_000, UP),  # 140 → 140: no move, not scored
    ("m", 1, H1 + 50_000, UP),  # horizon ends past the last tick: pending
    ("m", 2, 1_000, UP),  # no price known yet: not scored
    ("m", 2, 10_000, DOWN),  # 102 → 95: right
    ("m", 2, 100_000, UP),  # no tick inside the horizon: not scored
    ("m", 2, H1, UP),  # 150 → 140: wrong
    ("other", 7, 10_000, UP),  # 102 → 95: wrong
]


def _predictions(
    entries: list[tuple[str, int, int, int]], symbol: str = "EURUSD"
) -> PredictionRows:
    return PredictionRows.of(
        model=[model for model, *_ in entries],
        version=[version for _, version, *_ in entries],
        symbol=[symbol] * len(entries),
        time_msc=[time for _, _, time, _ in entries],
        probability_up=[0.8 if kind == UP else 0.2 for *_, kind in entries],
        predicted_class=[kind for *_, kind in entries],
        feature_digest=list(range(len(entries))),
    )


@pytest.fixture
def scored_store(store: SqlTimeseries) -> SqlTimeseries:
    times = [time for time, _ in ACCURACY_TICKS]
    bids = [bid for _, bid in ACCURACY_TICKS]
    store.insert_ticks("EURUSD", 0, ticks(["EURUSD"] * len(times), times, bids))
    # GBPUSD's ticks and predictions must not leak into EURUSD's scores.
    store.insert_ticks("GBPUSD", 0, ticks(["GBPUSD"] * 2, [10_000, 70_000], [100, 300]))
    store.insert_predictions(_predictions([("m", 1, 10_000, UP)], symbol="GBPUSD"))
    store.insert_predictions(_predictions(ACCURACY_PREDICTIONS))
    return store


def _table(store: SqlTimeseries, horizon: int) -> list[tuple[str, int, int, int, int, int]]:
    return [
        (r.model, r.version, r.bucket_ms, r.predictions, r.scored, r.correct)
        for r in store.accuracy_by_model_version("EURUSD", horizon, H1)
    ]


def test_accuracy_scores_each_model_version_per_bucket_out_of_sample(
    scored_store: SqlTimeseries,
) -> None:
    assert _table(scored_store, M1) == [
        ("m", 1, 0, 2, 2, 0),
        ("m", 1, H1, 4, 1, 1),
        ("m", 2, 0, 3, 1, 1),
        ("m", 2, H1, 1, 1, 0),
        ("other", 7, 0, 1, 1, 0),
    ]


def test_accuracy_moves_with_the_horizon_boundary(scored_store: SqlTimeseries) -> None:
    # One more ms brings the tick at 70_001 into the 10_000 predictions' horizon.
    rows = {row[:3]: row[3:] for row in _table(scored_store, M1 + 1)}

    assert rows[("m", 1, 0)] == (2, 2, 1)  # UP at 10_000 is now right
    assert rows[("m", 2, 0)] == (3, 1, 0)  # DOWN at 10_000 is now wrong


def test_predictions_written_again_count_once(scored_store: SqlTimeseries) -> None:
    scored_store.insert_predictions(_predictions(ACCURACY_PREDICTIONS))
    replaced = _predictions([("m", 1, 10_000, UP)])
    scored_store.insert_predictions(replaced)

    assert _table(scored_store, M1)[0] == ("m", 1, 0, 2, 2, 0)


def test_accuracy_of_no_predictions_is_empty_and_widths_must_be_positive(
    store: SqlTimeseries,
) -> None:
    assert store.accuracy_by_model_version("EURUSD", M1, H1) == []
    with pytest.raises(ValueError, match="horizon_ms"):
        store.accuracy_by_model_version("EURUSD", 0, H1)
    with pytest.raises(ValueError, match="bucket_ms"):
        store.accuracy_by_model_version("EURUSD", M1, -1)


def test_predictions_of_no_stream_are_replaced_again_after_another_write(
    scored_store: SqlTimeseries,
) -> None:
    # The same block written again, after another replaced it, must replace it back.
    up, down = _predictions([("m", 1, H1, UP)]), _predictions([("m", 1, H1, DOWN)])
    scored_store.insert_predictions(up)
    scored_store.insert_predictions(down)
    scored_store.insert_predictions(up)

    assert _table(scored_store, M1)[1] == ("m", 1, H1, 4, 1, 0)  # UP at H1: 150 → 140


def test_rows_without_a_prediction_are_not_counted(scored_store: SqlTimeseries) -> None:
    unspecified = int(PredictedClass.UNSPECIFIED)
    scored_store.insert_predictions(_predictions([("m", 1, 20_000, unspecified)]))

    assert _table(scored_store, M1)[0] == ("m", 1, 0, 2, 2, 0)


# The prediction stream's cursor.

STREAM_PREDICTIONS = [
    ("m", 1, 10_000, UP),
    ("m", 1, 40_000, DOWN),
    ("m", 1, 70_000, FLAT),
    ("m", 1, 100_000, UP),
    ("m", 1, 130_000, int(PredictedClass.UNSPECIFIED)),  # warm-up: no prediction yet
]


def stored_prediction_seqs(store: SqlTimeseries, stream: str) -> list[int]:
    return [int(seq) for seq in store.read_predictions(stream).seq]


def test_the_prediction_cursor_of_an_empty_stream_is_none(store: SqlTimeseries) -> None:
    store.insert_predictions(_predictions(STREAM_PREDICTIONS))  # rows of no stream

    assert store.last_prediction_seq("EURUSD|m") is None
    assert len(store.read_predictions("EURUSD|m")) == 0
    with pytest.raises(ValueError, match="stream needs a name"):
        store.last_prediction_seq("")


def test_predictions_of_a_stream_read_back_in_seq_order(store: SqlTimeseries) -> None:
    rows = _predictions(STREAM_PREDICTIONS)
    rows = PredictionRows.of(
        model=["m", "m", "m", "other", "m"],
        version=[1, 1, 1, 7, 2],
        symbol=["EURUSD", "GBPUSD", "EURUSD", "EURUSD", "GBPUSD"],
        time_msc=rows.time_msc,
        probability_up=[0.9, 0.1, 0.5, 0.7, float("nan")],
        predicted_class=rows.predicted_class,
        feature_digest=[2**64 - 1, 1, 2, 3, 4],
    )

    assert store.insert_predictions(rows, "s", 40) == 5

    assert store.last_prediction_seq("s") == 44
    back = store.read_predictions("s")
    assert back.seq.tolist() == [40, 41, 42, 43, 44]
    labels = [(back.rows.models[i], back.rows.versions[i]) for i in back.rows.model_index]
    assert labels == [("m", 1), ("m", 1), ("m", 1), ("other", 7), ("m", 2)]
    assert back.rows.symbols[0] == "EURUSD"
    assert [back.rows.symbols[i] for i in back.rows.symbol_index] == [
        "EURUSD",
        "GBPUSD",
        "EURUSD",
        "EURUSD",
        "GBPUSD",
    ]
    assert back.rows.time_msc.tolist() == [10_000, 40_000, 70_000, 100_000, 130_000]
    np.testing.assert_array_equal(back.rows.probability_up, rows.probability_up)
    assert back.rows.predicted_class.tolist() == [UP, DOWN, FLAT, UP, 0]
    assert back.rows.feature_digest.tolist() == [2**64 - 1, 1, 2, 3, 4]
    assert store.read_predictions("s", from_seq=43, limit=1).seq.tolist() == [43]


def test_an_overlapping_prediction_insert_stores_only_the_new_seqs(
    store: SqlTimeseries,
) -> None:
    rows = _predictions(STREAM_PREDICTIONS)
    store.insert_predictions(rows.rows(0, 3), "s", 0)

    assert store.insert_predictions(rows.rows(0, 3), "s", 0) == 0
    assert store.insert_predictions(rows.rows(1, 5), "s", 1) == 2  # seqs 1, 2 are stored

    assert stored_prediction_seqs(store, "s") == [0, 1, 2, 3, 4]
    assert store.read_predictions("s").rows.time_msc.tolist() == [
        time for _, _, time, _ in STREAM_PREDICTIONS
    ]


def test_a_prediction_insert_past_the_cursor_is_refused_as_a_gap(store: SqlTimeseries) -> None:
    rows = _predictions(STREAM_PREDICTIONS)
    store.insert_predictions(rows.rows(0, 2), "s", 0)

    with pytest.raises(SeqGapError, match="seqs up to 1; predictions from seq 3"):
        store.insert_predictions(rows.rows(3, 5), "s", 3)

    assert stored_prediction_seqs(store, "s") == [0, 1]


def test_prediction_and_tick_streams_are_independent(store: SqlTimeseries) -> None:
    store.insert_ticks("s", 0, ticks(["EURUSD"] * 3, [1, 2, 3], [100, 101, 102]))
    store.insert_predictions(_predictions(STREAM_PREDICTIONS[:2]), "s", 7)
    store.insert_predictions(_predictions(STREAM_PREDICTIONS[2:]), "t", 0)

    assert store.last_seq("s") == 2
    assert store.last_prediction_seq("s") == 8
    assert store.last_prediction_seq("t") == 2


def test_a_store_made_before_the_prediction_cursor_is_upgraded_in_place(
    open_store: Opener,
) -> None:
    old = open_store()
    old._command("DROP TABLE predictions")
    old._command(OLD_CREATE_PREDICTIONS)
    table = timeseries_sql.prediction_table(_predictions(ACCURACY_PREDICTIONS))
    old._insert("predictions", table.drop_columns(["stream", "seq"]), None)
    times = [time for time, _ in ACCURACY_TICKS]
    bids = [bid for _, bid in ACCURACY_TICKS]
    old.insert_ticks("EURUSD", 0, ticks(["EURUSD"] * len(times), times, bids))

    store = open_store()  # creates the schema: the upgrade runs here
    open_store()  # and again, on the upgraded table: nothing changes

    store = open_store()
    assert _table(store, M1)[0] == ("m", 1, 0, 2, 2, 0)  # the old rows read as before
    assert store.last_prediction_seq("EURUSD|m") is None
    later = _predictions([("m", 3, H1, DOWN)])
    assert store.insert_predictions(later, "EURUSD|m", 0) == 1
    assert store.last_prediction_seq("EURUSD|m") == 0
    assert ("m", 3, H1, 1, 1, 1) in _table(store, M1)


OLD_CREATE_PREDICTIONS = """
CREATE TABLE predictions
(
    model LowCardinality(String),
    version UInt32,
    symbol LowCardinality(String),
    time_msc Int64,
    probability_up Float64,
    predicted_class UInt8,
    feature_digest UInt64
)
ENGINE = ReplacingMergeTree
ORDER BY (symbol, time_msc, model, version)
"""

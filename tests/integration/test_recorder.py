"""The recorder: ticks and predictions into chDB, exactly once across crashes and restarts.

The integration tests run the real market data service (the shipped replay, 621k ticks
of EURUSD) and a real chDB store; the first kills the recorder mid-stream, restarts it
as a service, stops that gracefully mid-stream, and lets a third run finish. The store
must then hold seqs 0..n-1, each once, equal to the ticks market data serves. Inference
is unreachable meanwhile, which must not hold the ticks back. The predictions are
recorded from the real signal path (features and inference serving a model trained on
the shipped data), with a crash mid-stream, and compared with what inference serves;
the currency graph is weighted from two correlated synthetic symbols. The core's own
rules (batching by size and time, retries while the store is down) are checked first,
without gRPC.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from quantmesh.runtime.server import ServiceRuntime
from quantmesh.services.decision.upstream import PredictionSubscriber
from quantmesh.services.features.config import FeaturesSettings
from quantmesh.services.features.service import build_runtime as features_runtime
from quantmesh.services.inference.config import InferenceSettings
from quantmesh.services.inference.service import build_runtime as inference_runtime
from quantmesh.services.inference.testing import (
    MODEL_NAME,
    register_tiny_model,
    train_direction_model,
)
from quantmesh.services.marketdata.config import MarketDataSettings
from quantmesh.services.marketdata.service import build_runtime as marketdata_runtime
from quantmesh.services.marketdata.sources import EURUSD, GBPUSD, ReplaySource
from quantmesh.services.marketdata.synthetic import SyntheticSource
from quantmesh.services.recorder.config import RecorderSettings
from quantmesh.services.recorder.core import (
    TickBuffer,
    TickRecorder,
    WriteRetry,
    concat_predictions,
    concat_ticks,
    finish_even_if_cancelled,
)
from quantmesh.services.recorder.job import (
    prediction_rows_of_batch,
    prediction_stream_key,
    record,
    record_ticks,
)
from quantmesh.services.recorder.service import build_runtime
from quantmesh.services.registry.core import ModelRegistry
from quantmesh.storage.graph import open_graph
from quantmesh.storage.graph.correlation import align_closes, latest_correlations
from quantmesh.storage.timeseries import (
    PredictedClass,
    PredictionRows,
    TickRows,
    TimeseriesPort,
    open_timeseries,
)
from quantmesh.storage.timeseries.chdb import ChdbTimeseries
from quantmesh.storage.urls import StoreConfigError, StoreUnavailableError

STREAM = "EURUSD"
PREDICTIONS = prediction_stream_key(["EURUSD"], ())  # every model inference serves
FAST_RETRY = WriteRetry(first_delay=0.01, max_delay=0.05)
UNREACHABLE = "127.0.0.1:1"  # nothing listens there: connections are refused
H1 = 3_600_000


def rows(count: int, start: int = 0, symbol: str = "EURUSD") -> TickRows:
    times = np.arange(start, start + count, dtype=np.int64) * 10
    return TickRows.of([symbol] * count, times, times + 100, times + 102, np.ones(count))


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def settings_for(marketdata: ServiceRuntime, folder: Path, **more: Any) -> RecorderSettings:
    """Settings recording ``marketdata``'s ticks; inference is away unless ``more`` says."""
    settings: dict[str, Any] = {
        "port": 0,
        "marketdata_address": f"127.0.0.1:{marketdata.port}",
        "inference_address": UNREACHABLE,
        "timeseries_url": f"chdb:///{folder}",
        "batch_ticks": 20_000,
        "flush_seconds": 0.2,
        "subscribe_batch_size": 2_000,
        "retry_max_seconds": 0.2,
    }
    return RecorderSettings(**(settings | more))


async def wait_for(condition: Callable[[], Awaitable[bool]], within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while not await condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def past(store: TimeseriesPort, seq: int) -> bool:
    """Whether ``store`` holds the recorded stream up to ``seq``."""
    last = await asyncio.to_thread(store.last_seq, STREAM)
    return last is not None and last >= seq


def recorded_ticks() -> float:
    return REGISTRY.get_sample_value("quantmesh_ticks_total", {"service": "recorder"}) or 0.0


# The core, without gRPC.


def test_buffer_is_due_by_size_or_by_the_age_of_its_oldest_tick() -> None:
    clock = FakeClock()
    buffer = TickBuffer(next_seq=10, max_ticks=5, max_seconds=2.0, clock=clock)
    assert buffer.seconds_until_due() is None

    buffer.add(10, rows(2))
    clock.now += 1.5
    buffer.add(12, rows(2, start=2))

    assert buffer.seconds_until_due() == pytest.approx(0.5)
    assert not buffer.due()
    clock.now += 0.5
    assert buffer.due()
    buffer.add(14, rows(1, start=4))
    assert (buffer.first_seq, buffer.next_seq, len(buffer)) == (10, 15, 5)
    assert buffer.block().time_msc.tolist() == [0, 10, 20, 30, 40]

    buffer.clear()
    assert buffer.seconds_until_due() is None
    buffer.add(15, rows(5, start=5))
    assert buffer.due()  # by size, at once


def test_buffer_refuses_a_batch_that_does_not_follow_the_last() -> None:
    buffer = TickBuffer(next_seq=0, max_ticks=5, max_seconds=1.0)
    buffer.add(0, rows(3))

    with pytest.raises(ValueError, match="expected seq 3"):
        buffer.add(4, rows(1))


def test_concat_ticks_merges_different_symbol_dictionaries() -> None:
    block = concat_ticks([rows(2, symbol="GBPUSD"), rows(1, symbol="EURUSD")])

    assert block.symbol().tolist() == ["GBPUSD", "GBPUSD", "EURUSD"]


def test_write_retry_doubles_up_to_its_cap() -> None:
    retry = WriteRetry(first_delay=0.2, max_delay=1.0)

    waits = [retry.delay(failures) for failures in range(1, 6)]

    for wait, base in zip(waits, [0.2, 0.4, 0.8, 1.0, 1.0], strict=True):
        assert 0.75 * base <= wait <= 1.25 * base


class OutageStore(ChdbTimeseries):
    """A real chDB store whose writes fail while ``down`` is set (the store is away)."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, url="chdb-outage", setting="TEST")
        self.down = threading.Event()
        self.refused = 0

    def insert_ticks(self, stream: str, first_seq: int, rows: TickRows) -> int:
        if self.down.is_set():
            self.refused += 1
            raise StoreUnavailableError("ClickHouse is unreachable: insert ticks failed 6 times")
        return super().insert_ticks(stream, first_seq, rows)


async def test_recorder_keeps_its_ticks_while_the_store_is_down_and_writes_them_once(
    tmp_path: Path,
) -> None:
    store = OutageStore(tmp_path / "timeseries")
    try:
        recorder = TickRecorder(store, STREAM, 0, max_ticks=100, max_seconds=60.0, retry=FAST_RETRY)
        recorder.add(0, rows(3))
        store.down.set()
        flushing = asyncio.create_task(recorder.flush(asyncio.Event()))
        await wait_for(lambda: asyncio.sleep(0, store.refused >= 3))

        assert not flushing.done()  # still trying, the ticks still buffered
        assert len(recorder.buffer) == 3
        assert store.last_seq(STREAM) is None
        store.down.clear()

        assert await flushing
        assert len(recorder.buffer) == 0
        recorder.add(3, rows(2, start=3))
        assert await recorder.flush(asyncio.Event())
        assert store.read_ticks(STREAM).seq.tolist() == [0, 1, 2, 3, 4]
        assert recorder.failures == store.refused >= 3
    finally:
        store.close()


async def test_a_shutdown_ends_the_retries_and_leaves_the_ticks_for_the_next_run(
    tmp_path: Path,
) -> None:
    store = OutageStore(tmp_path / "timeseries")
    try:
        recorder = TickRecorder(store, STREAM, 0, max_ticks=100, max_seconds=60.0)
        recorder.add(0, rows(3))
        store.down.set()
        shutdown = asyncio.Event()
        shutdown.set()

        assert not await recorder.flush(shutdown)

        assert len(recorder.buffer) == 3
        assert store.last_seq(STREAM) is None
    finally:
        store.close()


async def test_a_cancelled_write_finishes_before_the_cancellation_goes_on() -> None:
    finished = threading.Event()

    def slow_write() -> None:
        time.sleep(0.2)
        finished.set()

    task = asyncio.create_task(finish_even_if_cancelled(asyncio.to_thread(slow_write)))
    await asyncio.sleep(0.05)
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished.is_set()


# The service, with market data.


async def test_the_recorder_survives_a_crash_and_a_restart_without_gap_or_duplicate(
    marketdata: ServiceRuntime, replay_source: ReplaySource, tmp_path: Path
) -> None:
    settings = settings_for(marketdata, tmp_path / "timeseries")
    total = replay_source.tick_count([STREAM])
    counted_before = recorded_ticks()

    # Run 1: the bare job, killed mid-stream (cancelled wherever it is, as by a crash).
    store = open_timeseries(settings.timeseries_url)
    crash = asyncio.create_task(record_ticks(store, settings, asyncio.Event()))
    await wait_for(lambda: past(store, total // 5))
    crash.cancel()
    with pytest.raises(asyncio.CancelledError):
        await crash
    first_run = store.last_seq(STREAM)
    store.close()
    assert first_run is not None
    assert first_run < total - 1

    # Run 2: the service, resumed from the store's cursor, stopped gracefully mid-stream.
    runtime = build_runtime(settings)
    await runtime.start()
    watcher = open_timeseries(settings.timeseries_url)  # the same folder: one engine
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        await wait_for(lambda: past(watcher, first_run + 50_000))
        await runtime.stop(grace=1.0)
        second_run = watcher.last_seq(STREAM)
    finally:
        watcher.close()
    assert second_run is not None
    assert first_run < second_run < total - 1

    # Run 3: the job again, to the end of the replay (it returns when the stream ends).
    store = open_timeseries(settings.timeseries_url)
    await asyncio.wait_for(record_ticks(store, settings, asyncio.Event()), timeout=60)

    stored = store.read_ticks(STREAM, 0, limit=total + 1)
    store.close()
    assert stored.seq.tolist() == list(range(total))
    sent = concat_ticks(
        [
            TickRows(("EURUSD",), c.symbol_index, c.time_msc, c.bid, c.ask, c.volume)
            for c in replay_source.read([STREAM], 0, 100_000)
        ]
    )
    np.testing.assert_array_equal(stored.rows.time_msc, sent.time_msc)
    np.testing.assert_array_equal(stored.rows.bid, sent.bid)
    np.testing.assert_array_equal(stored.rows.ask, sent.ask)
    np.testing.assert_array_equal(stored.rows.volume, sent.volume)
    assert set(stored.rows.symbol().tolist()) == {"EURUSD"}
    assert recorded_ticks() > counted_before


async def test_the_recorder_retries_while_the_store_is_down_and_misses_nothing(
    marketdata: ServiceRuntime, tmp_path: Path
) -> None:
    settings = settings_for(marketdata, tmp_path / "timeseries")
    store = OutageStore(tmp_path / "timeseries")
    store.down.set()
    shutdown = asyncio.Event()
    job = asyncio.create_task(record_ticks(store, settings, shutdown))
    try:
        await wait_for(lambda: asyncio.sleep(0, store.refused >= 2))
        assert store.last_seq(STREAM) is None
        store.down.clear()
        await wait_for(lambda: past(store, 100_000))
        shutdown.set()
        await asyncio.wait_for(job, timeout=10)
        last = store.last_seq(STREAM)
        assert last is not None
        assert store.read_ticks(STREAM, 0, limit=last + 2).seq.tolist() == list(range(last + 1))
    finally:
        job.cancel()
        store.close()


def test_a_wrong_store_url_fails_at_start_naming_the_setting(tmp_path: Path) -> None:
    settings = RecorderSettings(port=0, timeseries_url="clickhouse://h:1/db?nope=1")

    with pytest.raises(StoreConfigError, match="QUANTMESH_RECORDER_TIMESERIES_URL"):
        build_runtime(settings)


def test_a_wrong_graph_url_fails_at_start_naming_the_setting(tmp_path: Path) -> None:
    folder = tmp_path / "timeseries"
    settings = RecorderSettings(port=0, timeseries_url=f"chdb:///{folder}", graph_url="neo4j://h")

    with pytest.raises(StoreConfigError, match="QUANTMESH_RECORDER_GRAPH_URL"):
        build_runtime(settings)


# Predictions, from the real signal path.


@pytest.fixture(scope="module")
def registry_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry whose champion is a model really trained on the shipped data."""
    root = tmp_path_factory.mktemp("registry")
    register_tiny_model(ModelRegistry(root), MODEL_NAME, train_direction_model(), ["champion"])
    return root


@pytest.fixture
async def inference(marketdata: ServiceRuntime, registry_root: Path) -> AsyncIterator[str]:
    """Features on ``marketdata`` and inference on features; inference's address."""
    features_settings = FeaturesSettings(port=0, marketdata_address=f"127.0.0.1:{marketdata.port}")
    async with features_runtime(features_settings) as features:
        settings = InferenceSettings(
            port=0,
            registry_root=registry_root,
            features_address=f"127.0.0.1:{features.port}",
            alias_poll_seconds=0,
        )
        async with inference_runtime(settings) as runtime:
            yield f"127.0.0.1:{runtime.port}"


async def served_predictions(address: str) -> PredictionRows:
    """Every prediction inference serves for EURUSD, read as the recorder's first run would."""
    parts: list[PredictionRows] = []
    async with grpc.aio.insecure_channel(address) as channel:
        async for batch in PredictionSubscriber(channel, ["EURUSD"]).batches():
            assert batch.seq == sum(map(len, parts))
            parts.append(prediction_rows_of_batch(batch)[1])
    return concat_predictions(parts)


class WatchedStore(ChdbTimeseries):
    """A real chDB store noting the predictions offered, refusing those past ``limit``."""

    def __init__(self, folder: Path, limit: int | None = None) -> None:
        super().__init__(folder, url="chdb-watched", setting="TEST")
        self.limit = limit
        self.refused = 0
        self.offered: list[tuple[int, int]] = []  # (first seq, rows) of each write

    def insert_predictions(
        self, rows: PredictionRows, stream: str | None = None, first_seq: int = 0
    ) -> int:
        self.offered.append((first_seq, len(rows)))
        if stream is not None and self.limit is not None and first_seq + len(rows) > self.limit:
            self.refused += 1
            raise StoreUnavailableError("ClickHouse is unreachable: insert predictions failed")
        return super().insert_predictions(rows, stream, first_seq)


async def test_predictions_are_recorded_once_across_a_crash_and_scored_by_model_version(
    marketdata: ServiceRuntime, replay_source: ReplaySource, inference: str, tmp_path: Path
) -> None:
    served = await served_predictions(inference)
    total = len(served)
    assert total == 6_225  # one per H1 bar of the shipped year, warm-up rows included
    folder = tmp_path / "timeseries"

    # Run 1: the whole job, with market data unreachable (the ticks cannot be recorded,
    # which must not hold the predictions back) and a store that stops taking
    # predictions past seq 2,500; then killed where it waits to write.
    settings = settings_for(
        marketdata,
        folder,
        marketdata_address=UNREACHABLE,
        inference_address=inference,
        symbols=("EURUSD",),
        batch_predictions=500,
    )
    store = WatchedStore(folder, limit=2_500)
    crash = asyncio.create_task(record(store, None, settings, asyncio.Event()))
    try:
        await wait_for(lambda: asyncio.sleep(0, store.refused >= 2))
    finally:
        crash.cancel()
        with pytest.raises(asyncio.CancelledError):
            await crash
    first_run = store.last_prediction_seq(PREDICTIONS)
    assert store.last_seq(STREAM) is None
    store.close()
    assert first_run is not None
    assert 500 <= first_run < 2_500

    # Run 2: the service, every symbol market data serves (EURUSD: the same stream),
    # ticks too, to the end of both streams.
    both = settings_for(marketdata, folder, inference_address=inference)
    runtime = build_runtime(both)
    await runtime.start()
    watcher = open_timeseries(f"chdb:///{folder}")  # the same folder: one engine
    try:
        ticks = replay_source.tick_count([STREAM])

        async def done() -> bool:
            cursors = await asyncio.to_thread(
                lambda: (watcher.last_prediction_seq(PREDICTIONS), watcher.last_seq(STREAM))
            )
            return cursors == (total - 1, ticks - 1)

        await wait_for(done, within_s=60)
        await runtime.stop(grace=0.5)

        stored = watcher.read_predictions(PREDICTIONS, 0, limit=total + 1)
        accuracy = watcher.accuracy_by_model_version("EURUSD", H1, 30 * 24 * H1)
    finally:
        await runtime.stop(grace=0.5)
        watcher.close()

    # Run 3: the job again, after the end: it resumes there and writes nothing again.
    store = WatchedStore(folder)
    try:
        await asyncio.wait_for(record(store, None, both, asyncio.Event()), timeout=30)
    finally:
        store.close()
    assert store.offered == []

    assert stored.seq.tolist() == list(range(total))  # each once, no gap
    rows = stored.rows
    assert {(rows.models[i], rows.versions[i]) for i in rows.model_index} == {(MODEL_NAME, 1)}
    assert set(np.asarray(rows.symbols)[rows.symbol_index]) == {"EURUSD"}
    np.testing.assert_array_equal(rows.time_msc, served.time_msc)
    np.testing.assert_array_equal(rows.probability_up, served.probability_up)  # NaN = NaN
    np.testing.assert_array_equal(rows.predicted_class, served.predicted_class)
    np.testing.assert_array_equal(rows.feature_digest, served.feature_digest)
    unspecified = int(PredictedClass.UNSPECIFIED)
    assert 0 < int((rows.predicted_class == unspecified).sum()) < 100  # the warm-up

    assert {(row.model, row.version) for row in accuracy} == {(MODEL_NAME, 1)}
    made = int((served.predicted_class != unspecified).sum())
    assert sum(row.predictions for row in accuracy) == made  # no prediction counted twice
    scored = sum(row.scored for row in accuracy)
    assert made // 2 < scored <= made  # UP and DOWN calls, their horizon in the ticks
    assert 0 < sum(row.correct for row in accuracy) < scored


# The currency graph, from two correlated symbols.


@pytest.fixture
async def correlated_marketdata() -> AsyncIterator[ServiceRuntime]:
    """Market data serving EURUSD and GBPUSD as random walks of correlation -0.8."""
    source = SyntheticSource(
        [(EURUSD, 1.1), (GBPUSD, 1.27)],
        correlation=-0.8,
        annual_volatility=0.3,
        tick_ms=1_000,
        duration_ms=3 * H1,
    )
    async with marketdata_runtime(MarketDataSettings(port=0), source=source) as runtime:
        yield runtime


async def test_the_recorded_symbols_weight_the_currency_graph(
    correlated_marketdata: ServiceRuntime, tmp_path: Path
) -> None:
    settings = settings_for(
        correlated_marketdata,
        tmp_path / "timeseries",
        record_predictions=False,
        correlation_timeframe_ms=60_000,
        correlation_window=100,
        correlation_every_seconds=0.05,
    )
    store = open_timeseries(settings.timeseries_url)
    graph = open_graph("memory://")
    try:
        # A finite replay: the job ends once every tick is stored and weighed.
        await asyncio.wait_for(record(store, graph, settings, asyncio.Event()), timeout=30)

        edges = {edge.symbol: edge for edge in graph.symbols()}
        last_tick = int(store.read_ticks("EURUSD,GBPUSD").rows.time_msc.max())
        complete = {
            name: store.ohlc(name, 60_000, 0, last_tick // 60_000 * 60_000)
            for name in ("EURUSD", "GBPUSD")
        }
    finally:
        graph.close()
        store.close()

    assert (edges["EURUSD"].base, edges["EURUSD"].quote) == ("EUR", "USD")
    assert (edges["GBPUSD"].base, edges["GBPUSD"].quote) == ("GBP", "USD")
    times, closes = align_closes(complete)
    expected = latest_correlations(closes, 100)[("EURUSD", "GBPUSD")]
    assert edges["EURUSD"].correlation == {"GBPUSD": pytest.approx(expected)}
    assert edges["GBPUSD"].correlation == {"EURUSD": pytest.approx(expected)}
    assert -0.95 < expected < -0.6  # the walks' correlation, through ticks and bars
    assert edges["EURUSD"].updated_ms == edges["GBPUSD"].updated_ms == int(times[-1])

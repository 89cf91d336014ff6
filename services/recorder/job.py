"""The recorder's job: ticks, predictions and correlations, each resuming on its own.

:func:`record` runs three tasks side by side; each meets its own failures, so an
unreachable inference never stops the ticks, nor a market data restart the predictions
already served:

- **ticks** (:func:`record_ticks`): each connection asks market data which symbols it
  serves, names the stream (the sorted symbols, comma-separated, as analytics names
  it), reads the stream's ``last_seq`` from the store and subscribes from the seq after
  it;
- **predictions** (:func:`record_predictions`): the same on inference's prediction
  stream, which inference numbers by the symbols and the models asked for, so those
  name the stored stream (:func:`prediction_stream_key`), and its cursor is
  ``last_prediction_seq``;
- **correlations** (:func:`keep_correlations`): after ticks are written, at most every
  ``correlation_every_seconds``, the recorded symbols' bars weight the currency graph
  (:mod:`.correlations`), in a worker thread.

For each stream, a reader task moves batches from the subscription into a small queue;
the recorder takes them from there, so a write is made when enough rows are buffered
*or* when the oldest has waited ``flush_seconds``, even while the stream is quiet. While
a write is being retried nothing more is taken: the queue fills, credit runs out, and
the producer waits.

A dropped stream, a producer restart or a refused write is met the same way: write
what is buffered if the store takes it, then reconnect and resume from the store's
cursor. A finite replay ends a stream's task once every row of it is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence, Sized
from typing import TypeVar

import grpc
import numpy as np

from quantmesh.inference.v1 import inference_pb2
from quantmesh.marketdata.v1 import marketdata_pb2, marketdata_pb2_grpc
from quantmesh.mesh.transport import open_channel
from quantmesh.runtime.logging import get_logger
from quantmesh.runtime.metrics import MARKET_TIME, RECORDED_ROWS, REPLAY_FINISHED, TICKS
from quantmesh.runtime.subscriber import StreamDroppedError
from quantmesh.services.decision.upstream import PredictionSubscriber
from quantmesh.services.marketdata.client import TickSubscriber
from quantmesh.services.marketdata.convert import tick_columns_from_proto
from quantmesh.services.recorder.config import RecorderSettings
from quantmesh.services.recorder.core import (
    PredictionRecorder,
    SeqRecorder,
    TickRecorder,
    WriteRetry,
    finish_even_if_cancelled,
)
from quantmesh.services.recorder.correlations import Currencies, weight_currency_graph
from quantmesh.storage.graph import GraphPort
from quantmesh.storage.timeseries import PredictionRows, TickRows, TimeseriesPort

__all__ = [
    "MarketSymbols",
    "TickProgress",
    "keep_correlations",
    "prediction_rows_of_batch",
    "prediction_stream_key",
    "record",
    "record_predictions",
    "record_ticks",
    "stream_key",
    "tick_rows_of_batch",
]

SERVICE = "recorder"  # the metrics' label
RETRY_SECONDS = 1.0
# After an error that is not the network's, retrying at once would only repeat it.
FAULT_RETRY_SECONDS = 5.0
QUEUE_BATCHES = 8
WINDOW_BATCHES = 16
ALL_MODELS = "*"

BatchT = TypeVar("BatchT")
RowsT = TypeVar("RowsT", bound=Sized)

_log = get_logger("recorder")
_END = object()  # the stream ended


def stream_key(symbols: Sequence[str]) -> str:
    """What a tick seq counts in: the sorted symbols of the merged stream."""
    return ",".join(symbols)


def prediction_stream_key(symbols: Sequence[str], models: Sequence[str]) -> str:
    """What a prediction seq counts in: the sorted symbols, and the models as asked.

    Inference numbers a prediction ``feature_seq * len(models) + j`` for the ``j``-th
    model asked, so their order matters; ``*`` stands for every model it serves.
    """
    return f"{stream_key(sorted(symbols))}|{','.join(models) or ALL_MODELS}"


def tick_rows_of_batch(batch: marketdata_pb2.TickBatch) -> tuple[int, TickRows]:
    """A tick batch's first seq and its rows."""
    columns = tick_columns_from_proto(batch)
    rows = TickRows(
        tuple(batch.symbols),
        columns.symbol_index,
        columns.time_msc,
        columns.bid,
        columns.ask,
        columns.volume,
    )
    return columns.seq, rows


def prediction_rows_of_batch(batch: inference_pb2.PredictionBatch) -> tuple[int, PredictionRows]:
    """A prediction batch's first seq and its rows (rows without a prediction included).

    A warm-up row (probability NaN, class UNSPECIFIED) is kept: the stream's seqs stay
    dense, so the stored seqs remain its cursor; the store never scores such a row.
    """
    rows = PredictionRows(
        models=tuple(model.name for model in batch.models),
        versions=tuple(_registry_version(model) for model in batch.models),
        model_index=np.array(batch.model_index, dtype=np.uint32),
        symbols=tuple(batch.symbols),
        symbol_index=np.array(batch.symbol_index, dtype=np.uint32),
        time_msc=np.array(batch.time_msc, dtype=np.int64),
        probability_up=np.array(batch.probability_up, dtype=np.float64),
        predicted_class=np.array(batch.predicted_class, dtype=np.uint8),
        feature_digest=np.array(batch.feature_digest, dtype=np.uint64),
    )
    return batch.seq, rows


def _registry_version(model: inference_pb2.ModelRef) -> int:
    try:
        return int(model.version)
    except ValueError:
        raise ValueError(
            f"model {model.name} came with version {model.version!r}, not a registry version number"
        ) from None


class MarketSymbols:
    """The symbols recorded, as market data serves them, shared by the recorder's tasks.

    The tick task asks market data on every connection (:meth:`ask`); the prediction
    task takes the configured symbols, or asks too, falling back to the last answer
    while market data is away (:meth:`names`). The answer's currencies give the graph
    the edges it lacks.
    """

    def __init__(self, wanted: Sequence[str]) -> None:
        self.wanted = tuple(sorted(set(wanted)))
        self.currencies: dict[str, Currencies] = {}
        self.recorded: tuple[str, ...] = ()  # the tick stream's symbols, once known
        self._answer: list[str] | None = None

    async def ask(self, channel: grpc.aio.Channel) -> list[str]:
        """The symbols to record, as market data's ListSymbols answers now."""
        stub = marketdata_pb2_grpc.MarketDataServiceStub(channel)
        listing = await stub.ListSymbols(marketdata_pb2.ListSymbolsRequest(), timeout=10)
        served = {info.name: info for info in listing.symbols}
        missing = set(self.wanted) - set(served)
        if missing:
            raise LookupError(
                f"market data does not serve {sorted(missing)} (it serves {sorted(served)}); "
                "fix QUANTMESH_RECORDER_SYMBOLS"
            )
        self.currencies.update(
            {name: (info.currency_base, info.currency_profit) for name, info in served.items()}
        )
        self._answer = sorted(self.wanted or served)
        return self._answer

    async def names(self, marketdata_address: str) -> list[str]:
        """The symbols to record, for a stream that does not read market data itself."""
        if self.wanted:
            return list(self.wanted)
        try:
            async with open_channel(marketdata_address, "marketdata") as channel:
                return await self.ask(channel)
        except grpc.aio.AioRpcError:
            if self._answer is None:
                raise
            return self._answer


class TickProgress:
    """What the tick task has stored, for the correlation task.

    Attributes
    ----------
    latest_ms:
        Time of the latest tick stored by this run; None before the first write.
    fresh:
        Set when ticks are stored; the correlation task clears it when it starts.
    ended:
        Set when the tick task is over (its finite stream recorded, or shutdown).
    """

    def __init__(self) -> None:
        self.latest_ms: int | None = None
        self.fresh = asyncio.Event()
        self.ended = asyncio.Event()

    def note(self, block: TickRows) -> None:
        if len(block):
            latest = int(block.time_msc.max())
            self.latest_ms = latest if self.latest_ms is None else max(self.latest_ms, latest)
            self.fresh.set()


async def record(
    store: TimeseriesPort,
    graph: GraphPort | None,
    settings: RecorderSettings,
    shutdown: asyncio.Event,
) -> None:
    """Record ticks and (if set) predictions, and weight ``graph``, until done or shutdown.

    Returns once every task is over: its finite stream recorded, or shutdown.
    """
    symbols = MarketSymbols(settings.symbols)
    progress = TickProgress()

    async def ticks() -> None:
        try:
            await record_ticks(store, settings, shutdown, symbols, on_stored=progress.note)
        finally:
            progress.ended.set()

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(ticks())
        if settings.record_predictions:
            tasks.create_task(record_predictions(store, settings, shutdown, symbols))
        if graph is not None:
            tasks.create_task(
                keep_correlations(store, graph, settings, symbols, progress, shutdown)
            )


def _count_stored(block: TickRows) -> None:
    TICKS.labels(SERVICE).inc(len(block))
    RECORDED_ROWS.labels("ticks").inc(len(block))
    MARKET_TIME.labels(SERVICE).set(int(block.time_msc[-1]))


async def record_ticks(
    store: TimeseriesPort,
    settings: RecorderSettings,
    shutdown: asyncio.Event,
    symbols: MarketSymbols | None = None,
    on_stored: Callable[[TickRows], None] | None = None,
) -> None:
    """Record market data's ticks until its stream ends or shutdown.

    ``on_stored`` is called with each block of ticks once it is stored.
    """
    directory = MarketSymbols(settings.symbols) if symbols is None else symbols
    retry = WriteRetry(max_delay=settings.retry_max_seconds)

    def stored(block: TickRows) -> None:
        _count_stored(block)
        if on_stored is not None:
            on_stored(block)

    async def connect() -> bool:
        async with open_channel(settings.marketdata_address, "marketdata") as channel:
            served = await directory.ask(channel)
            directory.recorded = tuple(served)
            stream = stream_key(served)
            last = await asyncio.to_thread(store.last_seq, stream)
            from_seq = 0 if last is None else last + 1
            recorder = TickRecorder(
                store,
                stream,
                from_seq,
                max_ticks=settings.batch_ticks,
                max_seconds=settings.flush_seconds,
                retry=retry,
                on_stored=stored,
            )
            subscriber = TickSubscriber(
                channel,
                served,
                from_seq=from_seq,
                batch_size=settings.subscribe_batch_size,
                window=WINDOW_BATCHES,
            )
            _log.info("recording", stream=stream, from_seq=from_seq)
            if not await _pump(subscriber.batches(), recorder, tick_rows_of_batch, shutdown):
                return False
            REPLAY_FINISHED.labels(SERVICE).set(1)
            _log.info(
                "tick stream ended: every tick recorded",
                stream=stream,
                through_seq=recorder.buffer.next_seq - 1,
            )
            return True

    await _keep_connecting("ticks", connect, shutdown)


async def record_predictions(
    store: TimeseriesPort,
    settings: RecorderSettings,
    shutdown: asyncio.Event,
    symbols: MarketSymbols | None = None,
) -> None:
    """Record inference's predictions until its stream ends or shutdown."""
    directory = MarketSymbols(settings.symbols) if symbols is None else symbols
    models = tuple(dict.fromkeys(settings.prediction_models))
    retry = WriteRetry(max_delay=settings.retry_max_seconds)

    async def connect() -> bool:
        names = await directory.names(settings.marketdata_address)
        stream = prediction_stream_key(names, models)
        last = await asyncio.to_thread(store.last_prediction_seq, stream)
        from_seq = 0 if last is None else last + 1
        recorder = PredictionRecorder(
            store,
            stream,
            from_seq,
            max_predictions=settings.batch_predictions,
            max_seconds=settings.flush_seconds,
            retry=retry,
            on_stored=lambda block: RECORDED_ROWS.labels("predictions").inc(len(block)),
        )
        async with open_channel(settings.inference_address, "inference") as channel:
            subscriber = PredictionSubscriber(
                channel, names, models, from_seq=from_seq, window=WINDOW_BATCHES
            )
            _log.info("recording predictions", stream=stream, from_seq=from_seq)
            batches = subscriber.batches()
            if not await _pump(batches, recorder, prediction_rows_of_batch, shutdown):
                return False
        _log.info(
            "prediction stream ended: every prediction recorded",
            stream=stream,
            through_seq=recorder.buffer.next_seq - 1,
        )
        return True

    await _keep_connecting("predictions", connect, shutdown)


async def keep_correlations(
    store: TimeseriesPort,
    graph: GraphPort,
    settings: RecorderSettings,
    symbols: MarketSymbols,
    ticks: TickProgress,
    shutdown: asyncio.Event,
) -> None:
    """Weight the graph after ticks are stored, at most every ``correlation_every_seconds``.

    Returns at shutdown, or once the tick task is over and its last ticks are weighed.
    """
    while True:
        await _first_of(shutdown, ticks.fresh, ticks.ended)
        if shutdown.is_set():
            return
        if not ticks.fresh.is_set():  # the tick task is over, its ticks all weighed
            return
        ticks.fresh.clear()
        await _weigh(store, graph, settings, symbols, ticks)
        # At most every so often; the end of the ticks cuts the wait short.
        await _first_of(shutdown, ticks.ended, seconds=settings.correlation_every_seconds)


async def _weigh(
    store: TimeseriesPort,
    graph: GraphPort,
    settings: RecorderSettings,
    symbols: MarketSymbols,
    ticks: TickProgress,
) -> None:
    if ticks.latest_ms is None or not symbols.recorded:
        return
    try:
        edges = await finish_even_if_cancelled(
            asyncio.to_thread(
                weight_currency_graph,
                store,
                graph,
                symbols.recorded,
                dict(symbols.currencies),
                ticks.latest_ms,
                timeframe_ms=settings.correlation_timeframe_ms,
                window=settings.correlation_window,
            )
        )
    except Exception:
        _log.exception("cannot weight the currency graph; trying again later")
        if not ticks.ended.is_set():
            ticks.fresh.set()  # once the wait is over, even if no tick comes
        return
    if edges:
        _log.info(
            "currency graph weighted",
            symbols=[edge.symbol for edge in edges],
            through_ms=edges[0].updated_ms,
        )


async def _first_of(*events: asyncio.Event, seconds: float | None = None) -> None:
    """Wait until one of ``events`` is set, or ``seconds`` have passed."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


async def _keep_connecting(
    what: str, connect: Callable[[], Awaitable[bool]], shutdown: asyncio.Event
) -> None:
    """Run ``connect`` again after each failure until it returns True or shutdown.

    ``connect`` records from the store's cursor over one connection; it returns True
    once its finite stream is recorded, False at shutdown, and raises otherwise.
    """
    while not shutdown.is_set():
        pause = RETRY_SECONDS
        try:
            if await connect():
                return
        except (grpc.aio.AioRpcError, StreamDroppedError) as error:
            status = error.code().name if isinstance(error, grpc.aio.AioRpcError) else "DROPPED"
            _log.warning(f"{what} interrupted; resuming from the store's cursor", status=status)
        except Exception:
            _log.exception(f"cannot record {what}; resuming from the store's cursor")
            pause = FAULT_RETRY_SECONDS
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(shutdown.wait(), timeout=pause)


async def _pump(
    batches: AsyncIterator[BatchT],
    recorder: SeqRecorder[RowsT],
    decode: Callable[[BatchT], tuple[int, RowsT]],
    shutdown: asyncio.Event,
) -> bool:
    """Record until the stream ends (True), shutdown (False) or an error (raised)."""
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=QUEUE_BATCHES)

    async def read() -> None:
        try:
            async for batch in batches:
                await queue.put(batch)
            await queue.put(_END)
        except Exception as error:
            # Handed over in order: the batches before it are recorded first.
            await queue.put(error)

    reader = asyncio.create_task(read())
    stopping = asyncio.create_task(shutdown.wait())
    try:
        while True:
            if shutdown.is_set():
                # What is buffered is written if the store takes it at once; the rest
                # (and whatever the queue holds) is read again by the next run.
                await recorder.flush(shutdown)
                return False
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait(
                {getter, stopping},
                timeout=recorder.buffer.seconds_until_due(),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if getter not in done:
                getter.cancel()  # Queue.get gives up its turn without losing an item
                if stopping not in done:  # the oldest buffered row has waited enough
                    await recorder.flush(shutdown)
                continue
            item = getter.result()
            if item is _END:
                return await recorder.flush(shutdown)
            if isinstance(item, BaseException):
                await recorder.flush(shutdown)
                raise item
            recorder.add(*decode(item))  # type: ignore[arg-type]  # a batch of the stream
            if recorder.buffer.due():
                await recorder.flush(shutdown)
    finally:
        for task in (reader, stopping):
            task.cancel()
        await asyncio.gather(reader, stopping, return_exceptions=True)

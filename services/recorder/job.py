"""The recorder's job: subscribe to market data from the store's cursor and record.

Each connection asks market data which symbols it serves, names the stream (the sorted
symbols, comma-separated, as analytics names it), reads the stream's ``last_seq`` from
the store and subscribes from the seq after it. A reader task moves batches from the
subscription into a small queue; the recorder takes them from there, so a write is made
when enough ticks are buffered *or* when the oldest has waited ``flush_seconds``, even
while the stream is quiet. While a write is being retried nothing more is taken: the
queue fills, credit runs out, and market data waits.

A dropped stream, a market data restart or a refused write is met the same way: write
what is buffered if the store takes it, then reconnect and resume from the store's
cursor. A finite replay ends the job once every tick is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import grpc

from quantmesh.marketdata.v1 import marketdata_pb2, marketdata_pb2_grpc
from quantmesh.mesh.transport import open_channel
from quantmesh.runtime.logging import get_logger
from quantmesh.runtime.metrics import MARKET_TIME, REPLAY_FINISHED, TICKS
from quantmesh.runtime.subscriber import StreamDroppedError
from quantmesh.services.marketdata.client import TickSubscriber
from quantmesh.services.marketdata.convert import tick_columns_from_proto
from quantmesh.services.recorder.config import RecorderSettings
from quantmesh.services.recorder.core import TickRecorder, WriteRetry
from quantmesh.storage.timeseries import TickRows, TimeseriesPort

__all__ = ["record_ticks", "stream_key", "tick_rows_of_batch"]

SERVICE = "recorder"  # the metrics' label
RETRY_SECONDS = 1.0
# After an error that is not the network's, retrying at once would only repeat it.
FAULT_RETRY_SECONDS = 5.0
QUEUE_BATCHES = 8
WINDOW_BATCHES = 16

_log = get_logger("recorder")
_END = object()  # the stream ended


def stream_key(symbols: Sequence[str]) -> str:
    """What a tick seq counts in: the sorted symbols of the merged stream."""
    return ",".join(symbols)


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


def _count_stored(block: TickRows) -> None:
    TICKS.labels(SERVICE).inc(len(block))
    MARKET_TIME.labels(SERVICE).set(int(block.time_msc[-1]))


async def record_ticks(
    store: TimeseriesPort, settings: RecorderSettings, shutdown: asyncio.Event
) -> None:
    """Record market data's ticks until its stream ends or shutdown."""
    retry = WriteRetry(max_delay=settings.retry_max_seconds)
    while not shutdown.is_set():
        pause = RETRY_SECONDS
        try:
            async with open_channel(settings.marketdata_address, "marketdata") as channel:
                served = await _served_symbols(channel, settings.symbols)
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
                    on_stored=_count_stored,
                )
                subscriber = TickSubscriber(
                    channel,
                    served,
                    from_seq=from_seq,
                    batch_size=settings.subscribe_batch_size,
                    window=WINDOW_BATCHES,
                )
                _log.info("recording", stream=stream, from_seq=from_seq)
                if await _pump(subscriber, recorder, shutdown):
                    REPLAY_FINISHED.labels(SERVICE).set(1)
                    _log.info(
                        "tick stream ended: every tick recorded",
                        stream=stream,
                        through_seq=recorder.buffer.next_seq - 1,
                    )
                    return
        except (grpc.aio.AioRpcError, StreamDroppedError) as error:
            status = error.code().name if isinstance(error, grpc.aio.AioRpcError) else "DROPPED"
            _log.warning("ticks interrupted; resuming from the store's cursor", status=status)
        except Exception:
            _log.exception("cannot record ticks; resuming from the store's cursor")
            pause = FAULT_RETRY_SECONDS
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(shutdown.wait(), timeout=pause)


async def _served_symbols(channel: grpc.aio.Channel, wanted: Sequence[str]) -> list[str]:
    stub = marketdata_pb2_grpc.MarketDataServiceStub(channel)
    listing = await stub.ListSymbols(marketdata_pb2.ListSymbolsRequest(), timeout=10)
    served = {info.name for info in listing.symbols}
    missing = set(wanted) - served
    if missing:
        raise LookupError(
            f"market data does not serve {sorted(missing)} (it serves {sorted(served)}); "
            "fix QUANTMESH_RECORDER_SYMBOLS"
        )
    return sorted(set(wanted) or served)


async def _pump(
    subscriber: TickSubscriber, recorder: TickRecorder, shutdown: asyncio.Event
) -> bool:
    """Record until the stream ends (True), shutdown (False) or an error (raised)."""
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=QUEUE_BATCHES)

    async def read() -> None:
        try:
            async for batch in subscriber.batches():
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
                if stopping not in done:  # the oldest buffered tick has waited enough
                    await recorder.flush(shutdown)
                continue
            item = getter.result()
            if item is _END:
                return await recorder.flush(shutdown)
            if isinstance(item, BaseException):
                await recorder.flush(shutdown)
                raise item
            assert isinstance(item, marketdata_pb2.TickBatch)
            recorder.add(*tick_rows_of_batch(item))
            if recorder.buffer.due():
                await recorder.flush(shutdown)
    finally:
        for task in (reader, stopping):
            task.cancel()
        await asyncio.gather(reader, stopping, return_exceptions=True)

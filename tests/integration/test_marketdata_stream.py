"""The tick stream over a real gRPC server: credit, acks, resume and bad input."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from quantmesh.common.v1 import common_pb2
from quantmesh.marketdata.v1 import marketdata_pb2 as md
from quantmesh.marketdata.v1 import marketdata_pb2_grpc
from quantmesh.runtime.server import ServiceRuntime
from quantmesh.services.marketdata.client import TickSubscriber
from quantmesh.services.marketdata.sources import ReplaySource


def subscribe(**fields: object) -> md.SubscribeRequest:
    return md.SubscribeRequest(subscribe=md.Subscription(**fields))  # type: ignore[arg-type]


def credit(batches: int) -> md.SubscribeRequest:
    return md.SubscribeRequest(credit=common_pb2.Credit(batches=batches))


def ack(seq: int) -> md.SubscribeRequest:
    return md.SubscribeRequest(ack=common_pb2.Ack(seq=seq))


async def read_batches(call: grpc.aio.StreamStreamCall, count: int) -> list[md.TickBatch]:
    batches = []
    for _ in range(count):
        response = await call.read()
        assert response is not grpc.aio.EOF
        batches.append(response.batch)
    return batches


def flatten(batches: list[md.TickBatch]) -> dict[str, np.ndarray]:
    return {
        "seq": np.concatenate([b.seq + np.arange(len(b.time_msc)) for b in batches]),
        "time_msc": np.concatenate([np.array(b.time_msc) for b in batches]),
        "bid": np.concatenate([np.array(b.bid) for b in batches]),
        "ask": np.concatenate([np.array(b.ask) for b in batches]),
    }


async def test_stream_when_credit_granted_sends_consecutive_seqs(channel: grpc.aio.Channel) -> None:
    call = marketdata_pb2_grpc.MarketDataServiceStub(channel).Subscribe()
    await call.write(subscribe(symbols=["EURUSD"], batch_size=50, initial_credit=3))
    batches = await read_batches(call, 3)
    assert [b.seq for b in batches] == [0, 50, 100]
    assert all(len(b.time_msc) == 50 and b.symbols == ["EURUSD"] for b in batches)
    assert all(b.symbol_digits == [5] and b.total > 600_000 for b in batches)
    ticks = flatten(batches)
    assert np.all(np.diff(ticks["time_msc"]) > 0)
    assert np.all(ticks["ask"] > ticks["bid"])
    call.cancel()


async def test_stream_when_consumer_gives_no_credit_receives_nothing_more(
    channel: grpc.aio.Channel,
) -> None:
    call = marketdata_pb2_grpc.MarketDataServiceStub(channel).Subscribe()
    await call.write(subscribe(symbols=["EURUSD"], batch_size=10, initial_credit=2))
    await read_batches(call, 2)
    # Cancelling a read would cancel the call, so wait on it without cancelling.
    pending_read = asyncio.ensure_future(call.read())
    done, _ = await asyncio.wait({pending_read}, timeout=0.5)
    assert not done, "a batch arrived with no credit left"
    # The producer held its position: the next grant resumes exactly after batch 2.
    await call.write(credit(1))
    response = await asyncio.wait_for(pending_read, timeout=5)
    assert response.batch.seq == 20
    call.cancel()


async def test_stream_when_client_half_closes_without_credit_ends_ok(
    channel: grpc.aio.Channel,
) -> None:
    call = marketdata_pb2_grpc.MarketDataServiceStub(channel).Subscribe()
    await call.write(subscribe(symbols=["EURUSD"], batch_size=10))
    await call.write(credit(2))
    await call.done_writing()
    batches = [response.batch async for response in call]
    assert [b.seq for b in batches] == [0, 10]
    assert await call.code() == grpc.StatusCode.OK


async def test_resume_after_dropped_stream_loses_and_duplicates_nothing(
    channel: grpc.aio.Channel,
) -> None:
    stub = marketdata_pb2_grpc.MarketDataServiceStub(channel)
    reference_call = stub.Subscribe()
    await reference_call.write(subscribe(symbols=["EURUSD"], batch_size=100, initial_credit=10))
    reference = flatten(await read_batches(reference_call, 10))
    reference_call.cancel()

    first = stub.Subscribe()
    await first.write(subscribe(symbols=["EURUSD"], batch_size=100, initial_credit=4))
    before = await read_batches(first, 4)
    await first.write(ack(before[2].seq + 99))  # only three batches were processed
    first.cancel()  # the connection drops with one batch received but not processed

    resumed = stub.Subscribe()
    # Resume from the last acked seq + 1, with a different batch size on purpose.
    await resumed.write(
        subscribe(symbols=["EURUSD"], from_seq=300, batch_size=70, initial_credit=10)
    )
    after = await read_batches(resumed, 10)
    resumed.cancel()

    combined = flatten(before[:3] + after)
    count = len(reference["seq"])
    for column in ("seq", "time_msc", "bid", "ask"):
        np.testing.assert_array_equal(combined[column][:count], reference[column])
    assert np.array_equal(combined["seq"], np.arange(len(combined["seq"])))


async def test_subscriber_when_server_drains_resumes_on_restart_exactly_once(
    replay_source: ReplaySource,
) -> None:
    from quantmesh.services.marketdata.config import MarketDataSettings
    from quantmesh.services.marketdata.service import build_runtime

    first = build_runtime(MarketDataSettings(port=0), source=replay_source)
    port = await first.start()
    seqs: list[int] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        subscriber = TickSubscriber(channel, ["EURUSD"], batch_size=500, window=4)
        restarted: ServiceRuntime | None = None
        async for batch in subscriber.batches():
            seqs.extend(range(batch.seq, batch.seq + len(batch.time_msc)))
            if len(seqs) == 5_000:
                await first.stop(grace=1.0)  # drains: the stream ends UNAVAILABLE
                restarted = build_runtime(MarketDataSettings(port=port), source=replay_source)
                await restarted.start()
            if len(seqs) >= 20_000:
                break
        assert restarted is not None
        await restarted.stop(grace=0.2)
    assert subscriber.stats.resumes >= 1
    assert seqs == list(range(len(seqs)))


@pytest.mark.parametrize(
    ("requests", "code", "message_part"),
    [
        ([subscribe(symbols=["XAUUSD"])], grpc.StatusCode.NOT_FOUND, "unknown symbol 'XAUUSD'"),
        ([subscribe(from_seq=10**12)], grpc.StatusCode.OUT_OF_RANGE, "beyond the end"),
        ([subscribe(symbols=["EURUSD"]), credit(-5)], grpc.StatusCode.INVALID_ARGUMENT, "credit"),
        ([subscribe(initial_credit=-1)], grpc.StatusCode.INVALID_ARGUMENT, "initial_credit"),
        ([subscribe(batch_size=10**6)], grpc.StatusCode.INVALID_ARGUMENT, "batch_size"),
        ([subscribe(speed=-2.0)], grpc.StatusCode.INVALID_ARGUMENT, "speed"),
        ([credit(5)], grpc.StatusCode.INVALID_ARGUMENT, "first message"),
        (
            [subscribe(symbols=["EURUSD"], initial_credit=1), ack(10**9)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "ahead of the stream",
        ),
    ],
    ids=[
        "unknown-symbol",
        "from-seq-beyond-end",
        "negative-credit",
        "negative-initial-credit",
        "batch-too-large",
        "negative-speed",
        "credit-before-subscribe",
        "ack-ahead",
    ],
)
async def test_subscribe_when_input_is_bad_answers_status_and_server_stays_up(
    channel: grpc.aio.Channel,
    requests: list[md.SubscribeRequest],
    code: grpc.StatusCode,
    message_part: str,
) -> None:
    stub = marketdata_pb2_grpc.MarketDataServiceStub(channel)
    call = stub.Subscribe()
    for request in requests:
        await call.write(request)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in call:
            pass
    assert raised.value.code() == code
    assert message_part in (raised.value.details() or "")
    # The server is still up and serving.
    reply = await stub.ListSymbols(md.ListSymbolsRequest())
    assert [s.name for s in reply.symbols] == ["EURUSD"]


async def test_get_rates_returns_h1_and_aggregated_bars(channel: grpc.aio.Channel) -> None:
    stub = marketdata_pb2_grpc.MarketDataServiceStub(channel)
    start, end = 1_483_315_200_000, 1_483_315_200_000 + 2 * 86_400_000  # 2017-01-02, two days
    h1 = (
        await stub.GetRates(
            md.GetRatesRequest(
                symbol="EURUSD",
                timeframe=common_pb2.TIMEFRAME_H1,
                from_time_ms=start,
                to_time_ms=end,
            )
        )
    ).rates
    d1 = (
        await stub.GetRates(
            md.GetRatesRequest(
                symbol="EURUSD",
                timeframe=common_pb2.TIMEFRAME_D1,
                from_time_ms=start,
                to_time_ms=end,
            )
        )
    ).rates
    assert len(h1.time_ms) == 48
    assert h1.digits == 5
    assert list(d1.time_ms) == [start, start + 86_400_000]
    assert d1.high[0] == max(h1.high[:24])
    assert d1.low[1] == min(h1.low[24:])
    assert d1.open[0] == h1.open[0]
    assert d1.close[1] == h1.close[-1]


@pytest.mark.parametrize(
    ("request_", "code", "message_part"),
    [
        (
            md.GetRatesRequest(
                symbol="EURUSD", timeframe=common_pb2.TIMEFRAME_H1, from_time_ms=5, to_time_ms=5
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "malformed time range",
        ),
        (
            md.GetRatesRequest(symbol="EURUSD", from_time_ms=0, to_time_ms=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "timeframe is required",
        ),
        (
            md.GetRatesRequest(symbol="GBPJPY", timeframe=common_pb2.TIMEFRAME_H1, to_time_ms=5),
            grpc.StatusCode.NOT_FOUND,
            "unknown symbol",
        ),
        (
            md.GetRatesRequest(symbol="EURUSD", timeframe=common_pb2.TIMEFRAME_M1, to_time_ms=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "finer than",
        ),
    ],
    ids=["empty-range", "no-timeframe", "unknown-symbol", "too-fine"],
)
async def test_get_rates_when_input_is_bad_answers_status(
    channel: grpc.aio.Channel,
    request_: md.GetRatesRequest,
    code: grpc.StatusCode,
    message_part: str,
) -> None:
    stub = marketdata_pb2_grpc.MarketDataServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetRates(request_)
    assert raised.value.code() == code
    assert message_part in (raised.value.details() or "")


async def test_get_symbol_info_describes_eurusd(channel: grpc.aio.Channel) -> None:
    stub = marketdata_pb2_grpc.MarketDataServiceStub(channel)
    info = (await stub.GetSymbolInfo(md.GetSymbolInfoRequest(symbol="EURUSD"))).info
    assert (info.currency_base, info.currency_profit, info.digits) == ("EUR", "USD", 5)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetSymbolInfo(md.GetSymbolInfoRequest(symbol=""))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT

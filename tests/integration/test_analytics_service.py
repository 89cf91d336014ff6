"""The analytics service over real gRPC, fed by real execution and market data services.

Execution runs the pipeline clock, so every order meets the market at the hour the test
grants and each run fills the same. Two days of the shipped replay keep the tests quick;
the tick-resume test reads the whole year.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import grpc
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from quantmesh.analytics.v1 import analytics_pb2 as an
from quantmesh.analytics.v1 import analytics_pb2_grpc
from quantmesh.cli.report import report
from quantmesh.common.v1 import common_pb2
from quantmesh.execution.v1 import execution_pb2 as ex
from quantmesh.execution.v1 import execution_pb2_grpc
from quantmesh.risk.v1 import risk_pb2
from quantmesh.runtime.server import ServiceRuntime
from quantmesh.services.analytics.config import AnalyticsSettings
from quantmesh.services.analytics.ledger import Mark
from quantmesh.services.analytics.recorder import record_marks
from quantmesh.services.analytics.report import PLOT_IDS
from quantmesh.services.analytics.service import STORE_FILE
from quantmesh.services.analytics.service import build_runtime as analytics_runtime
from quantmesh.services.analytics.store import H1_MS, AnalyticsStore
from quantmesh.services.execution.clock import END_OF_TIME_MS, ClockMode
from quantmesh.services.execution.config import ExecutionSettings
from quantmesh.services.execution.convert import money_from_proto as money
from quantmesh.services.execution.service import build_runtime as execution_runtime
from quantmesh.services.marketdata.config import MarketDataSettings
from quantmesh.services.marketdata.service import build_runtime as marketdata_runtime
from quantmesh.services.marketdata.sources import EURUSD, ReplaySource, TickColumns
from quantmesh.storage.graph import (
    DecisionProvenance,
    NodeKind,
    NodeRef,
    Relation,
    decision_provenance,
    open_graph,
)
from tests.integration.test_execution_service import order

MODEL = "analytics-test"
START = Decimal(10_000)  # both services' default starting balance
CENT = Decimal("0.01")

ExecutionStub = execution_pb2_grpc.ExecutionServiceStub
AnalyticsStub = analytics_pb2_grpc.AnalyticsServiceStub


@dataclass(frozen=True)
class RunningAnalytics:
    port: int
    stub: AnalyticsStub


# Starts analytics; keyword arguments change its settings (e.g. graph_url=...).
AnalyticsStarter = Callable[..., AbstractAsyncContextManager[RunningAnalytics]]


@pytest.fixture(scope="module")
def two_days() -> ReplaySource:
    """The replay's first 48 hours (uninterrupted: the first weekend is days later)."""
    bars = ReplaySource.eurusd().bars("EURUSD")
    start = int(bars.time_ms[0])
    return ReplaySource({"EURUSD": (EURUSD, bars.slice_time(start, start + 48 * H1_MS))})


@pytest.fixture
async def short_marketdata(two_days: ReplaySource) -> AsyncIterator[ServiceRuntime]:
    runtime = marketdata_runtime(MarketDataSettings(port=0), source=two_days)
    await runtime.start()
    yield runtime
    await runtime.stop(grace=0.2)


@pytest.fixture
async def execution(
    short_marketdata: ServiceRuntime, tmp_path: Path
) -> AsyncIterator[tuple[ServiceRuntime, ExecutionStub]]:
    settings = ExecutionSettings(
        port=0,
        folder=tmp_path / "execution",
        marketdata_address=f"127.0.0.1:{short_marketdata.port}",
        clock=ClockMode.PIPELINE,  # ticks act only as far as the test grants
    )
    runtime = execution_runtime(settings)
    await runtime.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        yield runtime, execution_pb2_grpc.ExecutionServiceStub(channel)
    await runtime.stop(grace=0.2)


@pytest.fixture
def start_analytics(
    short_marketdata: ServiceRuntime,
    execution: tuple[ServiceRuntime, ExecutionStub],
    tmp_path: Path,
) -> AnalyticsStarter:
    """Starts analytics on one folder: a second start resumes what the first recorded."""

    @asynccontextmanager
    async def start(**changes: object) -> AsyncIterator[RunningAnalytics]:
        settings = AnalyticsSettings(
            port=0,
            folder=tmp_path / "analytics",
            execution_address=f"127.0.0.1:{execution[0].port}",
            marketdata_address=f"127.0.0.1:{short_marketdata.port}",
        ).model_copy(update=changes)
        runtime = analytics_runtime(settings)
        await runtime.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
                stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
                yield RunningAnalytics(runtime.port, stub)
        finally:
            await runtime.stop(grace=0.2)

    return start


# --------------------------------------------------------------------------- helpers


async def advance(stub: ExecutionStub, time_ms: int) -> ex.AdvanceMarketTimeResponse:
    request = ex.AdvanceMarketTimeRequest(time_ms=time_ms, wait=True)
    reply: ex.AdvanceMarketTimeResponse = await stub.AdvanceMarketTime(request, timeout=30)
    return reply


async def trade(stub: ExecutionStub, key: str, **fields: object) -> ex.Order:
    """Submit an order and grant market time an hour at a time until it has filled."""
    changes: dict[str, object] = {
        "signal_id": key,
        "risk_decision": risk_pb2.RiskDecision(
            signal_id=key, account_id="paper", approved=True, volume=fields["volume"]
        ),
    }
    submitted = await stub.SubmitOrder(ex.SubmitOrderRequest(order=order(key, **changes, **fields)))
    assert not submitted.duplicate
    for _ in range(24):
        got = (await stub.GetOrder(ex.GetOrderRequest(idempotency_key=key))).order
        if got.state == ex.ORDER_STATE_FILLED:
            return got
        working = (ex.ORDER_STATE_NEW, ex.ORDER_STATE_ACCEPTED, ex.ORDER_STATE_PARTIALLY_FILLED)
        assert got.state in working, got.reject_reason
        account = (await stub.GetAccount(ex.GetAccountRequest())).account
        await advance(stub, account.market_time_ms + H1_MS)
    raise AssertionError(f"order {key} never filled")


def lots(text: str) -> common_pb2.Lots:
    value = Decimal(text)
    return common_pb2.Lots(units=int(value), nanos=int((value % 1) * 1_000_000_000))


def open_order(side: int, volume: str, version: str) -> dict[str, object]:
    """An opening market order; stop and target far away on the right sides."""
    far_below, far_above = (
        common_pb2.Price(points=50_000, digits=5),
        common_pb2.Price(points=200_000, digits=5),
    )
    buy = side == common_pb2.SIDE_BUY
    return {
        "side": side,
        "volume": lots(volume),
        "stop_loss": far_below if buy else far_above,
        "take_profit": far_above if buy else far_below,
        "model_name": MODEL,
        "model_version": version,
    }


def close_order(side: int, volume: str, position_id: str) -> dict[str, object]:
    return {
        "side": side,
        "volume": lots(volume),
        "position_id": position_id,
        "stop_loss": None,
        "take_profit": None,
    }


async def position_ids(stub: ExecutionStub) -> dict[int, str]:
    positions = (await stub.ListPositions(ex.ListPositionsRequest())).positions
    return {p.side: p.position_id for p in positions}


async def fill_reports(stub: ExecutionStub) -> tuple[list[ex.ExecutionReport], int]:
    """Every fill report execution has, and the seq of its last report of any kind."""
    call = stub.StreamExecutionReports()
    await call.write(
        ex.StreamExecutionReportsRequest(subscribe=ex.Subscription(from_seq=0, initial_credit=100))
    )
    reports: list[ex.ExecutionReport] = []
    with contextlib.suppress(TimeoutError):  # a live stream: quiet once all is sent
        while True:
            response = await asyncio.wait_for(call.read(), timeout=0.5)
            reports.extend(response.batch.reports)
    call.cancel()
    assert [r.seq for r in reports] == list(range(len(reports)))
    fills = [r for r in reports if r.fill_volume.units or r.fill_volume.nanos]
    return fills, reports[-1].seq


async def eventually(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def caught_up(store: AnalyticsStore, report_seq: int, ticks: int) -> None:
    """Wait until analytics has recorded every report and every tick."""

    async def done() -> bool:
        return store.report_cursor() >= report_seq and store.tick_cursor("EURUSD") == ticks - 1

    await eventually(done, f"report {report_seq} and tick {ticks - 1} to be recorded")


def cents(amount: Decimal) -> Decimal:
    return amount.quantize(CENT)


def expected_marks(columns: TickColumns, symbol: str, digits: int) -> list[Mark]:
    """The last tick of each hour, computed independently of the recorder."""
    hours = columns.time_msc // H1_MS
    last = np.flatnonzero(np.append(hours[1:] != hours[:-1], True))
    return [
        Mark(symbol, int(columns.time_msc[k]), int(columns.bid[k]), int(columns.ask[k]), digits)
        for k in last
    ]


def all_ticks(source: ReplaySource) -> TickColumns:
    (columns,) = source.read(["EURUSD"], 0, source.tick_count(["EURUSD"]))
    return columns


async def rpc_error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


# --------------------------------------------------------------------------- tests


async def test_analytics_reconciles_with_executions_account(
    execution: tuple[ServiceRuntime, ExecutionStub],
    start_analytics: AnalyticsStarter,
    two_days: ReplaySource,
    tmp_path: Path,
) -> None:
    _, stub = execution
    first_tick = int(all_ticks(two_days).time_msc[0])
    await advance(stub, first_tick + 2 * H1_MS)
    await trade(stub, "long", **open_order(common_pb2.SIDE_BUY, "0.10", "1"))
    await trade(stub, "short", **open_order(common_pb2.SIDE_SELL, "0.20", "2"))
    ids = await position_ids(stub)
    await advance(stub, first_tick + 9 * H1_MS)
    await trade(stub, "close-long", **close_order(common_pb2.SIDE_SELL, "0.10", ids[1]))
    await trade(stub, "reduce-short", **close_order(common_pb2.SIDE_BUY, "0.10", ids[2]))
    assert (await advance(stub, END_OF_TIME_MS)).feed_ended
    account = (await stub.GetAccount(ex.GetAccountRequest())).account
    fills, last_seq = await fill_reports(stub)
    assert len(fills) == 4

    async with start_analytics() as analytics:
        store = AnalyticsStore(tmp_path / "analytics" / STORE_FILE)
        await caught_up(store, last_seq, two_days.tick_count(["EURUSD"]))
        performance = (
            await analytics.stub.GetPerformance(an.GetPerformanceRequest(account_id="paper"))
        ).performance
        curve = (await analytics.stub.GetEquityCurve(an.GetEquityCurveRequest())).curve

        # The same money as execution's books, to the cent.
        equity = Decimal(curve.equity_micros[-1]) / 1_000_000
        assert cents(equity) == money(account.equity)
        assert cents(Decimal(curve.balance_micros[-1]) / 1_000_000) == money(account.balance)
        assert cents(money(performance.realized_pnl)) == money(account.balance) - START
        assert cents(money(performance.unrealized_pnl)) == money(account.equity) - money(
            account.balance
        )
        assert money(performance.commission) == sum(money(f.commission) for f in fills)
        assert (
            performance.trade_count,
            performance.winning_trades + performance.losing_trades,
        ) == (
            1,
            1,
        )
        assert performance.realized_pnl.currency == "USD"
        assert curve.time_ms[-1] == int(all_ticks(two_days).time_msc[-1])  # the final mark

        hourly = (
            await analytics.stub.GetEquityCurve(
                an.GetEquityCurveRequest(resolution=common_pb2.TIMEFRAME_H1)
            )
        ).curve
        assert len({t // H1_MS for t in hourly.time_ms}) == len(hourly.time_ms)
        assert hourly.equity_micros[-1] == curve.equity_micros[-1]

        # Each model version is credited with the position it opened.
        models = (
            await analytics.stub.GetModelPerformance(
                an.GetModelPerformanceRequest(model_name=MODEL)
            )
        ).models
        assert [(m.model_name, m.model_version) for m in models] == [(MODEL, "2"), (MODEL, "1")]
        assert [m.trading.trade_count for m in models] == [0, 1]
        assert money(models[0].trading.unrealized_pnl) == money(performance.unrealized_pnl)
        assert all(m.predictions == 0 for m in models)  # no predictions recorded yet

        # A window after the last fill holds no trade, and only the open short moves it.
        later = an.TimeRange(from_time_ms=first_tick + 30 * H1_MS)
        window = (
            await analytics.stub.GetPerformance(an.GetPerformanceRequest(range=later))
        ).performance
        assert window.trade_count == 0
        assert money(window.commission) == 0

        report = await analytics.stub.GenerateReport(
            an.GenerateReportRequest(format=an.REPORT_FORMAT_HTML, include_models=True)
        )
        page = report.content.decode("utf-8")
        assert all(f'id="{plot}"' in page for plot in PLOT_IDS)
        assert MODEL in page
        assert report.content_type == "text/html; charset=utf-8"
        assert report.sha256 == hashlib.sha256(report.content).digest()
        assert report.generated_time_ms > 0


async def test_bad_requests_are_answered_with_their_status(
    execution: tuple[ServiceRuntime, ExecutionStub], start_analytics: AnalyticsStarter
) -> None:
    backwards = an.TimeRange(from_time_ms=2_000, to_time_ms=1_000)
    async with start_analytics() as analytics:
        cases: list[tuple[Awaitable[object], grpc.StatusCode, str]] = [
            (
                analytics.stub.GetPerformance(an.GetPerformanceRequest(range=backwards)),
                grpc.StatusCode.INVALID_ARGUMENT,
                "greater than",
            ),
            (
                analytics.stub.GetEquityCurve(an.GetEquityCurveRequest(range=backwards)),
                grpc.StatusCode.INVALID_ARGUMENT,
                "greater than",
            ),
            (
                analytics.stub.GenerateReport(
                    an.GenerateReportRequest(range=backwards, format=an.REPORT_FORMAT_HTML)
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "greater than",
            ),
            (
                analytics.stub.GenerateReport(an.GenerateReportRequest()),
                grpc.StatusCode.INVALID_ARGUMENT,
                "format",
            ),
            (
                analytics.stub.GetPerformance(an.GetPerformanceRequest(account_id="live-1")),
                grpc.StatusCode.NOT_FOUND,
                "unknown account",
            ),
            (
                analytics.stub.GetEquityCurve(an.GetEquityCurveRequest(account_id="live-1")),
                grpc.StatusCode.NOT_FOUND,
                "unknown account",
            ),
            (
                analytics.stub.GenerateReport(
                    an.GenerateReportRequest(account_id="live-1", format=an.REPORT_FORMAT_CSV)
                ),
                grpc.StatusCode.NOT_FOUND,
                "unknown account",
            ),
            (
                analytics.stub.GetModelPerformance(
                    an.GetModelPerformanceRequest(model_name="nobody")
                ),
                grpc.StatusCode.NOT_FOUND,
                "nobody",
            ),
            (
                analytics.stub.GetModelPerformance(an.GetModelPerformanceRequest()),
                grpc.StatusCode.INVALID_ARGUMENT,
                "model_name",
            ),
        ]
        for call, code, part in cases:
            error = await rpc_error(call)
            assert error.code() == code, error.details()
            assert part in (error.details() or "")


async def test_a_restarted_analytics_misses_and_repeats_no_fill(
    execution: tuple[ServiceRuntime, ExecutionStub],
    start_analytics: AnalyticsStarter,
    two_days: ReplaySource,
    tmp_path: Path,
) -> None:
    _, stub = execution
    ticks = all_ticks(two_days)
    await advance(stub, int(ticks.time_msc[0]) + 2 * H1_MS)
    await trade(stub, "long", **open_order(common_pb2.SIDE_BUY, "0.10", "1"))
    store = AnalyticsStore(tmp_path / "analytics" / STORE_FILE)
    async with start_analytics():
        _, last_seq = await fill_reports(stub)

        async def recorded() -> bool:
            return store.report_cursor() >= last_seq

        await eventually(recorded, "the first fill")
    assert len(store.fills("paper")) == 1

    # While analytics is down, execution trades on.
    await trade(stub, "short", **open_order(common_pb2.SIDE_SELL, "0.10", "2"))
    ids = await position_ids(stub)
    await trade(stub, "close-long", **close_order(common_pb2.SIDE_SELL, "0.10", ids[1]))
    assert (await advance(stub, END_OF_TIME_MS)).feed_ended
    fills, last_seq = await fill_reports(stub)
    account = (await stub.GetAccount(ex.GetAccountRequest())).account

    async with start_analytics() as analytics:
        await caught_up(store, last_seq, len(ticks))
        performance = (await analytics.stub.GetPerformance(an.GetPerformanceRequest())).performance
    recorded_fills = store.fills("paper")
    assert [(f.order_id, f.position_id, f.price_points, f.opens) for f in recorded_fills] == [
        (r.order_id, r.position_id, r.fill_price.points, opens)
        for r, opens in zip(fills, (True, True, False), strict=True)
    ]
    assert performance.trade_count == 1
    assert cents(money(performance.realized_pnl)) == money(account.balance) - START
    assert store.marks() == expected_marks(ticks, "EURUSD", EURUSD.digits)


def submitted(decision_id: str, order_id: str) -> DecisionProvenance:
    """Risk's record of a decision when it submits its order: no fill yet."""
    order = NodeRef(NodeKind.ORDER, order_id)
    return decision_provenance(
        decision_id,
        signal_id=decision_id,
        prediction_id=f"{MODEL}@1:EURUSD@1",
        model_name=MODEL,
        model_version="1",
        feature_row="EURUSD@1",
        orders={order_id: []},
        attributes={order: {"idempotency_key": decision_id, "outcome": "submitted"}},
    )


def filled(provenance: DecisionProvenance | None) -> set[tuple[str, str]]:
    """(order id, fill id) of each order → fill edge of a decision's provenance."""
    assert provenance is not None
    return {(e.source.key, e.target.key) for e in provenance.edges if e.relation == "filled_by"}


async def test_analytics_attaches_each_fill_to_its_decisions_order(
    execution: tuple[ServiceRuntime, ExecutionStub],
    start_analytics: AnalyticsStarter,
    two_days: ReplaySource,
    tmp_path: Path,
) -> None:
    _, stub = execution
    ticks = all_ticks(two_days)
    entry = int(ticks.time_msc[0]) + 2 * H1_MS
    await advance(stub, entry)
    # A buy whose stop, 10 pips down, the falling market of these two days triggers: the
    # broker's stop order inherits the decision ("long").
    bid = int(ticks.bid[np.searchsorted(ticks.time_msc, entry)])
    stops = open_order(common_pb2.SIDE_BUY, "0.10", "1") | {
        "stop_loss": common_pb2.Price(points=bid - 100, digits=5)
    }
    opened = await trade(stub, "long", **stops)
    # Risk recorded the decision when it submitted the order (a graph journal of one
    # writer at a time: risk's, then analytics').
    url = f"file:///{tmp_path / 'graph.jsonl'}"
    graph = open_graph(url)
    graph.record_provenance(submitted("long", opened.order_id))
    graph.close()
    shorted = await trade(stub, "short", **open_order(common_pb2.SIDE_SELL, "0.20", "2"))
    assert (await advance(stub, END_OF_TIME_MS)).feed_ended
    fills, last_seq = await fill_reports(stub)
    by_signal = {
        key: {(r.order_id, r.broker_deal_id) for r in fills if r.signal_id == key}
        for key in ("long", "short")
    }
    stop_orders = {order for order, _ in by_signal["long"]} - {opened.order_id}
    assert len(stop_orders) == 1, by_signal  # the stop closed the long: its own order
    assert {order for order, _ in by_signal["short"]} == {shorted.order_id}

    store = AnalyticsStore(tmp_path / "analytics" / STORE_FILE)
    async with start_analytics(graph_url=url):

        async def recorded() -> bool:
            return store.report_cursor() >= last_seq

        await eventually(recorded, "every report")
    # Stopping attached what was pending and closed the journal.
    graph = open_graph(url)
    try:
        long = graph.provenance("long")
        assert filled(long) == by_signal["long"]
        assert long is not None
        # The opening order keeps what risk recorded; its fill has what execution reported.
        order = long.node(NodeRef(NodeKind.ORDER, opened.order_id))
        assert order.attributes["outcome"] == "submitted"
        [opening] = [r for r in fills if r.order_id == opened.order_id]
        fill = long.node(NodeRef(NodeKind.FILL, opening.broker_deal_id)).attributes
        assert (fill["price"], fill["volume"], fill["time_ms"]) == (
            f"{Decimal(opening.fill_price.points).scaleb(-opening.fill_price.digits).normalize():f}",
            "0.1",
            opening.time_ms,
        )
        assert fill["commission"] == f"{money(opening.commission).normalize():f} USD"
        assert {(e.source, e.relation) for e in long.edges if e.target.key in stop_orders} == {
            (long.root, Relation.ORDERED)
        }
        # Risk had not recorded "short": its fill waits, and is there once risk records it.
        assert graph.provenance("short") is None
        graph.record_provenance(submitted("short", shorted.order_id))
        assert filled(graph.provenance("short")) == by_signal["short"]
    finally:
        graph.close()


async def test_marks_resume_mid_stream_without_gap_or_duplicate(
    marketdata: ServiceRuntime, replay_source: ReplaySource, tmp_path: Path
) -> None:
    store = AnalyticsStore(tmp_path / STORE_FILE)
    address = f"127.0.0.1:{marketdata.port}"
    total = replay_source.tick_count(["EURUSD"])
    shutdown = asyncio.Event()
    first = asyncio.create_task(record_marks(store, address, ["EURUSD", "GBPUSD"], 2_000, shutdown))

    async def partway() -> bool:
        return store.tick_cursor("EURUSD") > total // 3

    await eventually(partway, "a third of the year")
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    stopped_at = store.tick_cursor("EURUSD")
    assert total // 3 < stopped_at < total - 1

    await asyncio.wait_for(record_marks(store, address, ["EURUSD"], 5_000, shutdown), 60)
    assert store.tick_cursor("EURUSD") == total - 1
    assert store.marks() == expected_marks(all_ticks(replay_source), "EURUSD", EURUSD.digits)


async def test_cli_report_from_service_writes_the_services_html(
    start_analytics: AnalyticsStarter, tmp_path: Path
) -> None:
    app = typer.Typer()
    app.command("report")(report)
    app.command("other")(lambda: None)  # two commands, so `report` stays a subcommand
    out = tmp_path / "service-report.html"
    async with start_analytics() as analytics:
        args = ["report", "--from-service", f"127.0.0.1:{analytics.port}", "-o", str(out)]
        # The CLI blocks on a synchronous channel: run it off the event loop that serves.
        result = await asyncio.to_thread(CliRunner().invoke, app, args)
    assert result.exit_code == 0, result.output
    page = out.read_text("utf-8")
    assert all(f'id="{plot}"' in page for plot in PLOT_IDS)
    both = ["report", "--demo", "--from-service", "127.0.0.1:1"]
    assert (await asyncio.to_thread(CliRunner().invoke, app, both)).exit_code == 2
    gone = ["report", "--from-service", "127.0.0.1:1", "-o", str(tmp_path / "x.html")]
    failed = await asyncio.to_thread(CliRunner().invoke, app, gone)
    assert failed.exit_code == 1
    assert "UNAVAILABLE" in failed.output

"""Analytics' protobuf edge: execution reports in, checked ranges, exact figures out."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal

import grpc
import numpy as np
import pytest

from quantmesh.analytics.v1 import analytics_pb2 as an
from quantmesh.common.v1 import common_pb2
from quantmesh.execution.v1 import execution_pb2 as ex
from quantmesh.runtime.errors import InvalidArgument
from quantmesh.services.analytics import convert
from quantmesh.services.analytics.core import Window, analyse_window
from quantmesh.services.analytics.ledger import Side
from quantmesh.services.analytics.recorder import hourly_marks
from quantmesh.services.analytics.report import PLOT_IDS
from quantmesh.services.analytics.runs import Run, demo_run
from quantmesh.services.marketdata.sources import TickColumns

HOUR = 3_600_000


@pytest.fixture(scope="module")
def window() -> Window:
    run = demo_run()
    return analyse_window(Run(run.account, run.fills[:60], run.marks[:900]))


def a_report(**changes: object) -> ex.ExecutionReport:
    fields: dict[str, object] = {
        "seq": 7,
        "order_id": "O3",
        "account_id": "paper",
        "symbol": "EURUSD",
        "side": common_pb2.SIDE_SELL,
        "state": ex.ORDER_STATE_FILLED,
        "fill_volume": common_pb2.Lots(units=1, nanos=250_000_000),
        "fill_price": common_pb2.Price(points=105_123, digits=5),
        "commission": common_pb2.Money(currency="USD", units=4, nanos=375_000_000),
        "position_id": "P3",
        "signal_id": "sig",
        "time_ms": 1_483_394_400_123,
        "model_name": "eurusd-h1-direction",
        "model_version": "3",
    }
    fields.update(changes)
    return ex.ExecutionReport(**fields)  # type: ignore[arg-type]


def test_a_fill_report_becomes_a_reported_fill() -> None:
    fill = convert.fill_of_report(a_report())
    assert fill is not None
    assert (fill.seq, fill.account_id, fill.order_id, fill.position_id) == (7, "paper", "O3", "P3")
    assert (fill.side, fill.volume_lots, fill.price_points, fill.digits) == (
        Side.SELL,
        Decimal("1.25"),
        105_123,
        5,
    )
    assert fill.commission == Decimal("4.375")
    assert (fill.model_name, fill.model_version, fill.signal_id) == (
        "eurusd-h1-direction",
        "3",
        "sig",
    )
    assert fill.time_ms == 1_483_394_400_123


def test_a_report_without_a_fill_is_none() -> None:
    report = a_report(fill_volume=common_pb2.Lots(), state=ex.ORDER_STATE_ACCEPTED)
    report.ClearField("fill_price")
    assert convert.fill_of_report(report) is None


def test_a_negative_commission_is_a_cost_all_the_same() -> None:
    report = a_report(commission=common_pb2.Money(currency="USD", units=-4, nanos=-375_000_000))
    fill = convert.fill_of_report(report)
    assert fill is not None
    assert fill.commission == Decimal("4.375")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"fill_price": None}, "without a price"),
        ({"side": common_pb2.SIDE_UNSPECIFIED}, "without a side"),
        ({"position_id": ""}, "without a position"),
    ],
)
def test_a_fill_missing_what_the_ledger_needs_is_refused(
    change: dict[str, object], message: str
) -> None:
    report = a_report(**{k: v for k, v in change.items() if v is not None})
    if change.get("fill_price", 1) is None:
        report.ClearField("fill_price")
    with pytest.raises(ValueError, match=message):
        convert.fill_of_report(report)


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [(0, 0, (0, None)), (5, 0, (5, None)), (0, 9, (0, 9)), (5, 9, (5, 9))],
)
def test_a_time_range_defaults_to_the_whole_history(
    start: int, end: int, expected: tuple[int, int | None]
) -> None:
    assert convert.time_range(an.TimeRange(from_time_ms=start, to_time_ms=end)) == expected


@pytest.mark.parametrize(("start", "end"), [(9, 5), (5, 5), (-1, 0), (0, -3)])
def test_a_bad_time_range_is_an_invalid_argument(start: int, end: int) -> None:
    with pytest.raises(InvalidArgument) as raised:
        convert.time_range(an.TimeRange(from_time_ms=start, to_time_ms=end))
    assert raised.value.status == grpc.StatusCode.INVALID_ARGUMENT


def test_resolutions_and_formats_are_checked() -> None:
    assert convert.resolution_ms(common_pb2.TIMEFRAME_UNSPECIFIED) is None
    assert convert.resolution_ms(common_pb2.TIMEFRAME_H1) == HOUR
    assert convert.resolution_ms(common_pb2.TIMEFRAME_D1) == 24 * HOUR
    with pytest.raises(InvalidArgument):
        convert.resolution_ms(99)
    with pytest.raises(InvalidArgument, match="format is required"):
        convert.check_format(an.REPORT_FORMAT_UNSPECIFIED)
    with pytest.raises(InvalidArgument, match="unknown report format"):
        convert.check_format(42)


def test_micros_round_half_even_and_bps_to_the_nearest() -> None:
    assert convert.micros(Decimal("10000.0000005")) == 10_000_000_000
    assert convert.micros(Decimal("-1.2345675")) == -1_234_568
    assert convert.bps(0.12345) == 1234
    assert convert.bps(0.01236) == 124
    assert convert.bps(1.0) == 10_000


def test_performance_carries_the_windows_figures_exactly(window: Window) -> None:
    ledger, p = window.analysis.ledger, window.analysis.overall
    message = convert.performance_to_proto(ledger, p)
    assert money(message.realized_pnl) == p.realized_pnl - p.commission
    assert money(message.unrealized_pnl) == p.unrealized_pnl  # the whole history
    assert money(message.commission) == p.commission
    assert message.realized_pnl.currency == "USD"
    assert message.trade_count == p.trades.count > 0
    assert message.winning_trades + message.losing_trades == message.trade_count
    assert money(message.gross_profit) - money(message.gross_loss) == p.trades.net_pnl
    assert message.win_rate_bps == round(p.trades.win_rate * 10_000)
    assert p.max_relative_drawdown is not None
    assert p.max_drawdown is not None
    assert message.max_drawdown_bps == round(p.max_relative_drawdown.fraction * 10_000)
    assert money(message.max_drawdown) == p.max_drawdown.amount
    assert message.sharpe == p.sharpe


def test_the_equity_curve_is_columnar_micros_with_drawdown(window: Window) -> None:
    ledger = window.analysis.ledger
    every = convert.equity_curve_to_proto(ledger, "USD", None)
    hourly = convert.equity_curve_to_proto(ledger, "USD", HOUR)
    daily = convert.equity_curve_to_proto(ledger, "USD", 24 * HOUR)
    for curve in (every, hourly, daily):
        n = len(curve.time_ms)
        assert len(curve.balance_micros) == len(curve.equity_micros) == len(curve.drawdown_bps) == n
        assert list(curve.time_ms) == sorted(curve.time_ms)
        assert curve.equity_micros[-1] == convert.micros(ledger.equity)
        assert curve.time_ms[-1] == ledger.curve.time_ms[-1]
        assert min(curve.drawdown_bps) >= 0
    assert len(daily.time_ms) < len(hourly.time_ms) <= len(ledger.curve)
    days = np.array(daily.time_ms) // (24 * HOUR)
    assert len(set(days.tolist())) == len(days)


def money(message: common_pb2.Money) -> Decimal:
    return Decimal(message.units) + Decimal(message.nanos) * Decimal("1e-9")


def test_reports_render_in_every_format(window: Window) -> None:
    def render(report_format: int, include_models: bool = True) -> str:
        content = convert.report_content(
            window, report_format, include_models=include_models, generated_time_ms=0, source="t"
        )
        return content.decode("utf-8")

    page = render(an.REPORT_FORMAT_HTML)
    assert all(f'id="{plot}"' in page for plot in PLOT_IDS)
    assert "metrics-models" in page
    trades = list(csv.DictReader(io.StringIO(render(an.REPORT_FORMAT_CSV))))
    assert len(trades) == len(window.analysis.ledger.trades)
    assert Decimal(trades[0]["net_pnl"]) == window.analysis.ledger.trades[0].net_pnl
    document = json.loads(render(an.REPORT_FORMAT_JSON))
    assert int(document["performance"]["tradeCount"]) == len(trades)
    assert len(document["models"]) == len(window.analysis.models)
    assert "models" not in json.loads(render(an.REPORT_FORMAT_JSON, include_models=False))
    markdown = render(an.REPORT_FORMAT_MARKDOWN)
    assert markdown.startswith("# quantmesh performance report")
    assert markdown.count("\n| ema-cross ") == len(window.analysis.models)


def test_hourly_marks_keep_the_last_tick_of_each_symbol_and_hour() -> None:
    t0 = 1_483_394_400_000
    times = [t0 + 1, t0 + 2, t0 + 3, t0 + HOUR - 1, t0 + HOUR, t0 + HOUR + 5, t0 + 2 * HOUR]
    index = [0, 1, 0, 1, 0, 0, 1]
    columns = TickColumns(
        seq=100,
        symbol_index=np.array(index, dtype=np.uint32),
        time_msc=np.array(times, dtype=np.int64),
        bid=np.arange(1, 8, dtype=np.int64) * 1_000,
        ask=np.arange(1, 8, dtype=np.int64) * 1_000 + 10,
        volume=np.ones(7),
    )
    marks = hourly_marks(columns, ["EURUSD", "USDJPY"], [5, 3])
    assert [(m.symbol, m.time_ms, m.bid_points, m.digits) for m in marks] == [
        ("EURUSD", t0 + 3, 3_000, 5),
        ("USDJPY", t0 + HOUR - 1, 4_000, 3),
        ("EURUSD", t0 + HOUR + 5, 6_000, 5),
        ("USDJPY", t0 + 2 * HOUR, 7_000, 3),
    ]
    assert hourly_marks(columns.rows(0, 0), ["EURUSD", "USDJPY"], [5, 3]) == []

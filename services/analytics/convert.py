"""The one place where analytics' protobuf messages meet its domain types.

Inbound: execution reports become :class:`~.store.ReportedFill` records, and requests'
ranges and resolutions are checked. Outbound: windows become ``Performance``,
``EquityCurve`` and ``ModelPerformance`` messages, and reports become bytes in the asked
format. Amounts in ``Money`` are exact (execution's encoding); columnar amounts are
integer micro-units and percentages integer basis points, as the contract says.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from google.protobuf import json_format

from quantmesh.analytics.v1 import analytics_pb2
from quantmesh.common.v1 import common_pb2
from quantmesh.execution.v1 import execution_pb2
from quantmesh.runtime.errors import InvalidArgument
from quantmesh.services.analytics.core import ModelKey, Window, curve_points, sum_unrealized
from quantmesh.services.analytics.ledger import LedgerResult, Side, Trade
from quantmesh.services.analytics.performance import Performance, drawdown_series
from quantmesh.services.analytics.report import render_report
from quantmesh.services.analytics.store import ReportedFill
from quantmesh.services.execution.convert import lots_from_proto, money_from_proto, money_to_proto

_MICROS = Decimal(1_000_000)

# Sampling periods of GetEquityCurve, by common.v1.Timeframe (UTC periods).
TIMEFRAME_MS = {
    common_pb2.TIMEFRAME_M1: 60_000,
    common_pb2.TIMEFRAME_M5: 300_000,
    common_pb2.TIMEFRAME_M15: 900_000,
    common_pb2.TIMEFRAME_M30: 1_800_000,
    common_pb2.TIMEFRAME_H1: 3_600_000,
    common_pb2.TIMEFRAME_H4: 14_400_000,
    common_pb2.TIMEFRAME_D1: 86_400_000,
}

CONTENT_TYPES = {
    analytics_pb2.REPORT_FORMAT_HTML: "text/html; charset=utf-8",
    analytics_pb2.REPORT_FORMAT_MARKDOWN: "text/markdown; charset=utf-8",
    analytics_pb2.REPORT_FORMAT_JSON: "application/json",
    analytics_pb2.REPORT_FORMAT_CSV: "text/csv; charset=utf-8",
}

_TRADE_COLUMNS = (
    "position_id",
    "symbol",
    "side",
    "volume_lots",
    "open_time_ms",
    "close_time_ms",
    "entry_price",
    "exit_price",
    "gross_pnl",
    "commission",
    "net_pnl",
    "model_name",
    "model_version",
    "signal_id",
)


# --------------------------------------------------------------------------- inbound


def fill_of_report(report: execution_pb2.ExecutionReport) -> ReportedFill | None:
    """The fill an execution report carries; None for a report that is no fill.

    Raises ValueError for a fill report missing what the ledger needs (price, side,
    position): recording it wrongly would corrupt every figure after it.
    """
    volume = lots_from_proto(report.fill_volume)
    if volume <= 0:
        return None
    where = f"execution report {report.seq} (order {report.order_id!r})"
    if not report.HasField("fill_price") or report.fill_price.points <= 0:
        raise ValueError(f"{where} fills {volume} lots without a price")
    if report.side not in (common_pb2.SIDE_BUY, common_pb2.SIDE_SELL):
        raise ValueError(f"{where} fills without a side")
    if not report.position_id:
        raise ValueError(f"{where} fills without a position id")
    commission = money_from_proto(report.commission)
    return ReportedFill(
        seq=report.seq,
        account_id=report.account_id,
        order_id=report.order_id,
        position_id=report.position_id,
        symbol=report.symbol,
        side=Side(report.side),
        volume_lots=volume,
        price_points=report.fill_price.points,
        digits=report.fill_price.digits,
        # A cost either way: the paper broker reports it positive, MetaTrader negative.
        commission=-commission if commission < 0 else commission,
        time_ms=report.time_ms,
        model_name=report.model_name,
        model_version=report.model_version,
        signal_id=report.signal_id,
    )


def time_range(message: analytics_pb2.TimeRange) -> tuple[int, int | None]:
    """``(from_ms, to_ms)`` of a request's range; ``to_ms`` None means up to now.

    Raises InvalidArgument for a negative time, or an end not after the start.
    """
    start, end = message.from_time_ms, message.to_time_ms
    if start < 0 or end < 0:
        raise InvalidArgument(f"range times must be >= 0 (epoch ms), got {start} and {end}")
    if start and end and end <= start:
        raise InvalidArgument(
            f"range.to_time_ms ({end}) must be greater than range.from_time_ms ({start})"
        )
    return start, end or None


def resolution_ms(value: int) -> int | None:
    """The sampling period of a Timeframe; None for TIMEFRAME_UNSPECIFIED (every change)."""
    if value == common_pb2.TIMEFRAME_UNSPECIFIED:
        return None
    period = TIMEFRAME_MS.get(value)  # type: ignore[call-overload]
    if period is None:
        raise InvalidArgument(f"unknown resolution {value}; use a common.v1.Timeframe value")
    return int(period)


def check_format(value: int) -> None:
    """Raise InvalidArgument for a missing or unknown report format."""
    if value == analytics_pb2.REPORT_FORMAT_UNSPECIFIED:
        raise InvalidArgument("format is required, e.g. REPORT_FORMAT_HTML")
    if value not in CONTENT_TYPES:
        raise InvalidArgument(f"unknown report format {value}")


# --------------------------------------------------------------------------- outbound


def micros(amount: Decimal) -> int:
    """``amount`` in integer micro-units, rounded half-even."""
    return int((amount * _MICROS).to_integral_value(ROUND_HALF_EVEN))


def bps(fraction: float) -> int:
    """``fraction`` in integer basis points, rounded half-even."""
    return round(fraction * 10_000)


def performance_to_proto(result: LedgerResult, p: Performance) -> analytics_pb2.Performance:
    """The contract's Performance of a window's ledger and its :class:`Performance`.

    ``realized_pnl`` is net of commission, as the contract asks: what the window added
    to the balance (partial closes count when they happen, as the broker books them).
    ``unrealized_pnl`` is that of the positions open at the window's end.
    """
    currency, trades = p.currency, p.trades
    worst = p.max_drawdown
    return analytics_pb2.Performance(
        realized_pnl=money_to_proto(p.realized_pnl - p.commission, currency),
        unrealized_pnl=money_to_proto(sum_unrealized(result), currency),
        drawdown_bps=bps(p.drawdown_fraction),
        max_drawdown_bps=bps(
            0.0 if p.max_relative_drawdown is None else p.max_relative_drawdown.fraction
        ),
        max_drawdown=money_to_proto(Decimal(0) if worst is None else worst.amount, currency),
        sharpe=p.sharpe,
        win_rate_bps=bps(trades.win_rate),
        profit_factor=trades.profit_factor,
        trade_count=trades.count,
        winning_trades=trades.winning,
        losing_trades=trades.losing,
        gross_profit=money_to_proto(trades.gross_profit, currency),
        gross_loss=money_to_proto(trades.gross_loss, currency),
        commission=money_to_proto(p.commission, currency),
    )


def equity_curve_to_proto(
    result: LedgerResult, currency: str, period_ms: int | None
) -> analytics_pb2.EquityCurve:
    """The window's curve, one point per change or the last point of each period.

    Drawdown is measured at every point of the window before sampling, so a sampled
    point carries its true distance from the running peak.
    """
    curve = result.curve
    _, fractions = drawdown_series(curve.equity)
    keep = curve_points(curve, period_ms)
    return analytics_pb2.EquityCurve(
        currency=currency,
        time_ms=[curve.time_ms[k] for k in keep],
        balance_micros=[micros(curve.balance[k]) for k in keep],
        equity_micros=[micros(curve.equity[k]) for k in keep],
        drawdown_bps=[bps(float(fractions[k])) for k in keep],
    )


def model_performance_to_proto(window: Window, key: ModelKey) -> analytics_pb2.ModelPerformance:
    """The trading part of a model version's live performance.

    Analytics records fills, not predictions or signals yet, so ``predictions``,
    ``accuracy``, ``baseline_accuracy``, ``brier_score`` and ``signals`` stay 0 (nothing
    evaluated) rather than being guessed from trades; ``aliases`` and ``shadow`` need the
    registry's serving history and stay empty/false.
    """
    result = window.model_ledgers[key]
    performance = next(
        m.performance for m in window.analysis.models if (m.model_name, m.model_version) == key
    )
    return analytics_pb2.ModelPerformance(
        model_name=key[0],
        model_version=key[1],
        predictions=0,
        signals=0,
        trading=performance_to_proto(result, performance),
    )


def report_content(
    window: Window,
    report_format: int,
    *,
    include_models: bool,
    generated_time_ms: int,
    source: str,
) -> bytes:
    """The report of ``window`` in ``report_format`` (checked by :func:`check_format`).

    HTML is the self-contained page of :func:`~.report.render_report`; JSON holds the
    Performance, the equity curve (one point per change) and the trades; CSV the trades;
    Markdown the figures and the trades as tables.
    """
    analysis = window.analysis
    if not include_models:
        analysis = dataclasses.replace(analysis, models=())
    if report_format == analytics_pb2.REPORT_FORMAT_HTML:
        page = render_report(
            window.run, analysis, source=source, generated_time_ms=generated_time_ms
        )
        return page.encode("utf-8")
    if report_format == analytics_pb2.REPORT_FORMAT_CSV:
        return _trades_csv(analysis.ledger.trades).encode("utf-8")
    if report_format == analytics_pb2.REPORT_FORMAT_JSON:
        return _json_report(window, include_models, generated_time_ms, source).encode("utf-8")
    return _markdown_report(window, include_models, generated_time_ms, source).encode("utf-8")


def _json_report(window: Window, include_models: bool, generated_ms: int, source: str) -> str:
    result, overall = window.analysis.ledger, window.analysis.overall

    def message(proto: Any) -> Any:
        return json_format.MessageToDict(proto, always_print_fields_with_no_presence=True)

    document: dict[str, Any] = {
        "account_id": window.run.account.account_id,
        "currency": overall.currency,
        "from_time_ms": window.from_ms,
        "to_time_ms": window.to_ms or 0,
        "generated_time_ms": generated_ms,
        "source": source,
        "performance": message(performance_to_proto(result, overall)),
        "equity_curve": message(equity_curve_to_proto(result, overall.currency, None)),
        "trades": [_trade_record(t) for t in result.trades],
    }
    if include_models:
        document["models"] = [
            message(model_performance_to_proto(window, key)) for key in window.model_ledgers
        ]
    return json.dumps(document, indent=1) + "\n"


def _trades_csv(trades: Sequence[Trade]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=_TRADE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(_trade_record(t) for t in trades)
    return out.getvalue()


def _trade_record(trade: Trade) -> dict[str, Any]:
    return {
        "position_id": trade.position_id,
        "symbol": trade.symbol,
        "side": trade.side.name,
        "volume_lots": str(trade.volume_lots),
        "open_time_ms": trade.open_time_ms,
        "close_time_ms": trade.close_time_ms,
        "entry_price": str(trade.entry_price),
        "exit_price": str(trade.exit_price),
        "gross_pnl": str(trade.gross_pnl),
        "commission": str(trade.commission),
        "net_pnl": str(trade.net_pnl),
        "model_name": trade.model_name,
        "model_version": trade.model_version,
        "signal_id": trade.signal_id,
    }


def _markdown_report(window: Window, include_models: bool, generated_ms: int, source: str) -> str:
    overall = window.analysis.overall
    rows = [("overall", window.analysis.ledger, overall)]
    if include_models:
        rows += [
            (f"{m.model_name} {m.model_version}".strip(), window.model_ledgers[key], m.performance)
            for m in window.analysis.models
            for key in [(m.model_name, m.model_version)]
        ]
    lines = [
        "# quantmesh performance report",
        "",
        f"Account `{window.run.account.account_id}` ({overall.currency}), "
        f"{source}; generated at {generated_ms} ms UTC.",
        "",
        "| | trades | win rate | profit factor | realized (net) | unrealized | "
        "net PnL | max drawdown | Sharpe |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, result, p in rows:
        worst = p.max_relative_drawdown
        lines.append(
            f"| {label} | {p.trades.count} | {100 * p.trades.win_rate:.1f} % | "
            f"{p.trades.profit_factor:.2f} | {_cents(p.realized_pnl - p.commission)} | "
            f"{_cents(sum_unrealized(result))} | {_cents(p.net_pnl)} | "
            f"{0.0 if worst is None else 100 * worst.fraction:.2f} % | {p.sharpe:.2f} |"
        )
    lines += ["", "## Trades", "", "| " + " | ".join(_TRADE_COLUMNS) + " |"]
    lines.append("|" + "---|" * len(_TRADE_COLUMNS))
    for trade in window.analysis.ledger.trades:
        record = _trade_record(trade)
        lines.append("| " + " | ".join(str(record[c]) for c in _TRADE_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def _cents(amount: Decimal) -> str:
    return f"{amount.quantize(Decimal('0.01'), rounding=ROUND_HALF_EVEN):,}"

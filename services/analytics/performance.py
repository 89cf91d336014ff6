"""Performance of a ledger run: drawdown, Sharpe, trade statistics, and the same per model.

Definitions (the HTML report prints them next to the figures):

- **Trade**: one closed position. It **wins** when its net profit (after commission) is
  > 0, otherwise it loses (break-even counts as a loss). **Win rate** = winners / trades;
  **profit factor** = gross profit of winners / gross loss of losers (0 without trades,
  +inf with winners and no losers); **average win/loss** = mean net profit of winners /
  of losers; **expectancy** = mean net profit per trade.
- **Hit rate** of directional calls: share of trades where the market's mid moved the
  called way between entry and exit (:attr:`~.ledger.Trade.direction_hit`), so it
  judges the call, not spread and commission.
- **Drawdown** at a point: running peak of equity minus equity, as an amount and as a
  fraction of the peak. The maximum is reported with the times of its peak, its trough
  and its recovery (the first point back at the peak; none if it never came back).
- **Sharpe** (risk-free rate 0): mean / sample standard deviation of period returns of
  equity, times √(periods per year). ``sharpe`` uses daily returns of equity at the
  close of each FX trading day (17:00 New York, so the Sunday-evening open counts as
  Monday) annualised by √252, as ``analytics.v1.Performance.sharpe`` specifies;
  ``sharpe_hourly`` uses hourly returns (UTC hours that have a point) annualised by
  √(24·260). Returns run from the start balance to each period's last equity; fewer than
  two returns, or no variation, give 0.
- **Per model**: trades are grouped by the ``(model_name, model_version)`` of the fill
  that opened the position, and each group's fills are replayed through their own
  ledger with the account's start balance, as if the model had traded alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import Literal
from zoneinfo import ZoneInfo

import numpy as np

from quantmesh.services.analytics.ledger import (
    CONTRACT_SIZE,
    Conversion,
    EquityCurve,
    Fill,
    LedgerResult,
    Mark,
    Trade,
    conversion_from_marks,
    run_ledger,
)
from quantmesh.services.analytics.runs import Run

__all__ = [
    "DAILY_PERIODS_PER_YEAR",
    "HOURLY_PERIODS_PER_YEAR",
    "Analysis",
    "DrawdownEpisode",
    "ModelPerformance",
    "Performance",
    "TradeStats",
    "analyse",
    "drawdown_series",
    "max_drawdown",
    "model_performances",
    "performance",
    "period_returns",
    "sharpe_ratio",
    "trade_stats",
    "trading_day",
]

HOUR_MS = 3_600_000
DAILY_PERIODS_PER_YEAR = 252  # as the analytics contract states
HOURLY_PERIODS_PER_YEAR = 24 * 260  # 24 h × 5 days × 52 weeks: FX trades round the clock
_NEW_YORK = ZoneInfo("America/New_York")


@dataclass(frozen=True, slots=True)
class DrawdownEpisode:
    """A fall of equity from a peak: when it peaked, bottomed and (if) it recovered."""

    peak_time_ms: int
    trough_time_ms: int
    recovery_time_ms: int | None
    peak_equity: Decimal
    trough_equity: Decimal

    @property
    def amount(self) -> Decimal:
        """Peak minus trough, in the account currency."""
        return self.peak_equity - self.trough_equity

    @property
    def fraction(self) -> float:
        """``amount / peak`` (0 for a peak at or below zero)."""
        return float(self.amount / self.peak_equity) if self.peak_equity > 0 else 0.0


@dataclass(frozen=True, slots=True)
class TradeStats:
    """Statistics of closed trades; amounts net of commission, losses ≤ 0."""

    count: int
    winning: int
    losing: int
    win_rate: float
    gross_profit: Decimal
    gross_loss: Decimal  # positive
    profit_factor: float
    average_win: Decimal
    average_loss: Decimal  # ≤ 0
    expectancy: Decimal
    net_pnl: Decimal
    hits: int
    hit_rate: float


@dataclass(frozen=True, slots=True)
class Performance:
    """The performance of one account (or one model's share of it) over a run."""

    currency: str
    start_time_ms: int
    end_time_ms: int
    start_balance: Decimal
    balance: Decimal
    equity: Decimal
    realized_pnl: Decimal  # gross, partial closes included
    unrealized_pnl: Decimal
    commission: Decimal
    net_pnl: Decimal  # equity − start balance
    return_fraction: float
    drawdown: Decimal  # at the end
    drawdown_fraction: float
    max_drawdown: DrawdownEpisode | None  # largest amount
    max_relative_drawdown: DrawdownEpisode | None  # largest fraction of its peak
    sharpe: float  # daily, √252
    sharpe_hourly: float  # hourly, √(24·260)
    trading_days: int
    trades: TradeStats


@dataclass(frozen=True, slots=True)
class ModelPerformance:
    """The performance of the trades one model version opened."""

    model_name: str
    model_version: str
    performance: Performance


@dataclass(frozen=True, slots=True)
class Analysis:
    """Everything the report shows: the ledger, overall performance and per model."""

    ledger: LedgerResult
    overall: Performance
    models: tuple[ModelPerformance, ...]


def drawdown_series(equity: Sequence[Decimal]) -> tuple[list[Decimal], np.ndarray]:
    """Drawdown at each point: (amounts below the running peak, fractions of the peak)."""
    amounts: list[Decimal] = []
    fractions = np.zeros(len(equity))
    peak: Decimal | None = None
    for k, value in enumerate(equity):
        peak = value if peak is None or value > peak else peak
        amounts.append(peak - value)
        fractions[k] = float((peak - value) / peak) if peak > 0 else 0.0
    return amounts, fractions


def max_drawdown(
    curve: EquityCurve, *, by: Literal["amount", "fraction"] = "amount"
) -> DrawdownEpisode | None:
    """The largest drawdown of ``curve`` by amount or by fraction; None if it never fell.

    Ties keep the earliest episode.
    """
    best: tuple[float | Decimal, int, int] | None = None  # (size, peak index, trough index)
    peak = 0
    for k, value in enumerate(curve.equity):
        if value > curve.equity[peak]:
            peak = k
        fall = curve.equity[peak] - value
        if fall <= 0:
            continue
        size = fall if by == "amount" else float(fall / curve.equity[peak])
        if best is None or size > best[0]:
            best = (size, peak, k)
    if best is None:
        return None
    _, p, t = best
    later = range(t + 1, len(curve))
    recovery = next((k for k in later if curve.equity[k] >= curve.equity[p]), None)
    return DrawdownEpisode(
        peak_time_ms=curve.time_ms[p],
        trough_time_ms=curve.time_ms[t],
        recovery_time_ms=None if recovery is None else curve.time_ms[recovery],
        peak_equity=curve.equity[p],
        trough_equity=curve.equity[t],
    )


def trading_day(time_ms: int) -> int:
    """The FX trading day of ``time_ms`` as a proleptic ordinal; days end 17:00 New York."""
    return _trading_day_of_hour(time_ms // HOUR_MS)


@cache
def _trading_day_of_hour(hour: int) -> int:
    # New York's offset only changes on whole hours, so the hour decides the day.
    local = datetime.fromtimestamp(hour * 3600, UTC).astimezone(_NEW_YORK)
    return (local.replace(tzinfo=None) + timedelta(hours=7)).toordinal()


def period_returns(
    curve: EquityCurve, start_balance: Decimal, period_of: Callable[[int], int]
) -> np.ndarray:
    """Simple returns of equity between the last points of consecutive periods.

    The first return is from ``start_balance`` to the first period's last equity.
    ``period_of`` maps a time (ms) to its period; periods must not decrease.
    """
    closes: list[Decimal] = [start_balance]
    last_period: int | None = None
    for time_ms, value in zip(curve.time_ms, curve.equity, strict=True):
        period = period_of(time_ms)
        if period == last_period:
            closes[-1] = value
        else:
            closes.append(value)
            last_period = period
    levels = np.array([float(v) for v in closes])
    with np.errstate(divide="ignore", invalid="ignore"):
        returns = levels[1:] / levels[:-1] - 1.0
    finite: np.ndarray = returns[np.isfinite(returns)]  # a non-positive equity has no return
    return finite


def sharpe_ratio(returns: np.ndarray, periods_per_year: float) -> float:
    """``mean / std(ddof=1) · √periods_per_year``, risk-free 0; 0 if undefined."""
    if len(returns) < 2:
        return 0.0
    deviation = float(np.std(returns, ddof=1))
    if deviation == 0.0 or not math.isfinite(deviation):
        return 0.0
    return float(np.mean(returns)) / deviation * math.sqrt(periods_per_year)


def trade_stats(trades: Sequence[Trade]) -> TradeStats:
    """Statistics of ``trades`` as defined in the module docstring."""
    wins = [t.net_pnl for t in trades if t.net_pnl > 0]
    losses = [t.net_pnl for t in trades if t.net_pnl <= 0]
    gross_profit, gross_loss = sum(wins, Decimal(0)), -sum(losses, Decimal(0))
    if gross_loss > 0:
        profit_factor = float(gross_profit / gross_loss)
    else:
        profit_factor = math.inf if wins else 0.0
    hits = sum(t.direction_hit for t in trades)
    count = len(trades)
    net = gross_profit - gross_loss
    return TradeStats(
        count=count,
        winning=len(wins),
        losing=len(losses),
        win_rate=len(wins) / count if count else 0.0,
        gross_profit=gross_profit,
        gross_loss=gross_loss,
        profit_factor=profit_factor,
        average_win=gross_profit / len(wins) if wins else Decimal(0),
        average_loss=-gross_loss / len(losses) if losses else Decimal(0),
        expectancy=net / count if count else Decimal(0),
        net_pnl=net,
        hits=hits,
        hit_rate=hits / count if count else 0.0,
    )


def performance(result: LedgerResult, currency: str = "USD") -> Performance:
    """The :class:`Performance` of a ledger run (definitions in the module docstring)."""
    curve = result.curve
    amounts, fractions = drawdown_series(curve.equity)
    daily = period_returns(curve, result.start_balance, trading_day)
    hourly = period_returns(curve, result.start_balance, lambda t: t // HOUR_MS)
    start = result.start_balance
    return Performance(
        currency=currency,
        start_time_ms=curve.time_ms[0] if len(curve) else 0,
        end_time_ms=curve.time_ms[-1] if len(curve) else 0,
        start_balance=start,
        balance=result.balance,
        equity=result.equity,
        realized_pnl=result.realized,
        unrealized_pnl=result.unrealized,
        commission=result.commission,
        net_pnl=result.equity - start,
        return_fraction=float((result.equity - start) / start) if start > 0 else 0.0,
        drawdown=amounts[-1] if amounts else Decimal(0),
        drawdown_fraction=float(fractions[-1]) if len(fractions) else 0.0,
        max_drawdown=max_drawdown(curve, by="amount"),
        max_relative_drawdown=max_drawdown(curve, by="fraction"),
        sharpe=sharpe_ratio(daily, DAILY_PERIODS_PER_YEAR),
        sharpe_hourly=sharpe_ratio(hourly, HOURLY_PERIODS_PER_YEAR),
        trading_days=len(daily),
        trades=trade_stats(result.trades),
    )


def model_performances(
    fills: Iterable[Fill],
    marks: Sequence[Mark],
    *,
    start_balance: Decimal,
    currency: str = "USD",
    contract_size: Decimal = CONTRACT_SIZE,
    conversion: Conversion | None = None,
) -> tuple[ModelPerformance, ...]:
    """Performance of each ``(model_name, model_version)``, sorted by name and version.

    A position belongs to the model of the fill that opened it; its later fills follow it
    whatever their own metadata (a risk close carries none). Each model's fills run
    through a ledger of their own with ``start_balance`` and every mark.
    """
    conversion = conversion or conversion_from_marks(marks, currency)
    owner: dict[str, tuple[str, str]] = {}  # open position → model
    open_volume: dict[str, Decimal] = {}
    groups: dict[tuple[str, str], list[Fill]] = {}
    for fill in sorted(fills, key=lambda f: f.time_ms):
        if fill.opens and open_volume.get(fill.position_id, Decimal(0)) == 0:
            owner[fill.position_id] = (fill.model_name, fill.model_version)
        sign = 1 if fill.opens else -1
        open_volume[fill.position_id] = open_volume.get(fill.position_id, Decimal(0)) + (
            sign * fill.volume_lots
        )
        key = owner.get(fill.position_id, (fill.model_name, fill.model_version))
        groups.setdefault(key, []).append(fill)
    return tuple(
        ModelPerformance(
            name,
            version,
            performance(
                run_ledger(
                    group,
                    marks,
                    start_balance=start_balance,
                    contract_size=contract_size,
                    conversion=conversion,
                ),
                currency,
            ),
        )
        for (name, version), group in sorted(groups.items())
    )


def analyse(
    run: Run, *, contract_size: Decimal = CONTRACT_SIZE, conversion: Conversion | None = None
) -> Analysis:
    """Ledger, overall and per-model performance of ``run``.

    ``conversion`` defaults to :func:`~.ledger.conversion_from_marks` over the run's
    marks, which is the identity for symbols quoted in the account currency.
    """
    currency, start = run.account.currency, run.account.start_balance
    conversion = conversion or conversion_from_marks(run.marks, currency)
    ledger = run_ledger(
        run.fills,
        run.marks,
        start_balance=start,
        contract_size=contract_size,
        conversion=conversion,
    )
    models = model_performances(
        run.fills,
        run.marks,
        start_balance=start,
        currency=currency,
        contract_size=contract_size,
        conversion=conversion,
    )
    return Analysis(ledger, performance(ledger, currency), models)

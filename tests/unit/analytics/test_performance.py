"""Performance metrics: trade statistics, hit rate, drawdown and its dates, Sharpe, models."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal

import numpy as np
import pytest

from quantmesh.services.analytics.ledger import (
    EquityCurve,
    Fill,
    LedgerResult,
    Mark,
    Side,
    Trade,
)
from quantmesh.services.analytics.performance import (
    Analysis,
    analyse,
    drawdown_series,
    max_drawdown,
    model_performances,
    performance,
    period_returns,
    sharpe_ratio,
    trade_stats,
    trading_day,
)
from quantmesh.services.analytics.runs import demo_run

T0 = 1_500_000_000_000
HOUR = 3_600_000


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def trade(
    net: str,
    *,
    side: Side = Side.BUY,
    entry: int = 100_000,
    exit_: int = 100_000,
    marks: tuple[int, int] | None = None,
) -> Trade:
    """A one-lot EURUSD trade with net profit ``net`` (no commission)."""

    def at(mid: int) -> Mark:
        return Mark("EURUSD", T0, mid - 5, mid + 5, 5)

    return Trade(
        "p", "EURUSD", side, Decimal(1), 5, T0, T0 + HOUR, Decimal(entry) / 10**5,
        Decimal(exit_) / 10**5, Decimal(net), Decimal(0), "m", "1", "s",
        None if marks is None else at(marks[0]), None if marks is None else at(marks[1]),
    )  # fmt: skip


def curve(*equity: int, step: int = HOUR) -> EquityCurve:
    values = tuple(Decimal(v) for v in equity)
    return EquityCurve(tuple(T0 + k * step for k in range(len(equity))), values, values)


@pytest.fixture(scope="module")
def demo() -> Analysis:
    return analyse(demo_run())


def test_trade_stats_count_break_even_as_a_loss_and_report_net_averages() -> None:
    stats = trade_stats([trade("30"), trade("-10"), trade("-20"), trade("0")])
    assert (stats.count, stats.winning, stats.losing) == (4, 1, 3)
    assert stats.win_rate == 0.25
    assert (stats.gross_profit, stats.gross_loss) == (Decimal(30), Decimal(30))
    assert stats.profit_factor == 1.0
    assert stats.average_win == Decimal(30)
    assert stats.average_loss == Decimal(-10)
    assert stats.expectancy == Decimal(0)
    # expectancy = win rate · average win + loss rate · average loss
    assert stats.expectancy == Decimal("0.25") * 30 + Decimal("0.75") * stats.average_loss


def test_profit_factor_is_infinite_without_losers_and_zero_without_trades() -> None:
    assert trade_stats([trade("5"), trade("7")]).profit_factor == math.inf
    empty = trade_stats([])
    assert (empty.profit_factor, empty.win_rate, empty.hit_rate, empty.count) == (0, 0, 0, 0)
    assert empty.expectancy == 0


def test_hit_rate_judges_the_call_on_mids_not_the_fills() -> None:
    # Bought at the ask, sold at the bid: a net loss, yet the mid moved up 3 points.
    spread_loss = trade("-7", entry=100_005, exit_=100_003, marks=(100_000, 100_003))
    short_right = trade("4", side=Side.SELL, marks=(100_010, 100_000))
    flat = trade("-1", marks=(100_000, 100_000))
    stats = trade_stats([spread_loss, short_right, flat])
    assert [t.direction_hit for t in (spread_loss, short_right, flat)] == [True, True, False]
    assert stats.hits == 2
    assert stats.win_rate == pytest.approx(1 / 3)
    assert stats.hit_rate == pytest.approx(2 / 3)


def test_hit_falls_back_to_fill_prices_without_marks() -> None:
    assert trade("1", entry=100_000, exit_=100_010).direction_hit
    assert not trade("1", side=Side.SELL, entry=100_000, exit_=100_010).direction_hit


def test_max_drawdown_reports_peak_trough_and_recovery_times() -> None:
    c = curve(100, 120, 90, 110, 125, 100)
    episode = max_drawdown(c)
    assert episode is not None
    assert episode.amount == Decimal(30)
    assert episode.fraction == pytest.approx(0.25)
    assert (episode.peak_time_ms, episode.trough_time_ms) == (c.time_ms[1], c.time_ms[2])
    assert episode.recovery_time_ms == c.time_ms[4]  # first point back at 120 or above


def test_largest_drawdown_by_amount_and_by_fraction_can_differ() -> None:
    c = curve(100, 50, 100, 1000, 900)
    by_amount, by_fraction = max_drawdown(c), max_drawdown(c, by="fraction")
    assert by_amount is not None
    assert by_fraction is not None
    assert (by_amount.amount, by_amount.recovery_time_ms) == (Decimal(100), None)
    assert by_fraction.fraction == 0.5
    assert by_fraction.recovery_time_ms == c.time_ms[2]


def test_a_curve_that_never_falls_has_no_drawdown() -> None:
    assert max_drawdown(curve(100, 100, 101, 130)) is None
    amounts, fractions = drawdown_series(curve(100, 100, 101, 130).equity)
    assert amounts == [0, 0, 0, 0]
    assert not fractions.any()


def test_drawdown_series_measures_from_the_running_peak() -> None:
    amounts, fractions = drawdown_series(curve(100, 80, 120, 90).equity)
    assert amounts == [0, 20, 0, 30]
    assert fractions == pytest.approx([0, 0.2, 0, 0.25])


def test_sharpe_is_mean_over_sample_std_times_root_periods_with_zero_risk_free() -> None:
    returns = np.array([0.01, -0.005, 0.002, 0.004])
    expected = returns.mean() / returns.std(ddof=1) * math.sqrt(252)
    assert sharpe_ratio(returns, 252) == pytest.approx(expected)


def test_sharpe_is_zero_with_fewer_than_two_returns_or_no_variation() -> None:
    assert sharpe_ratio(np.array([0.01]), 252) == 0
    assert sharpe_ratio(np.array([0.01, 0.01, 0.01]), 252) == 0


def test_fx_trading_days_end_at_five_pm_new_york_in_winter_and_summer() -> None:
    monday_winter = trading_day(ms("2017-01-09T10:00"))
    assert trading_day(ms("2017-01-08T22:00")) == monday_winter  # Sunday open, EST
    assert trading_day(ms("2017-01-09T21:59")) == monday_winter  # 16:59 New York
    assert trading_day(ms("2017-01-09T22:00")) == monday_winter + 1
    monday_summer = trading_day(ms("2017-07-10T10:00"))
    assert trading_day(ms("2017-07-09T21:00")) == monday_summer  # Sunday open, EDT
    assert trading_day(ms("2017-07-14T20:59")) == monday_summer + 4  # Friday's last bar


def test_period_returns_start_from_the_start_balance_and_use_each_periods_last_point() -> None:
    c = curve(100, 110, 121, 99, step=HOUR // 2)  # two points per hour
    returns = period_returns(c, Decimal(100), lambda t: (t - T0) // HOUR)
    assert returns == pytest.approx([0.10, 99 / 110 - 1])


def test_performance_sharpe_uses_daily_equity_closes_annualised_by_root_252() -> None:
    days = [ms(f"2017-03-{d:02d}T12:00") for d in (6, 7, 8, 9, 10)]  # Monday to Friday
    equity = tuple(Decimal(v) for v in (10_100, 10_050, 10_200, 10_180, 10_300))
    zero = Decimal(0)
    curve = EquityCurve(tuple(days), equity, equity)
    result = LedgerResult(Decimal(10_000), curve, (), (), zero, zero, zero)
    levels = np.array([10_000, *map(float, equity)])
    returns = levels[1:] / levels[:-1] - 1
    p = performance(result)
    assert p.trading_days == 5
    assert p.sharpe == pytest.approx(returns.mean() / returns.std(ddof=1) * math.sqrt(252))
    assert p.sharpe_hourly == pytest.approx(
        returns.mean() / returns.std(ddof=1) * math.sqrt(24 * 260)
    )


def test_models_are_credited_with_the_positions_they_opened() -> None:
    def fill(position: str, side: Side, opens: bool, at: int, model: str) -> Fill:
        return Fill(f"{position}{at}", position, "EURUSD", side, Decimal(1), 100_000 + at,
                    5, Decimal("1"), T0 + at, opens, model, "1" if model else "", "")  # fmt: skip

    fills = [
        fill("a", Side.BUY, True, 0, "alpha"),
        fill("b", Side.SELL, True, 0, "beta"),
        fill("a", Side.SELL, False, 50, ""),  # a risk close carries no model
        fill("b", Side.BUY, False, 20, "alpha"),  # closed on alpha's signal, still beta's
    ]
    marks = [Mark("EURUSD", T0, 100_000, 100_000, 5)]
    models = model_performances(fills, marks, start_balance=Decimal(1_000))
    assert [(m.model_name, m.model_version) for m in models] == [("alpha", "1"), ("beta", "1")]
    alpha, beta = (m.performance for m in models)
    two = Decimal(2)  # each position paid 1 on entry and 1 on exit
    assert (alpha.trades.count, alpha.realized_pnl, alpha.commission) == (1, Decimal(50), two)
    assert (beta.trades.count, beta.realized_pnl, beta.commission) == (1, Decimal(-20), two)


def test_per_model_figures_add_up_to_the_accounts(demo: Analysis) -> None:
    overall, models = demo.overall, [m.performance for m in demo.models]
    assert [(m.model_name, m.model_version) for m in demo.models] == [
        ("ema-cross", "10-30"),
        ("ema-cross", "20-60"),
    ]
    assert sum(m.trades.count for m in models) == overall.trades.count
    for field in ("realized_pnl", "unrealized_pnl", "commission"):
        assert sum((getattr(m, field) for m in models), Decimal(0)) == getattr(overall, field)
    assert sum(m.trades.hits for m in models) == overall.trades.hits


def test_demo_performance_is_consistent(demo: Analysis) -> None:
    p = demo.overall
    assert p.equity == p.start_balance + p.realized_pnl + p.unrealized_pnl - p.commission
    assert p.net_pnl == p.equity - p.start_balance
    assert p.trading_days == 260  # 52 weeks of 5 FX days: Sunday evenings count as Monday
    assert p.max_drawdown is not None
    assert p.max_drawdown.peak_time_ms < p.max_drawdown.trough_time_ms
    assert 0 < p.max_drawdown.fraction < 1
    assert p.trades.count == p.trades.winning + p.trades.losing
    assert p.trades.net_pnl == sum((t.net_pnl for t in demo.ledger.trades), Decimal(0))
    assert math.isfinite(p.sharpe)
    assert math.isfinite(p.sharpe_hourly)

"""Windows of a recorded account: the whole history equals analyse(), ranges add up, caching."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import pytest

from quantmesh.runtime.errors import FailedPrecondition, NotFound
from quantmesh.services.analytics.core import (
    AccountAnalytics,
    analyse_window,
    curve_points,
    fills_by_model,
)
from quantmesh.services.analytics.ledger import EquityCurve, Fill, Mark, Side
from quantmesh.services.analytics.performance import analyse
from quantmesh.services.analytics.runs import Account, Run, demo_run
from quantmesh.services.analytics.store import AnalyticsStore, ReportedFill

HOUR = 3_600_000


@pytest.fixture(scope="module")
def run() -> Run:
    return demo_run()


def test_the_whole_history_is_exactly_analyse(run: Run) -> None:
    window = analyse_window(run)
    expected = analyse(run)
    assert window.analysis.overall == expected.overall
    assert window.analysis.models == expected.models
    assert window.analysis.ledger.curve == expected.ledger.curve
    assert window.run == run


def test_a_window_adds_up_to_the_equity_at_its_end(run: Run) -> None:
    start, end = run.marks[2_000].time_ms, run.marks[4_000].time_ms
    window = analyse_window(run, start, end)
    ledger, p = window.analysis.ledger, window.analysis.overall
    through_end = analyse(
        Run(
            run.account,
            tuple(f for f in run.fills if f.time_ms < end),
            tuple(m for m in run.marks if m.time_ms < end),
        )
    )
    assert ledger.equity == through_end.overall.equity == ledger.curve.equity[-1]
    assert p.net_pnl == ledger.equity - window.run.account.start_balance
    assert min(ledger.curve.time_ms) >= start
    assert max(ledger.curve.time_ms) < end
    closed_inside = [t for t in through_end.ledger.trades if t.close_time_ms >= start]
    assert ledger.trades == tuple(closed_inside)
    assert all(start <= f.time_ms < end for f in window.run.fills)
    assert ledger.open_positions == through_end.ledger.open_positions


def test_consecutive_windows_chain_their_equity(run: Run) -> None:
    middle = run.marks[3_000].time_ms
    first, second = analyse_window(run, 0, middle), analyse_window(run, middle)
    assert second.run.account.start_balance == first.analysis.ledger.equity
    total = first.analysis.overall.net_pnl + second.analysis.overall.net_pnl
    assert total == analyse(run).overall.net_pnl
    assert len(first.analysis.ledger.trades) + len(second.analysis.ledger.trades) == len(
        analyse(run).ledger.trades
    )


def test_a_window_lists_only_the_models_active_in_it(run: Run) -> None:
    fills = (
        Fill("a", "pa", "EURUSD", Side.BUY, Decimal("0.1"), 105_000, 5, Decimal(0), 1_000, True,
             "old", "1"),
        Fill("b", "pa", "EURUSD", Side.SELL, Decimal("0.1"), 105_100, 5, Decimal(0), 2_000, False),
        Fill("c", "pc", "EURUSD", Side.BUY, Decimal("0.1"), 105_000, 5, Decimal(0), 5_000, True,
             "new", "2"),
    )  # fmt: skip
    marks = (Mark("EURUSD", 500, 104_990, 105_000, 5),)
    window = analyse_window(Run(run.account, fills, marks), 3_000)
    assert [(m.model_name, m.model_version) for m in window.analysis.models] == [("new", "2")]
    assert window.known_models == {("old", "1"), ("new", "2")}


def test_a_position_belongs_to_the_model_that_opened_it() -> None:
    fills = [
        Fill("a", "p", "EURUSD", Side.BUY, Decimal("0.1"), 105_000, 5, Decimal(0), 1, True,
             "m", "1"),
        Fill("b", "p", "EURUSD", Side.SELL, Decimal("0.1"), 105_100, 5, Decimal(0), 2, False),
    ]  # fmt: skip
    assert fills_by_model(fills) == {("m", "1"): fills}


def test_curve_points_one_per_change_and_last_of_each_period() -> None:
    d = Decimal
    curve = EquityCurve(
        (0, HOUR // 2, HOUR, HOUR + 1, 3 * HOUR),
        (d(10), d(10), d(10), d(12), d(12)),
        (d(10), d(10), d(11), d(12), d(12)),
    )
    assert curve_points(curve, None) == [0, 2, 3, 4]
    assert curve_points(curve, HOUR) == [1, 3, 4]
    assert curve_points(EquityCurve((), (), ()), HOUR) == []


def reported(seq: int, position: str, side: Side, time_ms: int, points: int) -> ReportedFill:
    return ReportedFill(
        seq, "paper", f"O{seq}", position, "EURUSD", side, Decimal("0.10"), points, 5,
        Decimal("0.35"), time_ms, "model", str(seq),
    )  # fmt: skip


@pytest.fixture
def analytics(tmp_path: Path) -> AccountAnalytics:
    store = AnalyticsStore(tmp_path / "analytics.sqlite3")
    return AccountAnalytics(store, Account("paper", "USD", Decimal(10_000)))


def test_windows_are_cached_until_the_store_changes(analytics: AccountAnalytics) -> None:
    store = analytics.store
    store.record_reports([reported(0, "P1", Side.BUY, 1_000, 105_000)], through_seq=0)
    first = analytics.window()
    assert analytics.window() is first
    store.record_marks([Mark("EURUSD", 2_000, 105_100, 105_112, 5)], "EURUSD", through_seq=0)
    second = analytics.window()
    assert second is not first
    assert second.analysis.overall.unrealized_pnl == Decimal("10.00")  # 100 points x 0.1 lot


def test_an_unknown_account_or_model_is_not_found(analytics: AccountAnalytics) -> None:
    analytics.check_account("")
    analytics.check_account("paper")
    with pytest.raises(NotFound, match="unknown account"):
        analytics.check_account("live-7")
    with pytest.raises(NotFound, match="no trade"):
        analytics.models("nobody", "")


def test_model_versions_come_newest_first(analytics: AccountAnalytics) -> None:
    fills = [reported(k, f"P{k}", Side.BUY, 1_000 * k, 105_000) for k in (2, 10, 9)]
    analytics.store.record_reports(fills, through_seq=10)
    _, keys = analytics.models("model", "")
    assert keys == [("model", "10"), ("model", "9"), ("model", "2")]
    _, keys = analytics.models("model", "9")
    assert keys == [("model", "9")]


def test_inconsistent_fills_are_a_failed_precondition(analytics: AccountAnalytics) -> None:
    # A close larger than the position: the ledger refuses it, so no figure is served.
    analytics.store.record_reports(
        [
            reported(0, "P1", Side.BUY, 1_000, 105_000),
            ReportedFill(
                1, "paper", "O1", "P1", "EURUSD", Side.SELL, Decimal("0.50"), 105_000, 5,
                Decimal(0), 2_000,
            ),
        ],
        through_seq=1,
    )  # fmt: skip
    with pytest.raises(FailedPrecondition, match="exit exceeds volume"):
        analytics.window()


def test_a_year_of_marks_on_four_symbols_is_analysed_quickly(run: Run, tmp_path: Path) -> None:
    # The year of the demo (642 fills, two models) with hourly marks of four symbols, read
    # from the store as the service reads it. Measured at about 0.5 s; the bound is loose.
    store = AnalyticsStore(tmp_path / "analytics.sqlite3")
    marks = list(run.marks)
    for offset, (symbol, factor, digits) in enumerate(
        (("GBPUSD", 1.2, 5), ("USDJPY", 100.0, 3), ("EURGBP", 0.85, 5)), start=1
    ):
        marks += [
            Mark(symbol, m.time_ms - offset, int(m.bid_points * factor), int(m.ask_points * factor)
                 + 1, digits)
            for m in run.marks
        ]  # fmt: skip
    store.record_marks(marks, "EURGBP,EURUSD,GBPUSD,USDJPY", through_seq=len(marks))
    store.record_reports(
        [
            ReportedFill(k, run.account.account_id, f.order_id, f.position_id, f.symbol, f.side,
                         f.volume_lots, f.price_points, f.digits, f.commission, f.time_ms,
                         f.model_name, f.model_version, f.signal_id)
            for k, f in enumerate(run.fills)
        ],
        through_seq=len(run.fills),
    )  # fmt: skip
    analytics = AccountAnalytics(store, run.account)
    started = time.perf_counter()
    window = analytics.window()
    elapsed = time.perf_counter() - started
    assert len(window.run.marks) == 4 * len(run.marks)
    assert window.analysis.overall.trades == analyse(run).overall.trades
    assert elapsed < 5.0, f"a year took {elapsed:.2f} s"
    started = time.perf_counter()
    assert analytics.window() is window
    assert time.perf_counter() - started < 0.01

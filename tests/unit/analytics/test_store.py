"""Analytics store: cursors that resume exactly, atomic batches, and the opens flag."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest

from quantmesh.services.analytics.ledger import Mark, Side
from quantmesh.services.analytics.runs import Account
from quantmesh.services.analytics.store import AnalyticsStore, ReportedFill, default_store_path

T0 = 1_483_394_400_000  # 2017-01-02 22:00 UTC, on the hour
HOUR = 3_600_000
EURUSD = "EURUSD,GBPUSD"  # a tick stream key: the subscribed symbols


def reported(
    seq: int,
    position: str,
    side: Side,
    lots: str = "0.10",
    *,
    account: str = "paper",
    points: int = 105_000,
    time_ms: int | None = None,
) -> ReportedFill:
    return ReportedFill(
        seq=seq,
        account_id=account,
        order_id=f"O{seq}",
        position_id=position,
        symbol="EURUSD",
        side=side,
        volume_lots=Decimal(lots),
        price_points=points,
        digits=5,
        commission=Decimal("0.35"),
        time_ms=T0 + seq * 1_000 if time_ms is None else time_ms,
        model_name="m",
        model_version="1",
        signal_id=f"s{seq}",
    )


def mark(time_ms: int, bid: int = 105_000, symbol: str = "EURUSD") -> Mark:
    return Mark(symbol, time_ms, bid, bid + 12, 5)


@pytest.fixture
def store(tmp_path: Path) -> AnalyticsStore:
    return AnalyticsStore(tmp_path / "analytics.sqlite3")


def test_the_default_file_lives_under_quantmesh_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUANTMESH_HOME", str(tmp_path))
    assert default_store_path() == tmp_path / "analytics" / "analytics.sqlite3"
    assert AnalyticsStore().path.exists()


def test_the_database_runs_in_wal_mode(store: AnalyticsStore) -> None:
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_cursors_start_before_the_first_seq(store: AnalyticsStore) -> None:
    assert store.report_cursor() == -1
    assert store.tick_cursor(EURUSD) == -1
    assert store.fills("paper") == []
    assert store.marks() == []


def test_opens_follows_the_position_side_through_adds_partial_and_full_closes(
    store: AnalyticsStore,
) -> None:
    fills = [
        reported(0, "P1", Side.BUY),  # opens a long
        reported(1, "P1", Side.BUY, "0.05"),  # a second partial fill of the entry adds
        reported(2, "P2", Side.SELL),  # a short beside it: hedging, its own position
        reported(3, "P1", Side.SELL, "0.07"),  # reduces the long
        reported(4, "P1", Side.SELL, "0.08"),  # closes it
        reported(5, "P2", Side.BUY),  # closes the short (a stop or target)
    ]
    store.record_reports(fills, through_seq=5)
    recorded = store.fills("paper")
    assert [(f.position_id, f.side, f.opens) for f in recorded] == [
        ("P1", Side.BUY, True),
        ("P1", Side.BUY, True),
        ("P2", Side.SELL, True),
        ("P1", Side.SELL, False),
        ("P1", Side.SELL, False),
        ("P2", Side.BUY, False),
    ]
    assert recorded[1].volume_lots == Decimal("0.05")
    assert recorded[0].commission == Decimal("0.35")
    assert (recorded[0].model_name, recorded[0].model_version, recorded[0].signal_id) == (
        "m",
        "1",
        "s0",
    )


def test_position_state_carries_across_batches_and_restarts(tmp_path: Path) -> None:
    path = tmp_path / "analytics.sqlite3"
    AnalyticsStore(path).record_reports([reported(0, "P1", Side.SELL)], through_seq=0)
    reopened = AnalyticsStore(path)
    reopened.record_reports([reported(1, "P1", Side.BUY)], through_seq=1)
    assert [f.opens for f in reopened.fills("paper")] == [True, False]


def test_report_cursor_covers_reports_without_fills(store: AnalyticsStore) -> None:
    # Reports 0-2 are state changes (NEW, ACCEPTED, ...), 3 is the fill.
    store.record_reports([], through_seq=2)
    assert store.report_cursor() == 2
    store.record_reports([reported(3, "P1", Side.BUY)], through_seq=7)
    assert store.report_cursor() == 7
    assert len(store.fills("paper")) == 1


def test_a_replayed_batch_records_nothing_twice(store: AnalyticsStore) -> None:
    batch = [reported(0, "P1", Side.BUY), reported(1, "P1", Side.SELL)]
    assert len(store.record_reports(batch, through_seq=1)) == 2
    assert store.record_reports(batch, through_seq=1) == []
    # A batch straddling the cursor records only what is new.
    more = [*batch, reported(2, "P2", Side.BUY)]
    assert [f.order_id for f in store.record_reports(more, through_seq=2)] == ["O2"]
    assert [f.order_id for f in store.fills("paper")] == ["O0", "O1", "O2"]


def test_a_failing_batch_leaves_fills_positions_and_cursor_untouched(
    store: AnalyticsStore,
) -> None:
    store.record_reports([reported(0, "P1", Side.BUY)], through_seq=0)
    revision = store.revision
    bad = replace(reported(2, "P1", Side.SELL), price_points=0)  # no price: refused
    with pytest.raises(ValueError, match="bad price"):
        store.record_reports([reported(1, "P2", Side.SELL), bad], through_seq=2)
    assert store.report_cursor() == 0
    assert [f.order_id for f in store.fills("paper")] == ["O0"]
    assert store.revision == revision
    # P2 was rolled back with its batch: its first fill still opens it when resent.
    store.record_reports([reported(1, "P2", Side.SELL)], through_seq=2)
    assert [(f.position_id, f.opens) for f in store.fills("paper")] == [
        ("P1", True),
        ("P2", True),
    ]


def test_a_fill_beyond_the_batch_cursor_is_refused(store: AnalyticsStore) -> None:
    with pytest.raises(ValueError, match="after"):
        store.record_reports([reported(5, "P1", Side.BUY)], through_seq=4)
    assert store.report_cursor() == -1


def test_fills_are_read_back_per_account(store: AnalyticsStore) -> None:
    store.record_reports(
        [reported(0, "P1", Side.BUY), reported(1, "Q1", Side.BUY, account="other")],
        through_seq=1,
    )
    assert [f.position_id for f in store.fills("paper")] == ["P1"]
    assert [f.position_id for f in store.fills("other")] == ["Q1"]


def test_marks_keep_the_last_tick_of_each_hour(store: AnalyticsStore) -> None:
    store.record_marks([mark(T0 + 10), mark(T0 + HOUR - 1, 105_010)], EURUSD, through_seq=99)
    store.record_marks([mark(T0 + HOUR + 5, 105_020)], EURUSD, through_seq=150)
    assert [(m.time_ms, m.bid_points) for m in store.marks()] == [
        (T0 + HOUR - 1, 105_010),
        (T0 + HOUR + 5, 105_020),
    ]
    # The current hour's mark follows the latest tick: it is the final mark.
    store.record_marks([mark(T0 + HOUR + 900, 105_030)], EURUSD, through_seq=151)
    assert store.marks()[-1] == mark(T0 + HOUR + 900, 105_030)
    assert store.tick_cursor(EURUSD) == 151


def test_an_older_tick_never_moves_a_mark_back(store: AnalyticsStore) -> None:
    store.record_marks([mark(T0 + 500, 105_050)], EURUSD, through_seq=10)
    store.record_marks([mark(T0 + 100, 104_000)], "EURUSD", through_seq=0)  # another stream
    assert store.marks() == [mark(T0 + 500, 105_050)]


def test_a_tick_batch_at_or_below_the_cursor_is_skipped(store: AnalyticsStore) -> None:
    store.record_marks([mark(T0 + 500, 105_050)], EURUSD, through_seq=10)
    store.record_marks([mark(T0 + 900, 105_090)], EURUSD, through_seq=10)
    assert store.marks() == [mark(T0 + 500, 105_050)]


def test_the_tick_cursor_belongs_to_its_stream(store: AnalyticsStore) -> None:
    store.record_marks([mark(T0)], EURUSD, through_seq=41)
    assert store.tick_cursor(EURUSD) == 41
    assert store.tick_cursor("EURUSD") == -1  # seqs of another merged stream
    store.record_marks([mark(T0 + HOUR)], "EURUSD", through_seq=3)
    assert store.tick_cursor("EURUSD") == 3
    assert store.tick_cursor(EURUSD) == -1


def test_cursors_and_records_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "analytics.sqlite3"
    store = AnalyticsStore(path)
    store.record_reports([reported(0, "P1", Side.BUY)], through_seq=3)
    store.record_marks([mark(T0, 105_000, "GBPUSD"), mark(T0 + 7)], EURUSD, through_seq=17)
    store.close()
    reopened = AnalyticsStore(path)
    assert (reopened.report_cursor(), reopened.tick_cursor(EURUSD)) == (3, 17)
    assert [f.order_id for f in reopened.fills("paper")] == ["O0"]
    assert [m.symbol for m in reopened.marks()] == ["GBPUSD", "EURUSD"]


def test_a_snapshot_is_the_accounts_run_with_its_revision(store: AnalyticsStore) -> None:
    account = Account("paper", "USD", Decimal(10_000))
    before = store.revision
    store.record_reports([reported(0, "P1", Side.BUY)], through_seq=0)
    store.record_marks([mark(T0 + 10)], EURUSD, through_seq=0)
    revision, run = store.snapshot(account)
    assert revision == store.revision == before + 2
    assert run.account == account
    assert [f.order_id for f in run.fills] == ["O0"]
    assert run.marks == (mark(T0 + 10),)

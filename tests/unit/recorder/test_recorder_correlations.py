"""The currency graph's weights, from synthetic ticks in a real chDB store.

Three symbols' hourly closes are built so their correlations are known (GBPUSD moves
with EURUSD, USDCHF against it); each hour has a few ticks, and the hour the last tick
falls in is still forming: it must not count. The job's schedule (after writes, at most
every so often, once more at the end) is checked with the computation stubbed out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from quantmesh.services.recorder import job
from quantmesh.services.recorder.config import RecorderSettings
from quantmesh.services.recorder.correlations import weight_currency_graph
from quantmesh.services.recorder.job import MarketSymbols, TickProgress, keep_correlations
from quantmesh.storage.graph import GraphPort, SymbolEdge, open_graph
from quantmesh.storage.graph.correlation import latest_correlations
from quantmesh.storage.timeseries import TickRows
from quantmesh.storage.timeseries.chdb import ChdbTimeseries

H1 = 3_600_000
HOURS = 60  # complete bars; one more hour is forming
WINDOW = 20
CURRENCIES = {"EURUSD": ("EUR", "USD"), "GBPUSD": ("GBP", "USD"), "USDCHF": ("USD", "CHF")}


def hourly_closes() -> dict[str, np.ndarray]:
    """Points at each hour's close; the returns of EURUSD and GBPUSD nearly match."""
    rng = np.random.default_rng(3)
    base = rng.normal(0.0, 2e-3, HOURS)
    noise = rng.normal(0.0, 5e-4, HOURS)
    return {
        "EURUSD": np.round(110_000 * np.exp(np.cumsum(base))),
        "GBPUSD": np.round(127_000 * np.exp(np.cumsum(base + noise))),
        "USDCHF": np.round(90_000 * np.exp(np.cumsum(-base + noise))),
    }


def ticks_of(closes: dict[str, np.ndarray]) -> TickRows:
    """Three ticks an hour per symbol, the last at the close; then one wild forming hour."""
    names, times, bids = [], [], []
    for hour in range(HOURS + 1):
        for minute in (0, 30, 59):
            for name, close in sorted(closes.items()):
                last = hour == HOURS  # the forming hour: a price far off, never a close
                names.append(name)
                times.append(hour * H1 + minute * 60_000)
                bids.append(int(close[-1] * 2) if last else int(close[hour]) + (minute < 59))
    return TickRows.of(names, times, bids, [bid + 10 for bid in bids], [1.0] * len(bids))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ChdbTimeseries]:
    opened = ChdbTimeseries(tmp_path / "timeseries", url="chdb-test", setting="TEST")
    yield opened
    opened.close()


@pytest.fixture
def graph() -> Iterator[GraphPort]:
    opened = open_graph("memory://")
    yield opened
    opened.close()


def record(store: ChdbTimeseries, closes: dict[str, np.ndarray]) -> int:
    """Store the ticks as one stream; the time of the last one."""
    rows = ticks_of(closes)
    store.insert_ticks(",".join(sorted(closes)), 0, rows)
    return int(rows.time_msc[-1])


def test_the_complete_bars_weight_every_recorded_symbols_edge(
    store: ChdbTimeseries, graph: GraphPort
) -> None:
    closes = hourly_closes()
    end_ms = record(store, closes)
    graph.upsert_symbol(SymbolEdge("USDJPY", "USD", "JPY", {"EURUSD": -0.5}, 7))

    edges = weight_currency_graph(
        store, graph, sorted(closes), CURRENCIES, end_ms, timeframe_ms=H1, window=WINDOW
    )

    expected = latest_correlations(closes, WINDOW)
    assert expected[("EURUSD", "GBPUSD")] > 0.9
    assert expected[("EURUSD", "USDCHF")] < -0.9
    assert [edge.symbol for edge in edges] == ["EURUSD", "GBPUSD", "USDCHF"]
    for (first, second), r in expected.items():
        assert graph.correlation(first, second) == pytest.approx(r, abs=1e-9)
    eurusd = {edge.symbol: edge for edge in graph.symbols()}["EURUSD"]
    assert (eurusd.base, eurusd.quote, eurusd.updated_ms) == ("EUR", "USD", (HOURS - 1) * H1)
    usdjpy = {edge.symbol: edge for edge in graph.symbols()}["USDJPY"]
    assert (usdjpy.correlation, usdjpy.updated_ms) == ({"EURUSD": -0.5}, 7)  # not recorded


def test_one_symbol_has_its_edge_and_no_correlation(
    store: ChdbTimeseries, graph: GraphPort
) -> None:
    closes = {"EURUSD": hourly_closes()["EURUSD"]}
    end_ms = record(store, closes)

    edges = weight_currency_graph(
        store, graph, ["EURUSD"], CURRENCIES, end_ms, timeframe_ms=H1, window=WINDOW
    )

    assert edges == (SymbolEdge("EURUSD", "EUR", "USD", {}, (HOURS - 1) * H1),)
    assert graph.symbols() == edges


def test_too_few_bars_or_unknown_currencies_leave_the_weights_alone(
    store: ChdbTimeseries, graph: GraphPort
) -> None:
    closes = hourly_closes()
    end_ms = record(store, closes)
    currencies = {"EURUSD": ("EUR", "USD"), "USDCHF": ("USD", "chf")}

    edges = weight_currency_graph(
        store, graph, sorted(closes), currencies, end_ms, timeframe_ms=H1, window=HOURS
    )

    assert edges == ()  # HOURS bars give HOURS - 1 returns
    assert graph.symbols() == (SymbolEdge("EURUSD", "EUR", "USD"),)  # GBPUSD, USDCHF unknown


async def test_the_graph_is_weighted_after_writes_at_most_every_so_often(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[object] = []

    def weigh(*args: object, **kwargs: object) -> tuple[SymbolEdge, ...]:
        calls.append(args[4])  # end_ms: the latest tick stored
        return ()

    monkeypatch.setattr(job, "weight_currency_graph", weigh)
    settings = RecorderSettings(correlation_every_seconds=0.3)
    symbols = MarketSymbols(())
    symbols.recorded = ("EURUSD",)
    progress = TickProgress()
    shutdown = asyncio.Event()
    task = asyncio.create_task(
        keep_correlations(None, None, settings, symbols, progress, shutdown)  # type: ignore[arg-type]
    )
    for time_ms in (1_000, 2_000, 3_000):
        progress.note(TickRows.of(["EURUSD"], [time_ms], [100], [102], [1.0]))
        await asyncio.sleep(0.05)

    assert calls == [1_000]  # at once, then not again before the interval is over
    await asyncio.sleep(0.4)
    assert calls == [1_000, 3_000]
    await asyncio.sleep(0.4)
    assert calls == [1_000, 3_000]  # no write, no work

    progress.note(TickRows.of(["EURUSD"], [4_000], [100], [102], [1.0]))
    progress.ended.set()  # the replay's last ticks: weighed at once, then the task ends
    await asyncio.wait_for(task, timeout=1.0)
    assert calls == [1_000, 3_000, 4_000]

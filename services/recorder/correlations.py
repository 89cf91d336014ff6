"""The currency graph's weights: rolling correlations of the recorded symbols' bars.

The recorder holds every tick of the symbols it records, so it is where their
correlations can be computed without asking anyone: the port's bar rollup gives each
symbol's bars of one timeframe, :func:`~quantmesh.storage.graph.correlation.align_closes`
keeps the bar times they share, and
:func:`~quantmesh.storage.graph.correlation.update_correlations` writes the last
window's correlations onto the graph's symbol edges, where risk reads them for exposure.

Only complete bars count (those that closed before the last stored tick), so the
answer does not move with a bar still forming, and a replay weights the graph the same
on every run. A symbol the graph lacks gets its edge first, from its currencies as
market data reports them; one recorded symbol alone simply has no correlation to carry.
Synchronous: the store and the graph block, and the job runs this in a worker thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from quantmesh.runtime.errors import InvalidArgument
from quantmesh.runtime.logging import get_logger
from quantmesh.storage.graph import GraphPort, SymbolEdge
from quantmesh.storage.graph.correlation import align_closes, update_correlations
from quantmesh.storage.timeseries import Bars, TimeseriesPort

__all__ = ["LOOKBACK_FACTOR", "Currencies", "add_missing_edges", "weight_currency_graph"]

# Bars read per return of the window: markets close on weekends and holidays, and
# symbols share only the bars they all have, so the window's bars lie further back.
LOOKBACK_FACTOR = 3
Currencies = tuple[str, str]  # base, quote (MetaTrader's currency_base, currency_profit)

_log = get_logger("recorder")


def add_missing_edges(
    graph: GraphPort, symbols: Sequence[str], currencies: Mapping[str, Currencies]
) -> tuple[str, ...]:
    """Give each of ``symbols`` its edge if the graph lacks it; the symbols with one.

    A symbol whose currencies are unknown, or not currencies (an index, say), is left
    out, with a warning: the graph's edges join currencies.
    """
    known = {edge.symbol for edge in graph.symbols()}
    for name in symbols:
        if name in known:
            continue
        pair = currencies.get(name)
        if pair is None:
            _log.warning("no currencies known for the symbol; not in the graph", symbol=name)
            continue
        try:
            edge = SymbolEdge(name, *pair)
        except InvalidArgument as error:
            _log.warning("symbol not added to the currency graph", symbol=name, reason=str(error))
            continue
        graph.upsert_symbol(edge)
        known.add(name)
    return tuple(name for name in symbols if name in known)


def weight_currency_graph(
    store: TimeseriesPort,
    graph: GraphPort,
    symbols: Sequence[str],
    currencies: Mapping[str, Currencies],
    end_ms: int,
    *,
    timeframe_ms: int,
    window: int,
) -> tuple[SymbolEdge, ...]:
    """Weight the edges of ``symbols`` with their correlations; the edges written.

    ``end_ms`` is the time of the last stored tick: the bars read are the complete ones
    before it, ``window + 1`` of them shared by the symbols at least. Until the store
    holds that many, nothing is written (an empty result), and neither is anything for
    a symbol without bars in that span: its edge keeps the correlations it has.
    """
    if timeframe_ms <= 0 or window < 2:
        raise ValueError(f"need timeframe_ms > 0 and window >= 2, got {timeframe_ms}, {window}")
    in_graph = add_missing_edges(graph, symbols, currencies)
    to_ms = end_ms // timeframe_ms * timeframe_ms  # the bar still forming starts here
    from_ms = to_ms - timeframe_ms * (window + 1) * LOOKBACK_FACTOR
    bars: dict[str, Bars] = {}
    for name in in_graph:
        rolled = store.ohlc(name, timeframe_ms, from_ms, to_ms)
        if len(rolled):
            bars[name] = rolled
    times, closes = align_closes(bars)
    if len(times) < window + 1:
        _log.debug(
            "too few shared bars to correlate yet",
            symbols=sorted(bars),
            bars=len(times),
            needed=window + 1,
        )
        return ()
    return update_correlations(graph, closes, window=window, updated_ms=int(times[-1]))

"""Rolling correlation of log returns between symbols, the weights of the currency graph.

The correlation of two symbols over a window of ``N`` bars is Pearson's r of their last
``N`` log returns ``log(close[t] / close[t-1])``. Log returns are scale-free, so closes
may be prices or integer points (``round(price × 10**digits)``) alike. A series that does
not move in the window has no defined correlation: it is NaN here, and absent from the
graph's edges (ArangoDB, as JSON, has no NaN).

:func:`update_correlations` writes the latest window's correlations onto the graph's
edges; :func:`align_closes` first cuts several symbols' bars down to the times they
share, so every return pairs moves over the same interval. Pure numpy, no I/O besides
the graph calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np
import numpy.typing as npt

from quantmesh.runtime.errors import InvalidArgument
from quantmesh.storage.graph.port import GraphPort, SymbolEdge

__all__ = [
    "BarColumns",
    "align_closes",
    "latest_correlations",
    "log_returns",
    "rolling_correlation",
    "update_correlations",
    "update_from_bars",
]

FloatArray = npt.NDArray[np.float64]
DEFAULT_WINDOW = 100


class BarColumns(Protocol):
    """Bars as columns; ``quantmesh.services.marketdata.sources.Bars`` fits."""

    @property
    def time_ms(self) -> npt.NDArray[np.int64]: ...
    @property
    def close(self) -> npt.NDArray[np.int64] | FloatArray: ...


def log_returns(closes: npt.ArrayLike) -> FloatArray:
    """``log(close[t] / close[t-1])`` for ``t ≥ 1``; closes must be positive and finite."""
    values = np.asarray(closes, dtype=np.float64)
    if values.ndim != 1:
        raise InvalidArgument(f"closes must be one-dimensional, got shape {values.shape}")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise InvalidArgument("closes must be positive and finite")
    return np.diff(np.log(values))


def rolling_correlation(
    closes_a: npt.ArrayLike, closes_b: npt.ArrayLike, window: int = DEFAULT_WINDOW
) -> FloatArray:
    """Correlation of the two series' log returns over the ``window`` returns ending at each bar.

    The result has one value per close: index ``t`` uses the returns of bars
    ``t-window+1 … t``, so the first ``window`` values (too few returns) are NaN, as is
    any window in which either series is flat.
    """
    returns_a, returns_b = log_returns(closes_a), log_returns(closes_b)
    if len(returns_a) != len(returns_b):
        raise InvalidArgument(
            f"series of different lengths ({len(returns_a) + 1} and {len(returns_b) + 1} "
            "closes); align them first"
        )
    _check_window(window)
    result = np.full(len(returns_a) + 1, np.nan)
    if len(returns_a) >= window:
        result[window:] = _windowed_r(returns_a, returns_b, window)
    return result


def latest_correlations(
    closes: Mapping[str, npt.ArrayLike], window: int = DEFAULT_WINDOW
) -> dict[tuple[str, str], float]:
    """Correlation of every pair over the last ``window`` returns, keyed ``(a, b)`` with a < b.

    All series must have the same length (aligned bars) and at least ``window + 1``
    closes. Pairs whose correlation is undefined (a flat series) are left out.
    """
    _check_window(window)
    returns = {name: log_returns(series) for name, series in sorted(closes.items())}
    lengths = {len(r) for r in returns.values()}
    if len(lengths) > 1:
        raise InvalidArgument("series of different lengths; align them first (align_closes)")
    if lengths and (length := lengths.pop()) < window:
        raise InvalidArgument(f"{length + 1} closes are fewer than a window of {window} returns")
    names = list(returns)
    if not names:
        return {}
    tails = np.stack([returns[name][-window:] for name in names])
    centred = tails - tails.mean(axis=1, keepdims=True)
    covariance = centred @ centred.T
    scale = np.sqrt(np.diag(covariance))
    result: dict[tuple[str, str], float] = {}
    for i, first in enumerate(names):
        for j in range(i + 1, len(names)):
            if scale[i] > 0 and scale[j] > 0:
                r = covariance[i, j] / (scale[i] * scale[j])
                result[(first, names[j])] = float(np.clip(r, -1.0, 1.0))
    return result


def align_closes(
    bars: Mapping[str, BarColumns],
) -> tuple[npt.NDArray[np.int64], dict[str, FloatArray]]:
    """The bar times every symbol has, and each symbol's closes at those times."""
    if not bars:
        return np.empty(0, dtype=np.int64), {}
    shared: npt.NDArray[np.int64] | None = None
    for columns in bars.values():
        times = np.asarray(columns.time_ms, dtype=np.int64)
        shared = times if shared is None else np.intersect1d(shared, times)
    assert shared is not None
    closes = {}
    for name, columns in bars.items():
        times = np.asarray(columns.time_ms, dtype=np.int64)
        index = np.searchsorted(times, shared)
        closes[name] = np.asarray(columns.close, dtype=np.float64)[index]
    return shared, closes


def update_correlations(
    graph: GraphPort,
    closes: Mapping[str, npt.ArrayLike],
    *,
    window: int = DEFAULT_WINDOW,
    updated_ms: int,
) -> tuple[SymbolEdge, ...]:
    """Weight the graph's edges with the latest window's correlations; the edges written.

    Every symbol of ``closes`` must already be in the graph (its currencies come from
    there). Each one's correlation map is replaced by its correlations with the other
    symbols of ``closes``; symbols of the graph not in ``closes`` keep theirs.
    """
    edges = {edge.symbol: edge for edge in graph.symbols()}
    if missing := sorted(set(closes) - set(edges)):
        raise InvalidArgument(
            f"not in the currency graph: {', '.join(missing)}; upsert the symbols first"
        )
    pairs = latest_correlations(closes, window)
    written = []
    for name in sorted(closes):
        correlation: dict[str, float] = {}
        for (first, second), r in pairs.items():
            if name == first:
                correlation[second] = r
            elif name == second:
                correlation[first] = r
        edge = edges[name]
        updated = SymbolEdge(edge.symbol, edge.base, edge.quote, correlation, updated_ms)
        graph.upsert_symbol(updated)
        written.append(updated)
    return tuple(written)


def update_from_bars(
    graph: GraphPort, bars: Mapping[str, BarColumns], *, window: int = DEFAULT_WINDOW
) -> tuple[SymbolEdge, ...]:
    """:func:`update_correlations` from bars, aligned on their shared times.

    ``updated_ms`` is the time of the last shared bar, so a replay writes the same graph
    on every run.
    """
    times, closes = align_closes(bars)
    if len(times) == 0:
        return ()
    return update_correlations(graph, closes, window=window, updated_ms=int(times[-1]))


def _check_window(window: int) -> None:
    if window < 2:
        raise InvalidArgument(f"a correlation window needs at least 2 returns, got {window}")


def _windowed_r(returns_a: FloatArray, returns_b: FloatArray, window: int) -> FloatArray:
    windows_a = np.lib.stride_tricks.sliding_window_view(returns_a, window)
    windows_b = np.lib.stride_tricks.sliding_window_view(returns_b, window)
    centred_a = windows_a - windows_a.mean(axis=1, keepdims=True)
    centred_b = windows_b - windows_b.mean(axis=1, keepdims=True)
    covariance = np.einsum("ij,ij->i", centred_a, centred_b)
    variance = np.einsum("ij,ij->i", centred_a, centred_a) * np.einsum(
        "ij,ij->i", centred_b, centred_b
    )
    r = np.full(len(covariance), np.nan)
    defined = variance > 0
    r[defined] = covariance[defined] / np.sqrt(variance[defined])
    clipped: FloatArray = np.clip(r, -1.0, 1.0)
    return clipped

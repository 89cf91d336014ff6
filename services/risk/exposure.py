"""Per-currency exposure of an account, from execution's positions, for snapshots and logs.

Not a rule: nothing here approves or rejects a signal. The driver and the servicer read
an account's open positions from execution already; :func:`account_exposure` turns them
into :class:`~quantmesh.storage.graph.exposure.ExposureReport` (each position's legs at
its open price, converted into the account currency at the quotes risk holds), and
:func:`exposure_log_fields` into fields for a log line, e.g.
``exposure_EUR=110000 exposure_USD=-185000 …`` (account currency, net).

The symbols' currencies come from the specs risk sizes with, or from the currency graph's
edges when given (:meth:`~quantmesh.storage.graph.port.GraphPort.symbols`);
:func:`merge_symbol_edges` reconciles the two without losing what another writer (the
recorder's correlations) stored on an edge.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from quantmesh.common.v1 import common_pb2
from quantmesh.execution.v1 import execution_pb2
from quantmesh.runtime.errors import InvalidArgument
from quantmesh.services.execution.convert import lots_from_proto
from quantmesh.services.risk.sizing import Quotes, SymbolSpec, points_to_price, to_decimal
from quantmesh.storage.graph.exposure import ExposureReport, OpenPosition, Side, aggregate_exposure
from quantmesh.storage.graph.port import SymbolEdge

__all__ = [
    "account_exposure",
    "exposure_log_fields",
    "merge_symbol_edges",
    "open_positions",
    "symbol_edges",
]


def symbol_edges(symbols: Mapping[str, SymbolSpec]) -> tuple[SymbolEdge, ...]:
    """The currency graph's edges of risk's symbol specs (without correlations)."""
    return tuple(
        SymbolEdge(spec.name, spec.currency_base, spec.currency_profit)
        for _, spec in sorted(symbols.items())
    )


def merge_symbol_edges(
    ours: Iterable[SymbolEdge], stored: Iterable[SymbolEdge]
) -> tuple[tuple[SymbolEdge, ...], tuple[SymbolEdge, ...]]:
    """Risk's edges (``ours``, from its specs) merged into the graph's (``stored``).

    Returns the edges exposure uses (every stored symbol, and risk's), sorted by symbol,
    and those of risk's edges to write: a symbol the graph lacks, or whose currencies
    differ from risk's specs (risk sizes with its specs, so the graph must agree). An
    edge written or kept keeps the stored correlations and their time: upserting replaces
    an edge whole, and risk computes no correlations.
    """
    merged = {edge.symbol: edge for edge in stored}
    writes = []
    for edge in ours:
        current = merged.get(edge.symbol)
        if current is not None and (current.base, current.quote) == (edge.base, edge.quote):
            continue
        if current is not None:
            edge = SymbolEdge(
                edge.symbol,
                edge.base,
                edge.quote,
                correlation=current.correlation,
                updated_ms=current.updated_ms,
            )
        merged[edge.symbol] = edge
        writes.append(edge)
    return (
        tuple(merged[name] for name in sorted(merged)),
        tuple(sorted(writes, key=lambda edge: edge.symbol)),
    )


def open_positions(
    positions: Iterable[execution_pb2.Position], symbols: Mapping[str, SymbolSpec]
) -> list[OpenPosition]:
    """Execution's positions as exposure's: volume, contract size and open price.

    A position of a symbol risk has no spec for, or whose open price is not in the
    symbol's digits, raises InvalidArgument: an exposure that skipped it would understate
    the account's.
    """
    result = []
    for position in positions:
        spec = symbols.get(position.symbol)
        if spec is None:
            known = ", ".join(sorted(symbols)) or "none"
            raise InvalidArgument(
                f"position in {position.symbol}: no such symbol (risk has {known})"
            )
        price = position.open_price
        if price.digits != spec.digits:
            raise InvalidArgument(
                f"position in {position.symbol}: open price has {price.digits} digits, "
                f"the symbol {spec.digits}"
            )
        result.append(
            OpenPosition(
                symbol=position.symbol,
                side=Side.BUY if position.side == common_pb2.SIDE_BUY else Side.SELL,
                volume=lots_from_proto(position.volume),
                contract_size=to_decimal(spec.trade_contract_size),
                price=points_to_price(int(price.points), price.digits),
            )
        )
    return result


def account_exposure(
    positions: Iterable[execution_pb2.Position],
    symbols: Mapping[str, SymbolSpec],
    quotes: Quotes,
    currency: str,
    graph_symbols: Iterable[SymbolEdge] | None = None,
) -> ExposureReport:
    """Per-currency exposure of the account's open positions, in ``currency``.

    Raises
    ------
    InvalidArgument
        A position of an unknown symbol or with a malformed price.
    FailedPrecondition
        No quotes convert one of the currencies into ``currency``.
    """
    edges = tuple(graph_symbols) if graph_symbols is not None else symbol_edges(symbols)
    return aggregate_exposure(open_positions(positions, symbols), edges, quotes, currency)


def exposure_log_fields(report: ExposureReport) -> dict[str, str]:
    """``{"exposure_EUR": "110000", …}``: net exposure in the account currency, for a log."""
    return {f"exposure_{code}": amount for code, amount in report.summary().items()}

"""Fills into their decisions' provenance: which fill goes under which order and decision.

Risk records each decision's provenance (:mod:`quantmesh.storage.graph`) when it submits
the decision's orders, and execution's SubmitOrder answer names no fill: fills happen on
later ticks and reach execution's report stream, which analytics reads anyway. So
analytics completes the provenance: each fill report becomes a :class:`FillLink`, the
fill under its order under its decision, which :mod:`~quantmesh.services.analytics.graph`
attaches in the background (:meth:`~quantmesh.storage.graph.GraphPort.record_fills`).

- decision: the report's ``signal_id``, risk's decision id for the driver's orders. A
  stop or target the broker triggers inherits the opening order's signal id, so its fill
  joins the opening decision, under the stop order's own node;
- order: execution's ``order_id``;
- fill: the broker's deal id (``broker_deal_id``; the report's id if a broker gave none),
  with what execution reported of it: ``price``, ``volume`` (lots) and ``commission``
  as exact decimal text (as risk writes amounts), ``time_ms``, ``symbol``, ``side`` and
  ``position_id``.

A report that is no fill, or whose order no decision made (no signal id), links nothing.
Everything here is pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from quantmesh.execution.v1 import execution_pb2
from quantmesh.services.analytics.convert import fill_of_report
from quantmesh.services.analytics.ledger import price
from quantmesh.services.risk.sizing import fmt
from quantmesh.storage.graph import FillRecord
from quantmesh.storage.graph.port import Attribute

__all__ = ["FillLink", "by_order", "fill_link", "fill_links"]


@dataclass(frozen=True, slots=True)
class FillLink:
    """One fill to attach: its id and attributes, under ``order_id`` of ``decision_id``."""

    decision_id: str
    order_id: str
    fill_id: str
    attributes: Mapping[str, Attribute]

    @property
    def record(self) -> FillRecord:
        """The fill as the graph port takes it."""
        return self.fill_id, self.attributes


def fill_link(report: execution_pb2.ExecutionReport) -> FillLink | None:
    """The fill ``report`` carries, placed under its order and decision; None when the
    report is no fill or names no decision (see the module docstring).

    Raises ValueError for a fill report missing its price, side or position (as
    :func:`~quantmesh.services.analytics.convert.fill_of_report` does).
    """
    fill = fill_of_report(report)
    fill_id = report.broker_deal_id or report.report_id
    if fill is None or not report.signal_id or not report.order_id or not fill_id:
        return None
    commission = f"{fmt(fill.commission)} {report.commission.currency}".strip()
    attributes: dict[str, Attribute] = {
        "price": fmt(price(fill.price_points, fill.digits)),
        "volume": fmt(fill.volume_lots),
        "commission": commission,
        "time_ms": fill.time_ms,
        "symbol": fill.symbol,
        "side": fill.side.name,
        "position_id": fill.position_id,
    }
    return FillLink(report.signal_id, report.order_id, fill_id, attributes)


def fill_links(reports: Iterable[execution_pb2.ExecutionReport]) -> list[FillLink]:
    """The links of a batch of reports, in stream order (reports that link nothing left out)."""
    return [link for report in reports if (link := fill_link(report)) is not None]


def by_order(links: Iterable[FillLink]) -> list[list[FillLink]]:
    """The links grouped per decision and order, in the order first met: one write each."""
    grouped: dict[tuple[str, str], list[FillLink]] = {}
    for link in links:
        grouped.setdefault((link.decision_id, link.order_id), []).append(link)
    return list(grouped.values())

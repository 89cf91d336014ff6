"""The provenance of a risk decision, from the signal it evaluated and execution's answers.

:func:`signal_provenance` is pure: it turns what risk has in hand when a decision is
made (the signal, the decision message, execution's SubmitOrder answers) into the
:class:`~quantmesh.storage.graph.DecisionProvenance` the graph store records
(:mod:`quantmesh.services.risk.graph` writes it in the background). Node keys are
stable, so the same entity met by two decisions is one node, and a decision recorded
again (a batch handled again after a restart) replaces itself:

- ``risk_decision``: the signal id, the decision id of the audit log and of the traces
  (``quantmesh.decision.id``); ``dry-run:<account>:<signal id>`` for ``EvaluateSignal``,
  which trades nothing and must not replace the driver's record;
- ``signal``: the signal id;
- ``prediction``: ``<model>@<version>:<symbol>@<time_msc>``, e.g.
  ``eurusd-h1-direction@1:EURUSD@1483352850309``;
- ``model_version``: ``<model>@<version>`` (what ``decisions_of_model`` reads);
- ``feature_row``: ``<symbol>@<time_msc>``, e.g. ``EURUSD@1483352850309``;
- ``order``: execution's order id; ``fill``: a fill's (deal's) id.

Attributes say what each step was: the decision's ``verdict`` (``approved`` or
``rejected``), ``failed_rules``, ``reason``, ``volume``, ``risk_amount``, ``account_id``,
``dry_run`` and ``trace_id``; the signal's ``action``, ``confidence``, ``policy`` and
``trace_id``; the prediction's outputs (``output.probability_up``); each order's
``idempotency_key``, ``side``, ``volume``, ``state`` and ``outcome``.

A signal's ``time_msc`` is the market time of the feature row it was made on, so the
prediction and the feature row are named by it, independent of the streams' seqs (kept
as the ``seq`` attribute). Execution's SubmitOrder answer carries no deal ids (fills
happen on later ticks and reach execution's report stream), so the driver's orders have
no fill nodes unless an :class:`OrderAnswer` is given some.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from quantmesh.common.v1 import common_pb2
from quantmesh.decision.v1 import decision_pb2
from quantmesh.execution.v1 import execution_pb2
from quantmesh.observability.audit.decisions import trace_id_of
from quantmesh.risk.v1 import risk_pb2
from quantmesh.services.execution.convert import lots_from_proto, money_from_proto
from quantmesh.services.risk.sizing import fmt
from quantmesh.storage.graph import (
    DecisionProvenance,
    NodeKind,
    NodeRef,
    ProvenanceEdge,
    Relation,
    decision_provenance,
    model_version_key,
)
from quantmesh.storage.graph.port import Attribute

__all__ = [
    "OrderAnswer",
    "dry_run_decision_id",
    "feature_row_key",
    "prediction_key",
    "signal_provenance",
    "with_recorded_orders",
]

DRY_RUN_PREFIX = "dry-run"


@dataclass(frozen=True, slots=True)
class OrderAnswer:
    """What came of one order a decision asked for.

    Attributes
    ----------
    order:
        The order as execution answered it (with its ``order_id``), or as sent when
        execution refused it or already had the key (no ``order_id``: no node).
    outcome:
        What the driver made of the answer, as in the audit log (``submitted``, …).
    fill_ids:
        Ids of the order's fills (deals), when known.
    """

    order: execution_pb2.Order
    outcome: str
    fill_ids: tuple[str, ...] = ()


def feature_row_key(symbol: str, time_msc: int) -> str:
    """The feature row's node key: ``EURUSD@<time_msc>`` (one row per symbol and time)."""
    return f"{symbol}@{time_msc}"


def prediction_key(model_name: str, model_version: str, symbol: str, time_msc: int) -> str:
    """The prediction's node key: the model version and the feature row it predicted on."""
    model = model_version_key(model_name, model_version)
    return f"{model}:{feature_row_key(symbol, time_msc)}"


def dry_run_decision_id(account_id: str, signal_id: str) -> str:
    """A dry run's decision id: never the driver's (the signal id), whose orders it keeps."""
    return f"{DRY_RUN_PREFIX}:{account_id}:{signal_id}"


def _enum_name(name: str, prefix: str) -> str:
    return name.removeprefix(prefix)


def _set(attributes: dict[str, Attribute], name: str, value: str) -> None:
    """Set a text attribute only when it says something."""
    if value:
        attributes[name] = value


def _decision_attributes(
    decision: risk_pb2.RiskDecision, orders: Sequence[OrderAnswer], dry_run: bool
) -> dict[str, Attribute]:
    failed = [verdict.rule for verdict in decision.verdicts if not verdict.passed]
    attributes: dict[str, Attribute] = {
        "verdict": "approved" if decision.approved else "rejected",
        "approved": decision.approved,
        "failed_rules": ",".join(failed),
        "account_id": decision.account_id,
        "volume": fmt(lots_from_proto(decision.volume)),
        "time_msc": decision.time_msc,
        "dry_run": dry_run,
    }
    _set(attributes, "reason", decision.reason)
    if decision.HasField("risk_amount"):
        amount = decision.risk_amount
        attributes["risk_amount"] = f"{fmt(money_from_proto(amount))} {amount.currency}".strip()
    _set(attributes, "trace_id", trace_id_of(decision.trace.traceparent))
    # Orders execution has no id for (refused, or its key known from an earlier run):
    # no node, but the decision says what came of them.
    unrecorded = [
        f"{answer.order.idempotency_key}: {answer.outcome}"
        for answer in orders
        if not answer.order.order_id
    ]
    _set(attributes, "unrecorded_orders", "; ".join(unrecorded))
    return attributes


def _signal_attributes(signal: decision_pb2.Signal) -> dict[str, Attribute]:
    attributes: dict[str, Attribute] = {
        "symbol": signal.symbol,
        "action": _enum_name(decision_pb2.Action.Name(signal.action), "ACTION_"),
        "time_msc": signal.time_msc,
        "seq": signal.seq,
    }
    if math.isfinite(signal.confidence):
        attributes["confidence"] = signal.confidence
    _set(attributes, "policy", signal.policy)
    _set(attributes, "model_alias", signal.model_alias)
    _set(attributes, "reason", signal.reason)
    _set(attributes, "trace_id", trace_id_of(signal.trace.traceparent))
    return attributes


def _prediction_attributes(signal: decision_pb2.Signal) -> dict[str, Attribute]:
    attributes: dict[str, Attribute] = {
        "symbol": signal.symbol,
        "time_msc": signal.time_msc,
        "seq": signal.prediction_seq,
    }
    for name, value in zip(signal.output_names, signal.output_values, strict=False):
        if name and math.isfinite(value):
            attributes[f"output.{name}"] = value
    return attributes


def _order_attributes(answer: OrderAnswer) -> dict[str, Attribute]:
    order = answer.order
    attributes: dict[str, Attribute] = {
        "idempotency_key": order.idempotency_key,
        "symbol": order.symbol,
        "side": _enum_name(common_pb2.Side.Name(order.side), "SIDE_"),
        "volume": fmt(lots_from_proto(order.volume)),
        "state": _enum_name(execution_pb2.OrderState.Name(order.state), "ORDER_STATE_"),
        "outcome": answer.outcome,
    }
    _set(attributes, "position_id", order.position_id)
    _set(attributes, "broker_order_id", order.broker_order_id)
    _set(attributes, "reject_reason", order.reject_reason)
    return attributes


def signal_provenance(
    decision_id: str,
    signal: decision_pb2.Signal,
    decision: risk_pb2.RiskDecision,
    orders: Sequence[OrderAnswer] = (),
    *,
    dry_run: bool = False,
) -> DecisionProvenance:
    """The provenance of risk's ``decision`` on ``signal`` (see the module docstring).

    ``orders`` are execution's answers to the decision's orders (none for a rejection or
    a dry run); those without an order id get no node and are named in the decision's
    ``unrecorded_orders``.

    Raises
    ------
    InvalidArgument
        The signal names no model (name and version), or no signal id.
    """
    feature_row = feature_row_key(signal.symbol, signal.time_msc)
    prediction = prediction_key(
        signal.model_name, signal.model_version, signal.symbol, signal.time_msc
    )
    identified = [answer for answer in orders if answer.order.order_id]
    attributes: dict[NodeRef, Mapping[str, Attribute]] = {
        NodeRef(NodeKind.RISK_DECISION, decision_id): _decision_attributes(
            decision, orders, dry_run
        ),
        NodeRef(NodeKind.SIGNAL, signal.signal_id): _signal_attributes(signal),
        NodeRef(NodeKind.PREDICTION, prediction): _prediction_attributes(signal),
        NodeRef(NodeKind.FEATURE_ROW, feature_row): {
            "symbol": signal.symbol,
            "time_msc": signal.time_msc,
            "seq": signal.feature_seq,
        },
    }
    for answer in identified:
        attributes[NodeRef(NodeKind.ORDER, answer.order.order_id)] = _order_attributes(answer)
    fills: dict[str, list[str]] = {}
    for answer in identified:
        fills.setdefault(answer.order.order_id, []).extend(answer.fill_ids)
    return decision_provenance(
        decision_id,
        signal_id=signal.signal_id,
        prediction_id=prediction,
        model_name=signal.model_name,
        model_version=signal.model_version,
        feature_row=feature_row,
        orders=fills,
        attributes=attributes,
    )


def with_recorded_orders(
    provenance: DecisionProvenance, recorded: DecisionProvenance | None
) -> DecisionProvenance:
    """``provenance`` keeping the orders (and their fills) ``recorded`` already has.

    Recording a decision replaces its edges. When it is handled again and execution
    answers ALREADY_EXISTS (the first run's order stands, its id unknown to this one),
    the orders recorded the first time must stay linked to it.
    """
    if recorded is None:
        return provenance
    kept = [
        edge for edge in recorded.edges if edge.relation in (Relation.ORDERED, Relation.FILLED_BY)
    ]
    if not kept:
        return provenance
    nodes = {node.ref: node for node in provenance.nodes}
    for edge in kept:
        for end in (edge.source, edge.target):
            if end not in nodes:
                nodes[end] = recorded.node(end)
    edges: list[ProvenanceEdge] = [*provenance.edges, *kept]
    return DecisionProvenance(provenance.decision_id, tuple(nodes.values()), tuple(edges))

"""The graph port: the currency graph and the provenance of risk decisions.

**Currency graph.** Currencies are vertices; each symbol is an edge from its base to its
quote currency (``EURUSD``: EUR → USD), carrying the rolling correlation of its log
returns with the other symbols (:mod:`.correlation` computes them). Risk reads the edges
to split positions into per-currency exposure (:mod:`.exposure`) and to find conversion
chains between currencies.

**Provenance.** Each risk decision keeps how it came to be, as a small graph whose edges
point away from the decision::

    risk_decision ─evaluates→ signal ─from_prediction→ prediction ─predicted_by→ model_version
                                                        prediction ─from_features→ feature_row
    risk_decision ─ordered→ order ─filled_by→ fill

Nodes are entities shared by every decision that names them (a model version, a feature
row), so a node's attributes are the last ones recorded; edges belong to one decision
(:attr:`ProvenanceEdge` rows carry its id), so reading a decision back never wanders into
another one through a shared model version.

Two writers fill a decision in. Risk records it whole when its orders are submitted
(:meth:`GraphPort.record_provenance`); fills happen later, and analytics, which reads
them off execution's report stream, attaches each to its order
(:meth:`GraphPort.record_fills`). Each writer owns its edges: recording a decision again
replaces only what risk recorded before, never the fills attached, and fills may be
attached before risk records the decision (they wait, unread, until it does).

Both adapters (networkx, ArangoDB) speak these frozen dataclasses and are synchronous:
python-arango is a blocking client, and callers on an event loop run them in a worker
thread. Nothing here imports grpc.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from quantmesh.runtime.errors import InvalidArgument

__all__ = [
    "AttachedFills",
    "Attribute",
    "DecisionProvenance",
    "FillRecord",
    "GraphPort",
    "Neighbour",
    "NodeKind",
    "NodeRef",
    "ProvenanceEdge",
    "ProvenanceNode",
    "Relation",
    "SymbolEdge",
    "attached_fills",
    "decision_provenance",
    "model_version_key",
]

# Same rule as risk's AccountState: three upper-case letters (ISO 4217, and XAU/BTC alike).
CURRENCY = re.compile(r"[A-Z]{3}")
# Correlations come out of floating-point sums; a hair past ±1 is rounding, not data.
_CORRELATION_SLACK = 1e-9
Attribute = str | int | float | bool
# A fill as :meth:`GraphPort.record_fills` takes it: its id (the broker's deal id) and attributes.
FillRecord = tuple[str, Mapping[str, Attribute]]


@dataclass(frozen=True, slots=True)
class SymbolEdge:
    """One symbol of the currency graph: an edge ``base → quote``.

    Attributes
    ----------
    symbol:
        The symbol's name, e.g. ``EURUSD``.
    base, quote:
        Its currencies: one ``base`` costs ``price`` ``quote`` (MetaTrader's
        ``currency_base`` and ``currency_profit``).
    correlation:
        Rolling correlation of this symbol's log returns with other symbols', by symbol
        name, each in [-1, 1]. Pairs without a defined correlation (a flat series) are
        absent rather than NaN.
    updated_ms:
        UTC epoch ms of the last bar the correlations were computed from (0: never).
    """

    symbol: str
    base: str
    quote: str
    correlation: Mapping[str, float] = field(default_factory=dict)
    updated_ms: int = 0

    def __post_init__(self) -> None:
        if not self.symbol or not self.symbol.isprintable() or self.symbol != self.symbol.strip():
            raise InvalidArgument(f"symbol name must be printable and non-empty: {self.symbol!r}")
        for currency in (self.base, self.quote):
            if not CURRENCY.fullmatch(currency):
                raise InvalidArgument(
                    f"{self.symbol}: currencies are three upper-case letters, got {currency!r}"
                )
        if self.base == self.quote:
            raise InvalidArgument(f"{self.symbol}: base and quote are both {self.base}")
        if self.updated_ms < 0:
            raise InvalidArgument(f"{self.symbol}: updated_ms must not be negative")
        clean: dict[str, float] = {}
        for other, value in sorted(self.correlation.items()):
            value = float(value)
            if other == self.symbol:
                raise InvalidArgument(f"{self.symbol}: a symbol has no correlation with itself")
            if not math.isfinite(value) or abs(value) > 1 + _CORRELATION_SLACK:
                raise InvalidArgument(
                    f"{self.symbol}: correlation with {other} must be in [-1, 1], got {value}"
                )
            clean[other] = max(-1.0, min(1.0, value))
        object.__setattr__(self, "correlation", clean)

    def other(self, currency: str) -> str:
        """The currency at the other end of this edge from ``currency``."""
        if currency == self.base:
            return self.quote
        if currency == self.quote:
            return self.base
        raise InvalidArgument(f"{self.symbol} does not touch {currency}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the memory adapter's file and ArangoDB's document body)."""
        return {
            "symbol": self.symbol,
            "base": self.base,
            "quote": self.quote,
            "correlation": dict(self.correlation),
            "updated_ms": self.updated_ms,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SymbolEdge:
        return cls(
            symbol=str(data["symbol"]),
            base=str(data["base"]),
            quote=str(data["quote"]),
            correlation={str(k): float(v) for k, v in dict(data.get("correlation") or {}).items()},
            updated_ms=int(data.get("updated_ms") or 0),
        )


@dataclass(frozen=True, slots=True, order=True)
class Neighbour:
    """A currency one symbol away: ``currency`` is reached through ``symbol``."""

    currency: str
    symbol: str


class NodeKind(StrEnum):
    """What a provenance node is; ArangoDB keeps each kind in its own vertex collection."""

    RISK_DECISION = "risk_decision"
    SIGNAL = "signal"
    PREDICTION = "prediction"
    MODEL_VERSION = "model_version"
    FEATURE_ROW = "feature_row"
    ORDER = "order"
    FILL = "fill"


class Relation(StrEnum):
    """The edges :func:`decision_provenance` draws; other relation names are allowed."""

    EVALUATES = "evaluates"  # risk_decision → signal
    FROM_PREDICTION = "from_prediction"  # signal → prediction
    PREDICTED_BY = "predicted_by"  # prediction → model_version
    FROM_FEATURES = "from_features"  # prediction → feature_row
    ORDERED = "ordered"  # risk_decision → order
    FILLED_BY = "filled_by"  # order → fill


@dataclass(frozen=True, slots=True, order=True)
class NodeRef:
    """A node's identity: its kind and its key (e.g. a signal id)."""

    kind: NodeKind
    key: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", NodeKind(self.kind))
        if not self.key:
            raise InvalidArgument(f"a {self.kind} node needs a key")

    def __str__(self) -> str:
        return f"{self.kind}/{self.key}"


@dataclass(frozen=True, slots=True)
class ProvenanceNode:
    """A node and its attributes (JSON scalars: str, int, float, bool)."""

    ref: NodeRef
    attributes: Mapping[str, Attribute] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value in self.attributes.items():
            if not isinstance(value, str | int | float | bool):
                raise InvalidArgument(
                    f"{self.ref}: attribute {name} must be str, int, float or bool, "
                    f"got {type(value).__name__}"
                )
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidArgument(f"{self.ref}: attribute {name} is not finite")
        object.__setattr__(self, "attributes", dict(sorted(self.attributes.items())))


@dataclass(frozen=True, slots=True, order=True)
class ProvenanceEdge:
    """``source`` led to ``target`` in the way ``relation`` names."""

    source: NodeRef
    target: NodeRef
    relation: str

    def __post_init__(self) -> None:
        if not self.relation:
            raise InvalidArgument(f"edge {self.source} → {self.target} needs a relation")
        object.__setattr__(self, "relation", str(self.relation))


@dataclass(frozen=True, slots=True)
class DecisionProvenance:
    """The provenance graph of one risk decision.

    The decision's own node (``risk_decision/<decision_id>``) is required; every other
    node must be an end of some edge. Nodes and edges are kept sorted, so two records
    of the same graph compare equal whatever order they were built in.
    """

    decision_id: str
    nodes: tuple[ProvenanceNode, ...]
    edges: tuple[ProvenanceEdge, ...] = ()

    def __post_init__(self) -> None:
        if not self.decision_id:
            raise InvalidArgument("decision_id is required")
        by_ref: dict[NodeRef, ProvenanceNode] = {}
        for node in self.nodes:
            if node.ref in by_ref:
                raise InvalidArgument(f"{self.decision_id}: node {node.ref} appears twice")
            by_ref[node.ref] = node
        if self.root not in by_ref:
            raise InvalidArgument(f"{self.decision_id}: the provenance lacks its node {self.root}")
        linked = {self.root}
        for edge in self.edges:
            for end in (edge.source, edge.target):
                if end not in by_ref:
                    raise InvalidArgument(f"{self.decision_id}: edge names unknown node {end}")
                linked.add(end)
        if isolated := sorted(set(by_ref) - linked):
            names = ", ".join(map(str, isolated))
            raise InvalidArgument(f"{self.decision_id}: nodes on no edge: {names}")
        object.__setattr__(self, "nodes", tuple(sorted(self.nodes, key=lambda n: n.ref)))
        object.__setattr__(self, "edges", tuple(sorted(set(self.edges))))

    @property
    def root(self) -> NodeRef:
        return NodeRef(NodeKind.RISK_DECISION, self.decision_id)

    def node(self, ref: NodeRef) -> ProvenanceNode:
        """The node ``ref``; KeyError if absent."""
        for node in self.nodes:
            if node.ref == ref:
                return node
        raise KeyError(str(ref))

    def to_dict(self) -> dict[str, Any]:
        """The graph as JSON-ready dicts: ``{"decision_id", "nodes": [...], "edges": [...]}``."""
        return {
            "decision_id": self.decision_id,
            "nodes": [
                {"kind": str(n.ref.kind), "key": n.ref.key, "attributes": dict(n.attributes)}
                for n in self.nodes
            ],
            "edges": [
                {
                    "source": {"kind": str(e.source.kind), "key": e.source.key},
                    "target": {"kind": str(e.target.kind), "key": e.target.key},
                    "relation": e.relation,
                }
                for e in self.edges
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DecisionProvenance:
        def ref(item: Mapping[str, Any]) -> NodeRef:
            return NodeRef(NodeKind(item["kind"]), str(item["key"]))

        return cls(
            decision_id=str(data["decision_id"]),
            nodes=tuple(
                ProvenanceNode(ref(n), dict(n.get("attributes") or {})) for n in data["nodes"]
            ),
            edges=tuple(
                ProvenanceEdge(ref(e["source"]), ref(e["target"]), str(e["relation"]))
                for e in data["edges"]
            ),
        )


def model_version_key(name: str, version: str) -> str:
    """The key of a model version's node: ``name@version`` (what decisions_of_model reads)."""
    if not name or not version:
        raise InvalidArgument("a model version needs a name and a version")
    return f"{name}@{version}"


def decision_provenance(
    decision_id: str,
    *,
    signal_id: str,
    prediction_id: str,
    model_name: str,
    model_version: str,
    feature_row: str,
    orders: Mapping[str, Iterable[str]] | None = None,
    attributes: Mapping[NodeRef, Mapping[str, Attribute]] | None = None,
) -> DecisionProvenance:
    """The usual provenance of one decision, with the edges of the module docstring.

    Parameters
    ----------
    decision_id, signal_id, prediction_id:
        Ids of the risk decision, the signal it evaluated and the prediction behind it.
    model_name, model_version:
        The model version that made the prediction (node key :func:`model_version_key`).
    feature_row:
        Key of the feature row the prediction was computed from (e.g. ``EURUSD@<time_ms>``).
    orders:
        Order id → its fill ids, for an approved decision (none for a rejected one).
    attributes:
        Attributes of any node, by its ref.
    """
    extra = attributes or {}
    decision = NodeRef(NodeKind.RISK_DECISION, decision_id)
    signal = NodeRef(NodeKind.SIGNAL, signal_id)
    prediction = NodeRef(NodeKind.PREDICTION, prediction_id)
    model = NodeRef(NodeKind.MODEL_VERSION, model_version_key(model_name, model_version))
    features = NodeRef(NodeKind.FEATURE_ROW, feature_row)
    edges = [
        ProvenanceEdge(decision, signal, Relation.EVALUATES),
        ProvenanceEdge(signal, prediction, Relation.FROM_PREDICTION),
        ProvenanceEdge(prediction, model, Relation.PREDICTED_BY),
        ProvenanceEdge(prediction, features, Relation.FROM_FEATURES),
    ]
    refs = [decision, signal, prediction, model, features]
    for order_id, fill_ids in (orders or {}).items():
        order = NodeRef(NodeKind.ORDER, order_id)
        refs.append(order)
        edges.append(ProvenanceEdge(decision, order, Relation.ORDERED))
        for fill_id in fill_ids:
            fill = NodeRef(NodeKind.FILL, fill_id)
            refs.append(fill)
            edges.append(ProvenanceEdge(order, fill, Relation.FILLED_BY))
    model_attributes: dict[str, Attribute] = {"name": model_name, "version": model_version}
    nodes = [
        ProvenanceNode(ref, {**(model_attributes if ref == model else {}), **extra.get(ref, {})})
        for ref in refs
    ]
    return DecisionProvenance(decision_id, tuple(nodes), tuple(edges))


@dataclass(frozen=True, slots=True)
class AttachedFills:
    """What :meth:`GraphPort.record_fills` writes, checked once for both adapters.

    ``order`` is the order's node; ``fills`` the fill nodes (the last of a repeated id
    wins); ``edges`` the decision → order edge and an order → fill edge per fill.
    """

    decision_id: str
    order: NodeRef
    fills: tuple[ProvenanceNode, ...]
    edges: tuple[ProvenanceEdge, ...]


def attached_fills(decision_id: str, order_id: str, fills: Iterable[FillRecord]) -> AttachedFills:
    """The nodes and edges that attach ``fills`` to ``order_id`` under ``decision_id``.

    Raises
    ------
    InvalidArgument
        An empty id, or an attribute that is no JSON scalar (or not finite).
    """
    if not decision_id:
        raise InvalidArgument("decision_id is required")
    decision = NodeRef(NodeKind.RISK_DECISION, decision_id)
    order = NodeRef(NodeKind.ORDER, order_id)
    by_id = {fill_id: attributes for fill_id, attributes in fills}
    nodes = tuple(
        ProvenanceNode(NodeRef(NodeKind.FILL, fill_id), attributes)
        for fill_id, attributes in sorted(by_id.items(), key=lambda item: item[0])
    )
    edges = [ProvenanceEdge(order, node.ref, Relation.FILLED_BY) for node in nodes]
    if edges:
        edges.append(ProvenanceEdge(decision, order, Relation.ORDERED))
    return AttachedFills(decision_id, order, nodes, tuple(sorted(edges)))


class GraphPort(Protocol):
    """The currency graph and decision provenance: networkx or ArangoDB."""

    url: str  # as configured, password hidden

    # -- currency graph ---------------------------------------------------------------

    def upsert_symbol(self, edge: SymbolEdge) -> None:
        """Add the symbol, or replace it whole (currencies, correlations, time)."""
        ...

    def symbols(self) -> tuple[SymbolEdge, ...]:
        """Every symbol, sorted by name."""
        ...

    def correlation(self, symbol_a: str, symbol_b: str) -> float | None:
        """The rolling correlation of two symbols, or None when unknown.

        Symmetric: each edge keeps its own view of the pair, and the more recently
        updated one answers (``symbol_a``'s on a tie). A known symbol with itself is 1.
        """
        ...

    def neighbours(self, currency: str) -> tuple[Neighbour, ...]:
        """Currencies one symbol away from ``currency``, sorted; empty for an unknown one."""
        ...

    # -- provenance -------------------------------------------------------------------

    def record_provenance(self, provenance: DecisionProvenance) -> None:
        """Store a decision's provenance (risk's record of it).

        Recording it again replaces the edges recorded before, but not the fills
        :meth:`record_fills` attached: those stay, with the decision → order edges that
        lead to them, whatever the new record says (a broker's stop order is in no
        record of risk's, and a fill that happened stays so).
        """
        ...

    def record_fills(self, decision_id: str, order_id: str, fills: Sequence[FillRecord]) -> None:
        """Attach ``fills`` (id, attributes) to the order ``order_id`` of ``decision_id``.

        Draws ``decision → order`` and ``order → fill`` edges of the decision and stores
        each fill's attributes; an order node that exists keeps its attributes (risk's),
        a missing one is created bare. Idempotent: attaching the same fills again
        changes nothing. A decision not recorded yet is no error: the fills are kept,
        :meth:`provenance` answers None until risk records the decision, and then
        includes them. No fills, nothing attached.
        """
        ...

    def provenance(self, decision_id: str) -> DecisionProvenance | None:
        """The provenance recorded for ``decision_id``, or None."""
        ...

    def decisions_of_model(self, name: str, version: str) -> tuple[str, ...]:
        """Ids of the decisions whose provenance names this model version, sorted."""
        ...

    def close(self) -> None: ...


def resolve_correlation(edge_a: SymbolEdge | None, edge_b: SymbolEdge | None) -> float | None:
    """The answer of :meth:`GraphPort.correlation` from the two edges, shared by adapters."""
    if edge_a is None or edge_b is None:
        return None
    if edge_a.symbol == edge_b.symbol:
        return 1.0
    from_a = edge_a.correlation.get(edge_b.symbol)
    from_b = edge_b.correlation.get(edge_a.symbol)
    if from_a is None:
        return from_b
    if from_b is None or edge_a.updated_ms >= edge_b.updated_ms:
        return from_a
    return from_b

"""The embedded graph: networkx in the process, optionally journalled to a file.

Two ``networkx.MultiDiGraph`` hold the port's two graphs:

- the currency graph: currencies as nodes, one edge per symbol from base to quote,
  keyed by the symbol's name, carrying its :class:`~.port.SymbolEdge`;
- provenance: :class:`~.port.NodeRef` nodes with their attributes, and edges keyed by
  ``(decision_id, relation)``, so the same two nodes linked by two decisions stay two
  edges and each decision reads back only its own. Beside the graph, each decision's
  edges are kept in two sets, risk's record and the fills attached, so that recording
  the decision again replaces only the first.

``memory://`` keeps everything in the process. ``file:///var/graph.jsonl`` also appends
every write to a journal, one JSON document per line (``{"symbol": …}``,
``{"provenance": …}`` or ``{"fills": …}``), and replays it when opened. Appending costs
one short write per call whatever the size of the graph (attaching fills already
attached writes nothing); opening rewrites the journal compacted (the last record of
each symbol and decision, and the fills of each order) through a temporary file and an
atomic rename. A write is flushed to the OS before the call returns, so a process crash
loses nothing (an OS crash may lose the last writes); a half-written last line, the
trace of a crash mid-write, is dropped on replay with a warning.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import networkx as nx  # type: ignore[import-untyped]  # networkx ships no py.typed

from quantmesh.runtime.logging import get_logger
from quantmesh.storage.graph.port import (
    AttachedFills,
    DecisionProvenance,
    FillRecord,
    Neighbour,
    NodeKind,
    NodeRef,
    ProvenanceEdge,
    ProvenanceNode,
    Relation,
    SymbolEdge,
    attached_fills,
    model_version_key,
    resolve_correlation,
)
from quantmesh.storage.urls import StoreConfigError, StoreUnavailableError

__all__ = ["NetworkxGraph"]

_log = get_logger("storage.graph")

# An edge of one decision: (source, target, relation).
_Link = tuple[NodeRef, NodeRef, str]


class NetworkxGraph:
    """The graph port in process memory (see the module docstring).

    Parameters
    ----------
    journal:
        File to journal writes to and replay from; None keeps nothing.
    url:
        The URL as configured, for messages.
    setting:
        The setting that named the URL, for messages about a damaged journal.
    """

    def __init__(
        self, journal: Path | None = None, *, url: str = "memory://", setting: str = ""
    ) -> None:
        self.url = url
        self._setting = setting or "the graph URL"
        self._lock = threading.Lock()
        self._currencies = nx.MultiDiGraph()
        self._symbols: dict[str, SymbolEdge] = {}
        self._provenance = nx.MultiDiGraph()
        # decision id → the edges risk recorded; present once recorded.
        self._decisions: dict[str, set[_Link]] = {}
        # decision id → the edges record_fills drew, whether or not it is recorded yet.
        self._attached: dict[str, set[_Link]] = {}
        self._journal: TextIO | None = None
        self._journal_lock: TextIO | None = None
        self._closed = False
        if journal is not None:
            self._journal_lock = self._lock_journal(journal)
            self._replay(journal)
            self._compact(journal)
            self._journal = journal.open("a", encoding="utf-8")

    # -- currency graph ---------------------------------------------------------------

    def upsert_symbol(self, edge: SymbolEdge) -> None:
        with self._lock:
            self._append({"symbol": edge.to_dict()})
            self._put_symbol(edge)

    def symbols(self) -> tuple[SymbolEdge, ...]:
        with self._lock:
            return tuple(self._symbols[name] for name in sorted(self._symbols))

    def correlation(self, symbol_a: str, symbol_b: str) -> float | None:
        with self._lock:
            return resolve_correlation(self._symbols.get(symbol_a), self._symbols.get(symbol_b))

    def neighbours(self, currency: str) -> tuple[Neighbour, ...]:
        with self._lock:
            if currency not in self._currencies:
                return ()
            found = {
                Neighbour(other, symbol)
                for _, other, symbol in self._currencies.out_edges(currency, keys=True)
            }
            found |= {
                Neighbour(other, symbol)
                for other, _, symbol in self._currencies.in_edges(currency, keys=True)
            }
            return tuple(sorted(found))

    # -- provenance -------------------------------------------------------------------

    def record_provenance(self, provenance: DecisionProvenance) -> None:
        with self._lock:
            self._append({"provenance": provenance.to_dict()})
            self._put_provenance(provenance)

    def record_fills(self, decision_id: str, order_id: str, fills: Sequence[FillRecord]) -> None:
        attached = attached_fills(decision_id, order_id, fills)
        with self._lock:
            if not self._changes(attached):
                return  # already attached: nothing to journal
            self._append({"fills": _fills_record(attached)})
            self._put_fills(attached)

    def provenance(self, decision_id: str) -> DecisionProvenance | None:
        with self._lock:
            return self._read_provenance(decision_id)

    def decisions_of_model(self, name: str, version: str) -> tuple[str, ...]:
        model = NodeRef(NodeKind.MODEL_VERSION, model_version_key(name, version))
        with self._lock:
            if model not in self._provenance:
                return ()
            keys = [key for *_, key in self._provenance.in_edges(model, keys=True)]
            keys += [key for *_, key in self._provenance.out_edges(model, keys=True)]
            return tuple(sorted({decision_id for decision_id, _ in keys}))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._journal is not None:
                self._journal.close()
                self._journal = None
            if self._journal_lock is not None:
                self._journal_lock.close()  # releases the lock
                self._journal_lock = None

    # -- internals --------------------------------------------------------------------

    def _lock_journal(self, path: Path) -> TextIO:
        """Hold the journal's lock file while open: a journal has one writer process.

        A second writer would replay a stale journal and compact over the first one's
        writes. The lock is a file beside the journal, since compaction replaces the
        journal itself; the kernel releases it when the process ends, crash or not.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = path.with_name(f".{path.name}.lock").open("a+", encoding="utf-8")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise StoreConfigError(
                f"{self._setting}: the graph journal {path} is open in another process "
                "(a journal has one writer): give each service its own file, or share an "
                "ArangoDB (arangodb://…)"
            ) from None
        return lock

    def _put_symbol(self, edge: SymbolEdge) -> None:
        old = self._symbols.get(edge.symbol)
        if old is not None:
            self._currencies.remove_edge(old.base, old.quote, key=old.symbol)
        self._currencies.add_edge(edge.base, edge.quote, key=edge.symbol)
        self._symbols[edge.symbol] = edge

    def _put_provenance(self, provenance: DecisionProvenance) -> None:
        decision_id = provenance.decision_id
        edges = {(edge.source, edge.target, edge.relation) for edge in provenance.edges}
        # Risk's previous record goes, except where attached fills still need an edge.
        stale = self._decisions.pop(decision_id, set()) - edges
        for source, target, relation in stale - self._attached.get(decision_id, set()):
            self._provenance.remove_edge(source, target, key=(decision_id, relation))
        for node in provenance.nodes:
            self._provenance.add_node(node.ref, attributes=dict(node.attributes))
        for source, target, relation in edges:
            self._provenance.add_edge(source, target, key=(decision_id, relation))
        self._decisions[decision_id] = edges

    def _changes(self, attached: AttachedFills) -> bool:
        """Whether attaching would change anything (an order, a fill, an edge is new, or a
        fill's attributes differ)."""
        graph = self._provenance
        if attached.order not in graph:
            return bool(attached.fills)
        known = self._attached.get(attached.decision_id, set())
        if any((e.source, e.target, e.relation) not in known for e in attached.edges):
            return True
        return any(
            fill.ref not in graph or graph.nodes[fill.ref].get("attributes") != fill.attributes
            for fill in attached.fills
        )

    def _put_fills(self, attached: AttachedFills) -> None:
        if not attached.fills:
            return
        decision_id = attached.decision_id
        if attached.order not in self._provenance:
            self._provenance.add_node(attached.order, attributes={})  # risk's, when it records
        for fill in attached.fills:
            self._provenance.add_node(fill.ref, attributes=dict(fill.attributes))
        links = self._attached.setdefault(decision_id, set())
        for edge in attached.edges:
            self._provenance.add_edge(edge.source, edge.target, key=(decision_id, edge.relation))
            links.add((edge.source, edge.target, edge.relation))

    def _read_provenance(
        self, decision_id: str, *, with_fills: bool = True
    ) -> DecisionProvenance | None:
        """The decision as recorded; ``with_fills=False``: risk's record alone (compaction
        journals the fills attached apart, so that replay keeps the two sets apart)."""
        recorded = self._decisions.get(decision_id)
        if recorded is None:
            return None
        edges = (recorded | self._attached.get(decision_id, set())) if with_fills else recorded
        refs = {NodeRef(NodeKind.RISK_DECISION, decision_id)}
        for source, target, _ in edges:
            refs |= {source, target}
        nodes = tuple(
            ProvenanceNode(ref, self._provenance.nodes[ref].get("attributes", {})) for ref in refs
        )
        return DecisionProvenance(
            decision_id, nodes, tuple(ProvenanceEdge(s, t, r) for s, t, r in edges)
        )

    def _append(self, record: dict[str, Any]) -> None:
        """Journal a write before applying it, so memory never holds what the file lacks."""
        if self._closed:
            raise StoreUnavailableError(f"{self.url} is closed; open the graph again to write")
        if self._journal is None:
            return
        self._journal.write(json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n")
        self._journal.flush()

    def _replay(self, path: Path) -> None:
        if not path.exists():
            return
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if "symbol" in record:
                    self._put_symbol(SymbolEdge.from_dict(record["symbol"]))
                elif "provenance" in record:
                    self._put_provenance(DecisionProvenance.from_dict(record["provenance"]))
                elif "fills" in record:
                    self._put_fills(_fills_from_record(record["fills"]))
                else:
                    raise ValueError("neither a symbol, a provenance nor a fills record")
            except (ValueError, KeyError, TypeError) as error:
                if number == len(lines) and not text.endswith("\n"):
                    _log.warning("graph journal: dropped a half-written last line", path=str(path))
                    continue
                raise StoreConfigError(
                    f"{self._setting}: {path} line {number} is not a graph record ({error})"
                ) from None

    def _compact(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        records: list[dict[str, Any]] = [{"symbol": e.to_dict()} for e in self.symbols()]
        for decision_id in sorted(self._decisions):
            provenance = self._read_provenance(decision_id, with_fills=False)
            assert provenance is not None
            records.append({"provenance": provenance.to_dict()})
        for decision_id in sorted(self._attached):
            attached = self._attached_by_order(decision_id)
            records.extend({"fills": _fills_record(fills)} for fills in attached)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with temporary.open("w", encoding="utf-8") as out:
            for record in records:
                out.write(json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)

    def _attached_by_order(self, decision_id: str) -> Iterator[AttachedFills]:
        """The fills attached under ``decision_id``, one record per order, as they are now."""
        fills: dict[NodeRef, list[FillRecord]] = {}
        for source, target, relation in sorted(self._attached[decision_id]):
            if relation == Relation.FILLED_BY:
                attributes = self._provenance.nodes[target].get("attributes", {})
                fills.setdefault(source, []).append((target.key, attributes))
        for order, records in sorted(fills.items()):
            yield attached_fills(decision_id, order.key, records)


def _fills_record(attached: AttachedFills) -> dict[str, Any]:
    """The journal's ``{"fills": …}`` body: the decision, the order and each fill."""
    return {
        "decision_id": attached.decision_id,
        "order_id": attached.order.key,
        "fills": [
            {"key": fill.ref.key, "attributes": dict(fill.attributes)} for fill in attached.fills
        ],
    }


def _fills_from_record(data: Mapping[str, Any]) -> AttachedFills:
    fills = [(str(f["key"]), dict(f.get("attributes") or {})) for f in data["fills"]]
    return attached_fills(str(data["decision_id"]), str(data["order_id"]), fills)

"""The embedded graph: networkx in the process, optionally journalled to a file.

Two ``networkx.MultiDiGraph`` hold the port's two graphs:

- the currency graph: currencies as nodes, one edge per symbol from base to quote,
  keyed by the symbol's name, carrying its :class:`~.port.SymbolEdge`;
- provenance: :class:`~.port.NodeRef` nodes with their attributes, and edges keyed by
  ``(decision_id, relation)``, so the same two nodes linked by two decisions stay two
  edges and each decision reads back only its own.

``memory://`` keeps everything in the process. ``file:///var/graph.jsonl`` also appends
every write to a journal, one JSON document per line (``{"symbol": …}`` or
``{"provenance": …}``), and replays it when opened. Appending costs one short write per
call whatever the size of the graph; opening rewrites the journal compacted (the last
record of each symbol and decision) through a temporary file and an atomic rename. A
write is flushed to the OS before the call returns, so a process crash loses nothing
(an OS crash may lose the last writes); a half-written last line, the trace of a crash
mid-write, is dropped on replay with a warning.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, TextIO

import networkx as nx  # type: ignore[import-untyped]  # networkx ships no py.typed

from quantmesh.runtime.logging import get_logger
from quantmesh.storage.graph.port import (
    DecisionProvenance,
    Neighbour,
    NodeKind,
    NodeRef,
    ProvenanceEdge,
    ProvenanceNode,
    SymbolEdge,
    model_version_key,
    resolve_correlation,
)
from quantmesh.storage.urls import StoreConfigError, StoreUnavailableError

__all__ = ["NetworkxGraph"]

_log = get_logger("storage.graph")


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
        # decision id → the (source, target, relation) of its edges; present once recorded.
        self._decisions: dict[str, set[tuple[NodeRef, NodeRef, str]]] = {}
        self._journal: TextIO | None = None
        self._closed = False
        if journal is not None:
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

    # -- internals --------------------------------------------------------------------

    def _put_symbol(self, edge: SymbolEdge) -> None:
        old = self._symbols.get(edge.symbol)
        if old is not None:
            self._currencies.remove_edge(old.base, old.quote, key=old.symbol)
        self._currencies.add_edge(edge.base, edge.quote, key=edge.symbol)
        self._symbols[edge.symbol] = edge

    def _put_provenance(self, provenance: DecisionProvenance) -> None:
        decision_id = provenance.decision_id
        for source, target, relation in self._decisions.pop(decision_id, set()):
            self._provenance.remove_edge(source, target, key=(decision_id, relation))
        for node in provenance.nodes:
            self._provenance.add_node(node.ref, attributes=dict(node.attributes))
        edges = set()
        for edge in provenance.edges:
            self._provenance.add_edge(edge.source, edge.target, key=(decision_id, edge.relation))
            edges.add((edge.source, edge.target, edge.relation))
        self._decisions[decision_id] = edges

    def _read_provenance(self, decision_id: str) -> DecisionProvenance | None:
        edges = self._decisions.get(decision_id)
        if edges is None:
            return None
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
                else:
                    raise ValueError("neither a symbol nor a provenance record")
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
            provenance = self._read_provenance(decision_id)
            assert provenance is not None
            records.append({"provenance": provenance.to_dict()})
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with temporary.open("w", encoding="utf-8") as out:
            for record in records:
                out.write(json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)

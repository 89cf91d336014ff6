"""The graph port: the currency graph and decision provenance. networkx or ArangoDB.

``QUANTMESH_GRAPH_URL`` picks the adapter:

- ``memory://`` (the default): networkx in the process, nothing kept;
- ``file:///var/graph.jsonl``: networkx, journalled to that file (relative to the working
  directory; ``file:////abs/path`` for an absolute one) and replayed when opened;
- ``arangodb://user:password@host:8529/quantmesh``: ArangoDB over HTTP,
  ``arangodbs://`` over HTTPS.

See :mod:`.port` for the interface, :mod:`.exposure` for per-currency exposure and
:mod:`.correlation` for the rolling correlations that weight the edges.
"""

from __future__ import annotations

from quantmesh.storage.graph.port import (
    DecisionProvenance,
    FillRecord,
    GraphPort,
    Neighbour,
    NodeKind,
    NodeRef,
    ProvenanceEdge,
    ProvenanceNode,
    Relation,
    SymbolEdge,
    decision_provenance,
    model_version_key,
)
from quantmesh.storage.urls import parse_store_url

__all__ = [
    "DEFAULT_URL",
    "SCHEMES",
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
    "decision_provenance",
    "model_version_key",
    "open_graph",
]

DEFAULT_URL = "memory://"
SCHEMES = {
    "memory": "memory://",
    "file": "file:///var/graph.jsonl",
    "arangodb": "arangodb://root:password@host:8529/quantmesh",
    "arangodbs": "arangodbs://root:password@host:8529/quantmesh",
}


def open_graph(url: str = DEFAULT_URL, setting: str = "QUANTMESH_GRAPH_URL") -> GraphPort:
    """The graph store ``url`` names.

    Raises
    ------
    StoreConfigError
        A malformed URL, an unknown scheme or refused credentials; names ``setting``.
    StoreUnavailableError
        The server cannot be reached at start-up; names ``setting``.
    """
    parsed = parse_store_url(setting, url, SCHEMES)
    if parsed.scheme in ("memory", "file"):
        from quantmesh.storage.graph.memory import NetworkxGraph

        journal = parsed.file if parsed.scheme == "file" else None
        return NetworkxGraph(journal, url=parsed.redacted(), setting=setting)
    # Imported here so that the embedded default does not load the HTTP client.
    from quantmesh.storage.graph.arango import ArangoGraph

    return ArangoGraph(parsed)

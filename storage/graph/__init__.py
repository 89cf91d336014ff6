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

import os

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
    "SETTING",
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
    "shared_url",
]

SETTING = "QUANTMESH_GRAPH_URL"  # shared by every service; a service's own setting wins
DEFAULT_URL = "memory://"
SCHEMES = {
    "memory": "memory://",
    "file": "file:///var/graph.jsonl",
    "arangodb": "arangodb://root:password@host:8529/quantmesh",
    "arangodbs": "arangodbs://root:password@host:8529/quantmesh",
}


def shared_url(default: str = DEFAULT_URL) -> str:
    """``QUANTMESH_GRAPH_URL`` when set, else ``default``: the default of a service's own
    graph setting, so one variable points every service at the same store."""
    return os.environ.get(SETTING) or default


def open_graph(url: str = DEFAULT_URL, setting: str = SETTING) -> GraphPort:
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

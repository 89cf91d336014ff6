"""The graph port on ArangoDB (python-arango), for the ``arangodb`` service of compose.

``arangodb://user:password@host:8529/quantmesh`` talks HTTP to ``host:8529`` and uses the
database ``quantmesh``; ``arangodbs://`` talks HTTPS. ``?timeout=10`` sets the request
timeout in seconds. On opening, the adapter creates what is missing (never drops or
changes anything): the database (through ``_system``, which root may use), the
collections of :data:`VERTEX_COLLECTIONS` and :data:`EDGE_COLLECTIONS`, the index of
:data:`INDEXES` and the named graphs of :data:`GRAPHS`:

- ``currency_graph``: ``currencies`` (``_key`` = ISO code) linked by ``symbols`` edges
  (``_key`` = symbol, ``_from`` = base, ``_to`` = quote; the SymbolEdge's fields);
- ``provenance``: one vertex collection per :class:`~.port.NodeKind` (``signals``,
  ``model_versions``, …; documents ``{_key, key, attributes}``) and ``provenance_links``
  edges ``{_from, _to, decision_id, relation}``, indexed by ``decision_id``; the edges
  :meth:`ArangoGraph.record_fills` draws also carry ``attached: true``.

Every query is one of the AQL texts in :data:`AQL`, with bind variables only. Writes are
idempotent: documents are replaced by deterministic keys, so a retried write, or the same
decision recorded twice, ends in the same state. A decision is recorded in four steps
(its other nodes, its edges, removing the edges it no longer has, then its own node), so
:meth:`ArangoGraph.provenance` finds a decision only once the rest has been written.
Fills are attached in three (the order's node unless it exists, the fill nodes, their
edges), never touching the decision's node: before risk records the decision they are
stored but not read. Their edges have keys of their own (a risk record's edge to the
same order is another document), and removing a decision's stale edges skips them, so
risk recording a decision again never drops a fill.

Keys: ArangoDB allows letters, digits and ``_-:.@()+,=;$!*'%`` in a ``_key``; any other
character of an id is percent-encoded (``EURUSD/1`` → ``EURUSD%2F1``), and the original
is kept in the document's ``key``.

Calls that fail for a reason a returning server cures (refused connection, timeout,
HTTP 502/503/504) are retried with backoff by :func:`~quantmesh.storage.resilience.
retrying_sync`; after the budget they raise StoreUnavailableError naming the setting.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar
from urllib.parse import quote, unquote

from arango.client import ArangoClient
from arango.cursor import Cursor
from arango.database import StandardDatabase
from arango.errno import DATABASE_NOT_FOUND, DUPLICATE_NAME, GRAPH_DUPLICATE
from arango.exceptions import ArangoServerError
from arango.http import DefaultHTTPClient

from quantmesh.runtime.errors import InvalidArgument
from quantmesh.storage.graph.port import (
    DecisionProvenance,
    FillRecord,
    Neighbour,
    NodeKind,
    NodeRef,
    ProvenanceEdge,
    ProvenanceNode,
    SymbolEdge,
    attached_fills,
    model_version_key,
    resolve_correlation,
)
from quantmesh.storage.resilience import TRANSIENT, Backoff, retrying_sync
from quantmesh.storage.urls import StoreConfigError, StoreUnavailableError, StoreUrl

__all__ = [
    "AQL",
    "EDGE_COLLECTIONS",
    "GRAPHS",
    "INDEXES",
    "NODE_COLLECTIONS",
    "VERTEX_COLLECTIONS",
    "ArangoGraph",
    "ConnectionSettings",
    "arango_key",
    "connection_settings",
]

T = TypeVar("T")
DEFAULT_PORT = 8529
DEFAULT_DATABASE = "quantmesh"
DEFAULT_TIMEOUT_SECONDS = 10.0

NODE_COLLECTIONS: Mapping[NodeKind, str] = {
    NodeKind.RISK_DECISION: "risk_decisions",
    NodeKind.SIGNAL: "signals",
    NodeKind.PREDICTION: "predictions",
    NodeKind.MODEL_VERSION: "model_versions",
    NodeKind.FEATURE_ROW: "feature_rows",
    NodeKind.ORDER: "orders",
    NodeKind.FILL: "fills",
}
_KIND_OF_COLLECTION = {collection: kind for kind, collection in NODE_COLLECTIONS.items()}
VERTEX_COLLECTIONS: tuple[str, ...] = ("currencies", *NODE_COLLECTIONS.values())
EDGE_COLLECTIONS: tuple[str, ...] = ("symbols", "provenance_links")
GRAPHS: Mapping[str, list[dict[str, Any]]] = {
    "currency_graph": [
        {
            "edge_collection": "symbols",
            "from_vertex_collections": ["currencies"],
            "to_vertex_collections": ["currencies"],
        }
    ],
    "provenance": [
        {
            "edge_collection": "provenance_links",
            "from_vertex_collections": sorted(NODE_COLLECTIONS.values()),
            "to_vertex_collections": sorted(NODE_COLLECTIONS.values()),
        }
    ],
}
INDEXES: Mapping[str, list[dict[str, Any]]] = {
    "provenance_links": [{"type": "persistent", "fields": ["decision_id"], "name": "by_decision"}],
}

# Every query the adapter runs. @@collection binds a collection name, @x a value.
AQL: Mapping[str, str] = {
    # Both currencies of a symbol; an existing currency is left as it is.
    "insert_currencies": (
        'FOR code IN @codes INSERT {_key: code} INTO currencies OPTIONS {overwriteMode: "ignore"}'
    ),
    # A symbol edge, replacing the previous one of the same _key whole.
    "replace_symbol": 'INSERT @edge INTO symbols OPTIONS {overwriteMode: "replace"}',
    "symbols": "FOR s IN symbols RETURN s",
    "symbols_named": "FOR s IN symbols FILTER s._key IN @keys RETURN s",
    # One hop either way through the named graph.
    "neighbours": (
        'FOR currency, symbol IN 1..1 ANY @start GRAPH "currency_graph" '
        "RETURN {currency: currency._key, symbol: symbol.symbol}"
    ),
    "replace_nodes": (
        'FOR node IN @nodes INSERT node INTO @@collection OPTIONS {overwriteMode: "replace"}'
    ),
    # Nodes not stored yet; one that exists keeps its attributes (an order risk recorded).
    "insert_missing_nodes": (
        'FOR node IN @nodes INSERT node INTO @@collection OPTIONS {overwriteMode: "ignore"}'
    ),
    "replace_links": (
        'FOR link IN @links INSERT link INTO provenance_links OPTIONS {overwriteMode: "replace"}'
    ),
    # Edges a decision's record had before and has no more (recorded again, with fewer
    # orders); the fills attached to it are not risk's record and stay.
    "remove_stale_links": (
        "FOR link IN provenance_links "
        "FILTER link.decision_id == @decision_id AND link._key NOT IN @keep "
        "AND link.attached != true "
        "REMOVE link IN provenance_links"
    ),
    # The decision's own node, its edges (by the decision_id index) and their ends.
    "provenance": (
        "LET root = DOCUMENT(@root) "
        "LET links = (FOR link IN provenance_links FILTER link.decision_id == @decision_id "
        "RETURN {source: link._from, target: link._to, relation: link.relation}) "
        "LET ends = UNIQUE(FLATTEN((FOR link IN links RETURN [link.source, link.target]))) "
        "RETURN {root: root, links: links, "
        "nodes: (FOR id IN ends RETURN {id: id, node: DOCUMENT(id)})}"
    ),
    # Decisions with an edge to or from the model version's node (edge index on both).
    "decisions_of_model": (
        "FOR link IN provenance_links FILTER link._to == @model OR link._from == @model "
        "RETURN DISTINCT link.decision_id"
    ),
}

# Characters ArangoDB allows in a _key besides letters and digits ('%' escapes the rest).
_KEY_SAFE = "_-:.@()+,=;$!*'"
_MAX_KEY_BYTES = 254
_UNAVAILABLE_HTTP = frozenset({502, 503, 504})
# Start-up tries a few times only: a wrong address should fail fast, with the setting.
_STARTUP_BACKOFF = Backoff(attempts=3, first_delay=0.2, max_delay=1.0)


def arango_key(key: str) -> str:
    """``key`` as a valid ``_key``: characters ArangoDB refuses percent-encoded."""
    # quote() keeps '~', which ArangoDB refuses in a key.
    encoded = quote(key, safe=_KEY_SAFE).replace("~", "%7E")
    if len(encoded.encode()) > _MAX_KEY_BYTES:
        raise InvalidArgument(f"key {key[:40]!r}… is longer than ArangoDB allows")
    return encoded


def _node_id(ref: NodeRef) -> str:
    return f"{NODE_COLLECTIONS[ref.kind]}/{arango_key(ref.key)}"


def _node_ref(document_id: str) -> NodeRef:
    collection, key = document_id.split("/", 1)
    return NodeRef(_KIND_OF_COLLECTION[collection], unquote(key))


def _link_key(decision_id: str, edge: ProvenanceEdge, *, attached: bool = False) -> str:
    """A deterministic key per (decision, edge): recording again replaces, never duplicates.

    An attached fill's edge (``attached``) has another key than the same edge in risk's
    record, so neither writer's replace takes the other's mark away.
    """
    parts = [decision_id, str(edge.source), str(edge.target), edge.relation]
    text = json.dumps([*parts, "attached"] if attached else parts)
    return hashlib.sha256(text.encode()).hexdigest()[:40]


class ArangoGraph:
    """The graph port on an ArangoDB server (see the module docstring).

    Raises
    ------
    StoreConfigError
        The server refused the credentials (naming the setting).
    StoreUnavailableError
        The server cannot be reached at start-up (naming the setting).
    """

    def __init__(self, url: StoreUrl, *, backoff: Backoff | None = None) -> None:
        self.url = url.redacted()
        self._setting = url.setting
        self._backoff = backoff or Backoff()
        settings = connection_settings(url)
        self._database_name = settings.database
        self._username = settings.username
        self._password = settings.password
        # Our retries replace python-arango's (three urllib3 tries, seconds apart).
        self._client = ArangoClient(
            hosts=settings.host,
            http_client=DefaultHTTPClient(request_timeout=settings.timeout, retry_attempts=0),
            resolver_max_tries=1,
            request_timeout=settings.timeout,
        )
        self._store = f"ArangoDB ({url.setting}={self.url})"
        try:
            self._db = self._open_database()
            self._ensure_schema()
        except StoreUnavailableError:
            self._client.close()  # the message names the setting already (self._store)
            raise
        except ArangoServerError as error:
            self._client.close()
            if error.http_code in (401, 403):
                raise StoreConfigError(
                    f"{url.setting}={self.url}: ArangoDB refused user {self._username!r} "
                    f"({error.error_message or error.http_code}); check the user and password"
                ) from None
            raise StoreUnavailableError(
                f"{url.setting}={self.url}: ArangoDB could not set up the graph store: {error}"
            ) from error

    # -- currency graph ---------------------------------------------------------------

    def upsert_symbol(self, edge: SymbolEdge) -> None:
        document = {
            "_key": arango_key(edge.symbol),
            "_from": f"currencies/{edge.base}",
            "_to": f"currencies/{edge.quote}",
            **edge.to_dict(),
        }
        self._query("insert_currencies", codes=[edge.base, edge.quote])
        self._query("replace_symbol", edge=document)

    def symbols(self) -> tuple[SymbolEdge, ...]:
        # Sorted here: AQL sorts strings by ICU collation, Python by code point.
        edges = (SymbolEdge.from_dict(row) for row in self._query("symbols"))
        return tuple(sorted(edges, key=lambda edge: edge.symbol))

    def correlation(self, symbol_a: str, symbol_b: str) -> float | None:
        keys = [arango_key(symbol_a), arango_key(symbol_b)]
        found = {
            row["symbol"]: SymbolEdge.from_dict(row)
            for row in self._query("symbols_named", keys=keys)
        }
        return resolve_correlation(found.get(symbol_a), found.get(symbol_b))

    def neighbours(self, currency: str) -> tuple[Neighbour, ...]:
        rows = self._query("neighbours", start=f"currencies/{arango_key(currency)}")
        return tuple(sorted({Neighbour(row["currency"], row["symbol"]) for row in rows}))

    # -- provenance -------------------------------------------------------------------

    def record_provenance(self, provenance: DecisionProvenance) -> None:
        decision_id = provenance.decision_id
        by_collection: dict[str, list[dict[str, Any]]] = {}
        root: ProvenanceNode | None = None
        for node in provenance.nodes:
            if node.ref == provenance.root:
                root = node
                continue
            by_collection.setdefault(NODE_COLLECTIONS[node.ref.kind], []).append(_node_doc(node))
        assert root is not None  # DecisionProvenance requires its root
        for collection, documents in sorted(by_collection.items()):
            self._query("replace_nodes", nodes=documents, collection=collection)
        links = [
            {
                "_key": _link_key(decision_id, edge),
                "_from": _node_id(edge.source),
                "_to": _node_id(edge.target),
                "decision_id": decision_id,
                "relation": edge.relation,
            }
            for edge in provenance.edges
        ]
        self._query("replace_links", links=links)
        keep = [link["_key"] for link in links]
        self._query("remove_stale_links", decision_id=decision_id, keep=keep)
        self._query(
            "replace_nodes",
            nodes=[_node_doc(root)],
            collection=NODE_COLLECTIONS[NodeKind.RISK_DECISION],
        )

    def record_fills(self, decision_id: str, order_id: str, fills: Sequence[FillRecord]) -> None:
        attached = attached_fills(decision_id, order_id, fills)
        if not attached.fills:
            return
        self._query(
            "insert_missing_nodes",
            nodes=[_node_doc(ProvenanceNode(attached.order))],
            collection=NODE_COLLECTIONS[NodeKind.ORDER],
        )
        self._query(
            "replace_nodes",
            nodes=[_node_doc(fill) for fill in attached.fills],
            collection=NODE_COLLECTIONS[NodeKind.FILL],
        )
        links = [
            {
                "_key": _link_key(decision_id, edge, attached=True),
                "_from": _node_id(edge.source),
                "_to": _node_id(edge.target),
                "decision_id": decision_id,
                "relation": edge.relation,
                "attached": True,
            }
            for edge in attached.edges
        ]
        self._query("replace_links", links=links)

    def provenance(self, decision_id: str) -> DecisionProvenance | None:
        root_ref = NodeRef(NodeKind.RISK_DECISION, decision_id)
        (row,) = self._query("provenance", root=_node_id(root_ref), decision_id=decision_id)
        if row["root"] is None:
            return None
        nodes = {root_ref: ProvenanceNode(root_ref, row["root"].get("attributes") or {})}
        for end in row["nodes"]:
            ref = _node_ref(end["id"])
            document = end["node"] or {}
            nodes[ref] = ProvenanceNode(ref, document.get("attributes") or {})
        edges = tuple(
            ProvenanceEdge(_node_ref(link["source"]), _node_ref(link["target"]), link["relation"])
            for link in row["links"]
        )
        return DecisionProvenance(decision_id, tuple(nodes.values()), edges)

    def decisions_of_model(self, name: str, version: str) -> tuple[str, ...]:
        model = NodeRef(NodeKind.MODEL_VERSION, model_version_key(name, version))
        return tuple(sorted(self._query("decisions_of_model", model=_node_id(model))))

    def close(self) -> None:
        self._client.close()

    # -- internals --------------------------------------------------------------------

    def _query(self, name: str, **bind: Any) -> list[Any]:
        """Run ``AQL[name]``; ``collection=`` binds ``@@collection``."""
        bind_vars = {("@collection" if k == "collection" else k): v for k, v in bind.items()}

        def run() -> list[Any]:
            cursor = self._db.aql.execute(AQL[name], bind_vars=bind_vars)
            assert isinstance(cursor, Cursor)  # a plain (not async/batch) database
            return list(cursor)

        return self._call(run, name, self._backoff)

    def _call(self, operation: Callable[[], T], what: str, backoff: Backoff) -> T:
        def attempt() -> T:
            try:
                return operation()
            except ArangoServerError as error:
                if error.http_code in _UNAVAILABLE_HTTP:
                    raise ConnectionError(str(error)) from error
                raise

        return retrying_sync(
            attempt, store=self._store, what=what, transient=TRANSIENT, backoff=backoff
        )

    def _open_database(self) -> StandardDatabase:
        database = self._client.db(self._database_name, self._username, self._password)
        try:
            self._call(database.version, "connect", _STARTUP_BACKOFF)
        except ArangoServerError as error:
            if error.error_code != DATABASE_NOT_FOUND:
                raise
            system = self._client.db("_system", self._username, self._password)
            users = [] if self._username == "root" else [{"username": self._username}]
            try:
                self._call(
                    lambda: system.create_database(self._database_name, users=users or None),
                    f"create database {self._database_name}",
                    _STARTUP_BACKOFF,
                )
            except ArangoServerError as create_error:
                if create_error.error_code != DUPLICATE_NAME:  # created meanwhile: fine
                    raise
        return database

    def _ensure_schema(self) -> None:
        db = self._db
        for name in (*VERTEX_COLLECTIONS, *EDGE_COLLECTIONS):
            if not self._call(partial(db.has_collection, name), f"find {name}", _STARTUP_BACKOFF):
                create = partial(db.create_collection, name, edge=name in EDGE_COLLECTIONS)
                self._tolerate_duplicate(create, f"create {name}")
        for collection, indexes in INDEXES.items():
            for index in indexes:
                # ArangoDB returns the existing index when an identical one is asked for.
                add = partial(db.collection(collection).add_index, dict(index))
                self._call(add, f"index {collection}", _STARTUP_BACKOFF)
        for graph, definitions in GRAPHS.items():
            if not self._call(partial(db.has_graph, graph), f"find {graph}", _STARTUP_BACKOFF):
                create_graph = partial(db.create_graph, graph, edge_definitions=definitions)
                self._tolerate_duplicate(create_graph, f"create graph {graph}")

    def _tolerate_duplicate(self, create: Callable[[], object], what: str) -> None:
        """Create something; another process having just created it is fine."""
        try:
            self._call(create, what, _STARTUP_BACKOFF)
        except ArangoServerError as error:
            if error.error_code not in (DUPLICATE_NAME, GRAPH_DUPLICATE):
                raise


def _node_doc(node: ProvenanceNode) -> dict[str, Any]:
    return {
        "_key": arango_key(node.ref.key),
        "key": node.ref.key,
        "attributes": dict(node.attributes),
    }


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """What an ``arangodb://`` URL says: where the server is and how to log in."""

    host: str  # e.g. http://arangodb:8529
    database: str
    username: str
    password: str = field(repr=False)
    timeout: float = DEFAULT_TIMEOUT_SECONDS


def connection_settings(url: StoreUrl) -> ConnectionSettings:
    """``arangodb://user:pw@host:port/db`` → HTTP (``arangodbs`` → HTTPS) settings.

    Defaults: user ``root``, port 8529, database ``quantmesh``, timeout 10 s.
    """
    protocol = "https" if url.scheme == "arangodbs" else "http"
    return ConnectionSettings(
        host=f"{protocol}://{url.host or 'localhost'}:{url.port or DEFAULT_PORT}",
        database=unquote(url.path.strip("/")) or DEFAULT_DATABASE,
        username=url.username or "root",
        password=url.password,
        timeout=_timeout(url),
    )


def _timeout(url: StoreUrl) -> float:
    text = url.query.get("timeout")
    if text is None:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise StoreConfigError(f"{url.setting}: timeout must be a positive number of seconds")
    return seconds

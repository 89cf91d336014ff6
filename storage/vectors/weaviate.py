"""The Weaviate adapter of the vectors port, over Weaviate's REST and GraphQL API (httpx).

weaviate-client is not used: its releases pin protobuf and grpcio below the versions
quantmesh's generated code needs. The adapter speaks the documented HTTP API instead:

- ``GET /v1/.well-known/ready`` at start-up (no key needed), ``GET /v1/meta`` for the
  server's version (which also checks the key);
- ``GET /v1/schema``, then ``POST /v1/schema`` with :func:`collection_definition` if the
  collection is missing (an existing one must be cosine, without vectorizer);
- ``POST /v1/batch/objects`` to upsert: objects carry deterministic UUIDs
  (:func:`~quantmesh.storage.vectors.port.state_id`), and a batch import of an existing
  id replaces the object, so writing a state twice keeps one;
- ``POST /v1/graphql`` with ``Get { Collection(nearVector: …, limit: k, where: …) }`` to
  search and ``Aggregate { … meta { count } }`` to count.

URL: ``weaviate://host:8080`` (HTTP) or ``weaviates://host`` (HTTPS, port 443), the API
key as the password (``weaviate://:KEY@weaviate:8080``, sent as ``Authorization: Bearer``),
and optionally ``?collection=MarketState&timeout=10``.

Times are stored as ``number`` (float64, exact for integers below 2^53), not ``int``:
Weaviate's GraphQL layer, like the GraphQL spec, represents ``Int`` in 32 bits and
returns null for epoch milliseconds (weaviate/weaviate#1563, #2862).

The collection uses HNSW with the cosine distance, Weaviate's ``1 - cos`` like the numpy
store. HNSW is approximate, but a filtered search that matches fewer objects than the
index's ``flatSearchCutoff`` (40 000 by default) is answered by an exact scan, which is
the case of a symbol's states over years of H1 bars.

Transport errors and 429/502/503/504 answers are retried with backoff
(:mod:`quantmesh.storage.resilience`); after the budget the call raises
StoreUnavailableError. Other refusals raise
:class:`~quantmesh.storage.vectors.port.VectorStoreError` with Weaviate's message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import numpy as np

from quantmesh.storage.resilience import TRANSIENT, Backoff, retrying_sync
from quantmesh.storage.urls import StoreConfigError, StoreUnavailableError, StoreUrl
from quantmesh.storage.vectors.port import MarketState, Neighbour, VectorStoreError, unit_vector

__all__ = [
    "DEFAULT_COLLECTION",
    "MIN_VERSION",
    "READY_PATH",
    "WeaviateVectors",
    "auth_headers",
    "batch_body",
    "collection_definition",
    "count_query",
    "near_vector_query",
    "neighbours_from",
]

DEFAULT_COLLECTION = "MarketState"
READY_PATH = "/v1/.well-known/ready"
# indexRangeFilters (the range index on the time properties) arrived in Weaviate 1.26.
MIN_VERSION = (1, 26)
BATCH_SIZE = 500
CALL_BACKOFF = Backoff()
STARTUP_BACKOFF = Backoff(attempts=4, first_delay=0.25, max_delay=2.0)

_COLLECTION_NAME = re.compile(r"^[A-Z][_0-9A-Za-z]*$")
_BUSY = frozenset({429, 502, 503, 504})
_RETURNED = "symbol timeMsc horizonMs nextReturnBps _additional { id distance vector }"


class _ServerBusy(ConnectionError):
    """Weaviate answered, but asked to come back later (a transient failure)."""


def collection_definition(name: str = DEFAULT_COLLECTION) -> dict[str, Any]:
    """The collection (class) the adapter creates: vectors supplied by quantmesh, cosine."""
    return {
        "class": name,
        "description": "quantmesh market states: embedded feature windows and what followed",
        # quantmesh sends every vector; no vectorizer module is needed or used.
        "vectorizer": "none",
        "vectorIndexType": "hnsw",
        "vectorIndexConfig": {"distance": "cosine"},
        "properties": [
            {
                "name": "symbol",
                "dataType": ["text"],
                "tokenization": "field",  # "EURUSD" matches whole, never by words
                "indexFilterable": True,
                "indexSearchable": False,
            },
            _number("timeMsc", ranged=True),
            _number("horizonMs", ranged=False),
            _number("outcomeMsc", ranged=True),  # timeMsc + horizonMs: the before_ms filter
            _number("nextReturnBps", ranged=False),
        ],
    }


def _number(name: str, *, ranged: bool) -> dict[str, Any]:
    return {
        "name": name,
        "dataType": ["number"],
        "indexFilterable": ranged,
        "indexRangeFilters": ranged,
    }


def auth_headers(url: StoreUrl) -> dict[str, str]:
    """The API key (the URL's password) as Weaviate wants it; none without a password."""
    return {"Authorization": f"Bearer {url.password}"} if url.password else {}


def batch_body(collection: str, states: Sequence[MarketState]) -> dict[str, Any]:
    """The ``POST /v1/batch/objects`` body upserting ``states``."""
    return {
        "objects": [
            {
                "class": collection,
                "id": state.id,
                "properties": {
                    "symbol": state.symbol,
                    "timeMsc": state.time_msc,
                    "horizonMs": state.horizon_ms,
                    "outcomeMsc": state.outcome_ms,
                    "nextReturnBps": state.next_return_bps,
                },
                "vector": state.vector.tolist(),
            }
            for state in states
        ]
    }


def near_vector_query(
    collection: str,
    vector: np.ndarray,
    k: int,
    symbol: str | None = None,
    before_ms: int | None = None,
) -> str:
    """The GraphQL ``Get`` of the ``k`` objects nearest ``vector`` that pass the filters."""
    conditions = []
    if symbol is not None:
        # json.dumps writes a valid GraphQL string literal (same escapes).
        conditions.append(f'{{path: ["symbol"], operator: Equal, valueText: {json.dumps(symbol)}}}')
    if before_ms is not None:
        conditions.append(
            f'{{path: ["outcomeMsc"], operator: LessThanEqual, valueNumber: {int(before_ms)}}}'
        )
    where = ""
    if len(conditions) == 1:
        where = f", where: {conditions[0]}"
    elif conditions:
        where = f", where: {{operator: And, operands: [{', '.join(conditions)}]}}"
    numbers = ", ".join(repr(float(x)) for x in vector)
    return (
        f"{{ Get {{ {collection}(nearVector: {{vector: [{numbers}]}}, limit: {int(k)}{where}) "
        f"{{ {_RETURNED} }} }} }}"
    )


def count_query(collection: str) -> str:
    """The GraphQL ``Aggregate`` counting the collection's objects."""
    return f"{{ Aggregate {{ {collection} {{ meta {{ count }} }} }} }}"


def neighbours_from(payload: Any, collection: str) -> list[Neighbour]:
    """The neighbours of a ``Get`` answer, in Weaviate's order (nearest first)."""
    objects = _graphql_data(payload)["Get"][collection] or []
    neighbours = []
    for found in objects:
        extra = found["_additional"]
        state = MarketState(
            id=str(extra["id"]),
            symbol=str(found["symbol"]),
            time_msc=round(float(found["timeMsc"])),
            vector=np.asarray(extra["vector"], np.float32),
            next_return_bps=float(found["nextReturnBps"]),
            horizon_ms=round(float(found["horizonMs"])),
        )
        neighbours.append(Neighbour(state, max(0.0, float(extra["distance"]))))
    return neighbours


def _graphql_data(payload: Any) -> Any:
    errors = payload.get("errors") if isinstance(payload, dict) else None
    if errors:
        messages = "; ".join(str(error.get("message", error)) for error in errors)
        raise VectorStoreError(f"Weaviate refused the query: {messages}")
    return payload["data"]


def _batch_errors(answer: Any) -> list[str]:
    failures: list[str] = []
    for position, result in enumerate(answer if isinstance(answer, list) else []):
        errors = ((result.get("result") or {}).get("errors") or {}).get("error") or []
        failures.extend(f"object {position}: {error.get('message')}" for error in errors)
    return failures


def _chunks(states: Sequence[MarketState], size: int) -> Iterator[Sequence[MarketState]]:
    for start in range(0, len(states), size):
        yield states[start : start + size]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


class WeaviateVectors:
    """:class:`~quantmesh.storage.vectors.port.VectorPort` on a Weaviate server."""

    def __init__(
        self,
        url: StoreUrl,
        *,
        backoff: Backoff = CALL_BACKOFF,
        startup_backoff: Backoff = STARTUP_BACKOFF,
    ) -> None:
        self.url = url.redacted()
        self._setting = url.setting
        self._backoff = backoff
        self.collection = url.query.get("collection", DEFAULT_COLLECTION)
        if not _COLLECTION_NAME.match(self.collection):
            raise StoreConfigError(
                f"{url.setting}={self.url}: collection {self.collection!r} is not a Weaviate "
                "collection name (a capital letter, then letters, digits or _)"
            )
        if not url.host:
            raise StoreConfigError(
                f"{url.setting}={self.url} names no host; e.g. weaviate://:KEY@weaviate:8080"
            )
        secure = url.scheme == "weaviates"
        port = url.port or (443 if secure else 8080)
        try:
            timeout = float(url.query.get("timeout", "10"))
        except ValueError:
            raise StoreConfigError(f"{url.setting}={self.url}: timeout must be seconds") from None
        headers = auth_headers(url)
        host = f"[{url.host}]" if ":" in url.host else url.host
        self._client = httpx.Client(
            base_url=f"{'https' if secure else 'http'}://{host}:{port}",
            headers=headers,
            timeout=timeout,
        )
        try:
            self._start(startup_backoff)
        except BaseException:
            self._client.close()
            raise

    # -- the port ---------------------------------------------------------------------

    def upsert(self, states: Sequence[MarketState]) -> None:
        for chunk in _chunks(states, BATCH_SIZE):
            body = batch_body(self.collection, chunk)
            answer = self._json("POST", "/v1/batch/objects", body, what="batch upsert")
            failures = _batch_errors(answer)
            if failures:
                raise VectorStoreError(
                    f"Weaviate refused {len(failures)} of {len(chunk)} states: "
                    + "; ".join(failures[:5])
                )

    def nearest(
        self,
        vector: np.ndarray | Sequence[float],
        k: int,
        symbol: str | None = None,
        before_ms: int | None = None,
    ) -> list[Neighbour]:
        if k < 0:
            raise ValueError(f"k must be 0 or more, got {k}")
        query = unit_vector(vector)
        if k == 0:
            return []
        text = near_vector_query(self.collection, query, k, symbol, before_ms)
        answer = self._json("POST", "/v1/graphql", {"query": text}, what="nearVector search")
        return neighbours_from(answer, self.collection)

    def count(self) -> int:
        body = {"query": count_query(self.collection)}
        answer = self._json("POST", "/v1/graphql", body, what="count")
        groups = _graphql_data(answer)["Aggregate"][self.collection] or []
        return int(groups[0]["meta"]["count"]) if groups else 0

    def close(self) -> None:
        self._client.close()

    def drop_collection(self) -> None:
        """Delete the collection and every state in it (tests, or a changed embedding)."""
        self._request("DELETE", f"/v1/schema/{self.collection}", what="drop collection")

    # -- start-up ---------------------------------------------------------------------

    def _start(self, startup_backoff: Backoff) -> None:
        try:
            self._request("GET", READY_PATH, what="readiness check", backoff=startup_backoff)
            meta = self._checked_json("GET", "/v1/meta", what="version check")
            version = str(meta.get("version", "0"))
            if _version(version) < MIN_VERSION:
                raise StoreConfigError(
                    f"{self._setting}={self.url}: Weaviate {version} is too old; quantmesh "
                    f"needs {'.'.join(map(str, MIN_VERSION))} or newer (range filters on times)"
                )
            self._ensure_collection()
        except StoreUnavailableError as error:
            raise StoreUnavailableError(
                f"{self._setting}={self.url}: Weaviate is not reachable ({error})"
            ) from error

    def _ensure_collection(self) -> None:
        existing = self._existing_collection()
        if existing is None:
            created = self._checked(
                "POST",
                "/v1/schema",
                collection_definition(self.collection),
                what="collection creation",
                conflict_ok=True,
            )
            if created.status_code < 300:
                return
            existing = self._existing_collection()  # another process created it meanwhile
        if existing is None:
            raise StoreConfigError(
                f"{self._setting}={self.url}: Weaviate neither created nor lists the "
                f"collection {self.collection!r}"
            )
        self._check_existing(existing)

    def _existing_collection(self) -> dict[str, Any] | None:
        # The whole schema, rather than /v1/schema/{name}, whose answer for a missing
        # collection has changed between Weaviate releases.
        schema = self._checked_json("GET", "/v1/schema", what="schema read")
        for definition in schema.get("classes") or []:
            if definition.get("class") == self.collection:
                found: dict[str, Any] = definition
                return found
        return None

    def _check_existing(self, existing: dict[str, Any]) -> None:
        distance = (existing.get("vectorIndexConfig") or {}).get("distance")
        names = {prop.get("name") for prop in existing.get("properties") or []}
        wanted = {prop["name"] for prop in collection_definition()["properties"]}
        problems = []
        if existing.get("vectorizer", "none") != "none":
            problems.append(f"vectorizer {existing.get('vectorizer')!r}, not 'none'")
        if distance != "cosine":
            problems.append(f"distance {distance!r}, not 'cosine'")
        if not wanted <= names:
            problems.append(f"no {', '.join(sorted(wanted - names))} properties")
        if problems:
            raise StoreConfigError(
                f"{self._setting}={self.url}: the Weaviate collection {self.collection!r} "
                f"exists with {'; '.join(problems)}; drop it or name another with "
                "?collection=…"
            )

    def _checked(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        what: str,
        conflict_ok: bool = False,
    ) -> httpx.Response:
        """A start-up request: a refused key or a refused schema names the setting."""
        try:
            return self._request(method, path, body, what=what, conflict_ok=conflict_ok)
        except _Refused as error:
            hint = (
                "; put the API key in the URL's password (weaviate://:KEY@host:8080)"
                if error.status in (401, 403)
                else ""
            )
            raise StoreConfigError(f"{self._setting}={self.url}: {error}{hint}") from None

    def _checked_json(self, method: str, path: str, *, what: str) -> Any:
        return self._checked(method, path, what=what).json()

    # -- transport --------------------------------------------------------------------

    def _json(self, method: str, path: str, body: Any, *, what: str) -> Any:
        try:
            return self._request(method, path, body, what=what).json()
        except _Refused as error:
            raise VectorStoreError(str(error)) from None

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        what: str,
        backoff: Backoff | None = None,
        conflict_ok: bool = False,
    ) -> httpx.Response:
        def attempt() -> httpx.Response:
            response = self._client.request(method, path, json=body)
            status = response.status_code
            if status in _BUSY:
                raise _ServerBusy(f"HTTP {status} from {method} {path}")
            if status >= 400 and not (
                conflict_ok and status == 422 and "already exists" in response.text
            ):
                raise _Refused(
                    status, f"Weaviate refused the {what}: HTTP {status} {_said(response)}"
                )
            return response

        operation: Callable[[], httpx.Response] = attempt
        return retrying_sync(
            operation,
            store=f"Weaviate at {self.url} ({self._setting})",
            what=what,
            transient=(*TRANSIENT, httpx.TransportError),
            backoff=backoff or self._backoff,
        )


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _said(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    errors = body.get("error") if isinstance(body, dict) else None
    if isinstance(errors, list):
        return "; ".join(str(e.get("message", e)) for e in errors)[:300]
    return json.dumps(body)[:300]

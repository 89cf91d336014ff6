"""The Weaviate adapter's requests, and its collection against the compose stack's server.

Weaviate cannot run on this machine, so the server side of the adapter is covered by the
contract suite when ``QUANTMESH_TEST_WEAVIATE_URL`` is set; here are the parts that need
no server: the collection definition checked against how docker-compose.yml configures
the weaviate service, and the bodies and queries built from Weaviate's documented REST
and GraphQL shapes.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from quantmesh.storage.urls import parse_store_url
from quantmesh.storage.vectors import SCHEMES, MarketState, VectorStoreError
from quantmesh.storage.vectors.weaviate import (
    DEFAULT_COLLECTION,
    MIN_VERSION,
    READY_PATH,
    _batch_errors,
    auth_headers,
    batch_body,
    collection_definition,
    count_query,
    near_vector_query,
    neighbours_from,
)

ROOT = Path(__file__).resolve().parents[3]
H = 3_600_000
T0 = 1_735_689_600_000


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def weaviate_service() -> dict[str, Any]:
    service: dict[str, Any] = compose()["services"]["weaviate"]
    return service


def compose_default(value: str) -> str:
    """``${NAME:-default}`` → ``default`` (what compose uses when NAME is unset)."""
    match = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return match.group(1) if match else value


def balanced(text: str) -> bool:
    depth = {"{": 0, "[": 0, "(": 0}
    closing = {"}": "{", "]": "[", ")": "("}
    in_string = False
    for i, ch in enumerate(text):
        if ch == '"' and text[i - 1] != "\\":
            in_string = not in_string
        elif not in_string and ch in depth:
            depth[ch] += 1
        elif not in_string and ch in closing:
            depth[closing[ch]] -= 1
            if depth[closing[ch]] < 0:
                return False
    return not in_string and all(v == 0 for v in depth.values())


# -- the collection against the compose stack -----------------------------------------


def test_the_collection_needs_no_vectorizer_module_as_compose_runs_none() -> None:
    env = weaviate_service()["environment"]
    assert env["DEFAULT_VECTORIZER_MODULE"] == "none"
    assert "ENABLE_MODULES" not in env  # no module: every vector must come from quantmesh
    definition = collection_definition()
    assert definition["vectorizer"] == "none"
    assert "moduleConfig" not in definition
    assert all("moduleConfig" not in prop for prop in definition["properties"])


def test_the_compose_image_supports_the_collections_range_indexes() -> None:
    image = weaviate_service()["image"]
    tag = image.rsplit(":", 1)[1]
    version = tuple(int(part) for part in tag.split(".")[:2])
    assert version >= MIN_VERSION
    ranged = [
        p["name"] for p in collection_definition()["properties"] if p.get("indexRangeFilters")
    ]
    assert ranged == ["timeMsc", "outcomeMsc"]


def test_the_compose_api_key_is_what_the_adapter_sends() -> None:
    env = weaviate_service()["environment"]
    assert env["AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED"] == "false"
    assert env["AUTHENTICATION_APIKEY_ENABLED"] == "true"
    key = compose_default(env["AUTHENTICATION_APIKEY_ALLOWED_KEYS"])
    url = parse_store_url("QUANTMESH_VECTORS_URL", f"weaviate://:{key}@weaviate:8080", SCHEMES)
    assert auth_headers(url) == {"Authorization": f"Bearer {key}"}
    assert url.redacted() == "weaviate://:***@weaviate:8080"
    assert auth_headers(parse_store_url("S", "weaviate://weaviate:8080", SCHEMES)) == {}


def test_the_stacks_vectors_url_names_the_weaviate_service_with_its_key() -> None:
    stores = compose()["x-stores"]
    allowed = compose_default(
        weaviate_service()["environment"]["AUTHENTICATION_APIKEY_ALLOWED_KEYS"]
    )
    settings = [name for name in stores if name.endswith("VECTORS_URL")]
    assert "QUANTMESH_VECTORS_URL" in settings
    for setting in settings:
        resolved = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", stores[setting])  # compose's defaults
        url = parse_store_url(setting, resolved, SCHEMES)
        assert (url.scheme, url.host, url.port) == ("weaviate", "weaviate", 8080)
        assert auth_headers(url) == {"Authorization": f"Bearer {allowed}"}


def test_the_adapter_waits_on_the_health_check_the_compose_service_uses() -> None:
    test = weaviate_service()["healthcheck"]["test"]
    assert any(part.endswith(READY_PATH) for part in test)


def test_searches_set_their_limit_so_the_servers_default_limit_does_not_cut_them() -> None:
    default_limit = int(weaviate_service()["environment"]["QUERY_DEFAULTS_LIMIT"])
    k = default_limit * 4
    assert f"limit: {k}" in near_vector_query(DEFAULT_COLLECTION, np.ones(4, np.float32), k)


def test_the_collection_is_cosine_hnsw_with_typed_properties() -> None:
    definition = collection_definition("Other")
    assert definition["class"] == "Other"
    assert definition["vectorIndexType"] == "hnsw"
    assert definition["vectorIndexConfig"] == {"distance": "cosine"}
    types = {p["name"]: p["dataType"] for p in definition["properties"]}
    assert types == {
        "symbol": ["text"],
        # number, not int: GraphQL's 32-bit Int cannot carry epoch milliseconds.
        "timeMsc": ["number"],
        "horizonMs": ["number"],
        "outcomeMsc": ["number"],
        "nextReturnBps": ["number"],
    }
    (symbol,) = [p for p in definition["properties"] if p["name"] == "symbol"]
    assert symbol["tokenization"] == "field"
    # indexSearchable is valid on text only; Weaviate refuses it elsewhere.
    assert all(
        "indexSearchable" not in p for p in definition["properties"] if p["dataType"] != ["text"]
    )
    assert T0 + H < 2**53  # times stay exact in float64


# -- requests ---------------------------------------------------------------------------


def state(time_msc: int = T0, symbol: str = "EURUSD") -> MarketState:
    return MarketState.of(symbol, time_msc, [3.0, 4.0], 12.5, H)


def test_the_batch_body_carries_ids_vectors_and_the_outcome_time() -> None:
    body = batch_body("MarketState", [state(), state(T0 + H, "GBPUSD")])
    first = body["objects"][0]
    assert first["class"] == "MarketState"
    assert first["id"] == state().id
    assert first["properties"] == {
        "symbol": "EURUSD",
        "timeMsc": T0,
        "horizonMs": H,
        "outcomeMsc": T0 + H,
        "nextReturnBps": 12.5,
    }
    assert first["vector"] == pytest.approx([0.6, 0.8])
    assert body["objects"][1]["properties"]["symbol"] == "GBPUSD"
    json.dumps(body)  # plain JSON types only


@pytest.mark.parametrize(
    ("symbol", "before_ms", "where"),
    [
        (None, None, None),
        ("EURUSD", None, '{path: ["symbol"], operator: Equal, valueText: "EURUSD"}'),
        (None, T0, f'{{path: ["outcomeMsc"], operator: LessThanEqual, valueNumber: {T0}}}'),
        (
            "EURUSD",
            T0,
            '{operator: And, operands: [{path: ["symbol"], operator: Equal, valueText: "EURUSD"}, '
            f'{{path: ["outcomeMsc"], operator: LessThanEqual, valueNumber: {T0}}}]}}',
        ),
    ],
)
def test_the_search_query_filters_by_symbol_and_outcome_time(
    symbol: str | None, before_ms: int | None, where: str | None
) -> None:
    vector = np.array([0.6, 0.8], np.float32)
    query = near_vector_query("MarketState", vector, 7, symbol, before_ms)
    assert query.startswith("{ Get { MarketState(nearVector: {vector: [")
    assert "limit: 7" in query
    assert "_additional { id distance vector }" in query
    assert balanced(query)
    numbers = re.search(r"vector: \[([^\]]*)\]", query)
    assert numbers is not None
    assert [float(x) for x in numbers.group(1).split(",")] == [float(v) for v in vector]
    if where is None:
        assert "where:" not in query
    else:
        assert f"where: {where})" in query


def test_a_symbol_is_quoted_as_a_graphql_string() -> None:
    query = near_vector_query("MarketState", np.ones(2, np.float32), 1, 'EUR"USD\\x')
    assert 'valueText: "EUR\\"USD\\\\x"' in query
    assert balanced(query)


def test_the_count_query_aggregates_the_collection() -> None:
    assert count_query("MarketState") == "{ Aggregate { MarketState { meta { count } } } }"
    assert balanced(count_query("MarketState"))


def test_neighbours_are_read_from_a_get_answer_in_its_order() -> None:
    a, b = state(), state(T0 + H)
    answer = {
        "data": {
            "Get": {
                "MarketState": [
                    {
                        "symbol": "EURUSD",
                        "timeMsc": float(b.time_msc),
                        "horizonMs": H,
                        "nextReturnBps": -3.25,
                        "_additional": {"id": b.id, "distance": 0.0123, "vector": [0.6, 0.8]},
                    },
                    {
                        "symbol": "EURUSD",
                        "timeMsc": 1.7356896e12,  # as a float renders: still exact
                        "horizonMs": 3.6e6,
                        "nextReturnBps": 1,
                        "_additional": {"id": a.id, "distance": 0.5, "vector": [0.0, 2.0]},
                    },
                ]
            }
        }
    }
    first, second = neighbours_from(answer, "MarketState")
    assert (first.state.id, first.state.time_msc, first.distance) == (b.id, b.time_msc, 0.0123)
    assert first.state.next_return_bps == -3.25
    assert (second.state.time_msc, second.state.horizon_ms) == (T0, H)
    assert second.state.vector.tolist() == [0.0, 1.0]
    assert math.isclose(second.distance, 0.5)
    assert neighbours_from({"data": {"Get": {"MarketState": None}}}, "MarketState") == []


def test_a_graphql_error_is_raised_with_weaviates_words() -> None:
    answer = {
        "data": {"Get": {"MarketState": None}},
        "errors": [{"message": "vector lengths don't match"}],
    }
    with pytest.raises(VectorStoreError, match="vector lengths don't match"):
        neighbours_from(answer, "MarketState")


def test_failed_objects_of_a_batch_answer_are_listed() -> None:
    answer = [
        {"id": "a", "result": {}},
        {
            "id": "b",
            "result": {"errors": {"error": [{"message": "new node has a vector with length 3"}]}},
        },
    ]
    assert _batch_errors(answer) == ["object 1: new node has a vector with length 3"]
    assert _batch_errors([{"id": "a", "result": {}}]) == []

"""The ArangoDB adapter's parts that need no server: URLs, keys, the schema against
docker-compose.yml, and the start-up failure on an address where nothing listens.

The queries themselves run in tests/contract/test_graph.py when QUANTMESH_TEST_ARANGO_URL
names a server.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import yaml

from quantmesh.runtime.errors import InvalidArgument
from quantmesh.storage.graph import SCHEMES, NodeKind, open_graph
from quantmesh.storage.graph.arango import (
    AQL,
    DEFAULT_PORT,
    EDGE_COLLECTIONS,
    GRAPHS,
    INDEXES,
    NODE_COLLECTIONS,
    VERTEX_COLLECTIONS,
    ConnectionSettings,
    arango_key,
    connection_settings,
)
from quantmesh.storage.urls import StoreConfigError, StoreUnavailableError, parse_store_url

ROOT = Path(__file__).resolve().parents[3]
SETTING = "QUANTMESH_GRAPH_URL"
# ArangoDB's rules: collection names (traditional naming) and document keys.
COLLECTION_NAME = re.compile(r"[a-zA-Z][a-zA-Z0-9_-]{0,255}")
KEY = re.compile(r"[a-zA-Z0-9_\-:.@()+,=;$!*'%]{1,254}")


def _settings(url: str) -> ConnectionSettings:
    return connection_settings(parse_store_url(SETTING, url, SCHEMES))


def test_urls_map_to_http_or_https_with_defaults() -> None:
    plain = _settings("arangodb://reader:s%40cret@graph.internal:8530/fx")
    assert (plain.host, plain.database, plain.username, plain.password) == (
        "http://graph.internal:8530",
        "fx",
        "reader",
        "s@cret",
    )
    secure = _settings("arangodbs://root:pw@graph.internal/")
    assert (secure.host, secure.database, secure.username) == (
        "https://graph.internal:8529",
        "quantmesh",
        "root",
    )
    assert _settings("arangodb://graph?timeout=2.5").timeout == 2.5
    assert "pw" not in repr(secure)
    with pytest.raises(StoreConfigError, match=f"{SETTING}: timeout"):
        _settings("arangodb://graph?timeout=soon")


def test_keys_are_encoded_into_what_arangodb_accepts_and_decode_back() -> None:
    for key in ("EURUSD", "dec-1", "EURUSD/1700000000000#1", "a b~c", "é%20", "x" * 60):
        encoded = arango_key(key)
        assert KEY.fullmatch(encoded), encoded
        assert unquote(encoded) == key
    assert arango_key("eurusd-h1@3") == "eurusd-h1@3"  # readable where allowed
    with pytest.raises(InvalidArgument, match="longer"):
        arango_key("é" * 100)


def test_schema_is_consistent() -> None:
    assert set(NODE_COLLECTIONS) == set(NodeKind)
    names = [*VERTEX_COLLECTIONS, *EDGE_COLLECTIONS]
    assert len(set(names)) == len(names)
    assert all(COLLECTION_NAME.fullmatch(name) for name in names)
    for definitions in GRAPHS.values():
        for definition in definitions:
            assert definition["edge_collection"] in EDGE_COLLECTIONS
            ends = definition["from_vertex_collections"] + definition["to_vertex_collections"]
            assert set(ends) <= set(VERTEX_COLLECTIONS)
    assert set(INDEXES) <= set(names)
    # Every collection an AQL text names (after IN/INTO) exists; @@collection is bound.
    named = set()
    for name, text in AQL.items():
        for target in re.findall(r"\b(?:IN|INTO)\s+([A-Za-z_@][\w@]*)", text):
            if target.startswith("@") or target in {"links", "ends"}:  # bound or subquery
                continue
            assert target in names, (name, target)
            named.add(target)
        for graph in re.findall(r'GRAPH "(\w+)"', text):
            assert graph in GRAPHS, (name, graph)
    assert named == {"currencies", "symbols", "provenance_links"}


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return compose


def _default(value: str) -> str:
    """``${VAR:-default}`` → ``default`` (compose's interpolation, defaults only)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def test_the_adapter_fits_composes_arangodb_service() -> None:
    compose = _compose()
    service = compose["services"]["arangodb"]
    # 3.7 brought overwriteMode to AQL INSERT, which every write here uses.
    image, version = service["image"].split(":")
    assert image == "arangodb"
    assert tuple(int(part) for part in version.split(".")[:2]) >= (3, 7)
    # Authentication is on (root with a password), so the URL carries root's password.
    environment = service["environment"]
    assert "ARANGO_NO_AUTH" not in environment
    root_password = _default(environment["ARANGO_ROOT_PASSWORD"])
    assert root_password
    assert f":{DEFAULT_PORT}/" in " ".join(service["healthcheck"]["test"])
    # The services' store addresses: the server they name is the one our URL reaches.
    stores = compose["x-stores"]
    settings = _settings(_default(stores[SETTING]))
    assert settings.host == f"http://arangodb:{DEFAULT_PORT}"
    assert (settings.username, settings.password) == ("root", root_password)
    # No database is created by the image besides _system: root lets the adapter create it.
    assert settings.database != "_system"


def test_an_unreachable_server_fails_at_start_naming_the_setting() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match=SETTING) as caught:
        open_graph(f"arangodb://root:hidden@127.0.0.1:{port}/quantmesh", SETTING)
    assert "hidden" not in str(caught.value)
    assert time.monotonic() - started < 5  # a few quick tries, not python-arango's backoff

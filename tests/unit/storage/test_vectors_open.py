"""open_vectors: the URL picks the adapter; a wrong or unreachable one names the setting."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from quantmesh.storage.resilience import Backoff
from quantmesh.storage.urls import StoreConfigError, StoreUnavailableError
from quantmesh.storage.vectors import DEFAULT_URL, open_vectors
from quantmesh.storage.vectors.memory import NumpyVectors


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens on it once the socket is closed


def test_the_default_is_the_in_process_numpy_store() -> None:
    assert DEFAULT_URL == "memory://"
    store = open_vectors(DEFAULT_URL)
    assert isinstance(store, NumpyVectors)
    assert store.count() == 0


def test_a_file_url_opens_a_numpy_store_on_that_file(tmp_path: Path) -> None:
    store = open_vectors(f"file:///{tmp_path}/sub/states.npz")
    assert isinstance(store, NumpyVectors)
    store.close()  # nothing written, nothing to save


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis://localhost:6379", "scheme 'redis'"),
        ("", "is empty"),
        ("memory://somewhere", "takes no host or path"),
        ("file://host/x.npz", "three slashes"),
        ("weaviate://:key@localhost:8080?collection=lower", "not a Weaviate collection name"),
        ("weaviate:///no-host", "names no host"),
    ],
)
def test_a_wrong_url_fails_naming_the_setting(url: str, why: str) -> None:
    with pytest.raises(StoreConfigError, match=why) as raised:
        open_vectors(url, "QUANTMESH_DECISION_VECTORS_URL")
    assert "QUANTMESH_DECISION_VECTORS_URL" in str(raised.value)
    assert ":key@" not in str(raised.value)


def test_a_file_that_is_not_a_store_fails_naming_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "states.npz"
    path.write_bytes(b"not numpy")
    with pytest.raises(StoreConfigError, match=r"QUANTMESH_VECTORS_URL.*not a vectors store"):
        open_vectors(f"file:///{path}")


def test_an_unreachable_weaviate_fails_at_start_naming_the_setting() -> None:
    url = f"weaviate://:secret@127.0.0.1:{closed_port()}"
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as raised:
        open_vectors(url, "QUANTMESH_DECISION_VECTORS_URL", backoff=Backoff(2, 0.01, 0.01))
    message = str(raised.value)
    assert message.startswith("QUANTMESH_DECISION_VECTORS_URL=weaviate://:***@127.0.0.1:")
    assert "not reachable" in message
    assert "readiness check failed 2 times" in message
    assert "secret" not in message
    assert time.monotonic() - started < 5

"""The vectors port: market states embedded as vectors, and similarity search over them.

numpy (exact cosine search) in-process by default, ``memory://`` or a ``file:///….npz``;
Weaviate when the URL names a server (``weaviate://:KEY@host:8080``). See
:mod:`.port` for the interface, :mod:`.embedding` for how feature rows become states.
"""

from __future__ import annotations

from quantmesh.storage.resilience import Backoff
from quantmesh.storage.urls import StoreConfigError, parse_store_url
from quantmesh.storage.vectors.memory import NumpyVectors
from quantmesh.storage.vectors.port import (
    MarketState,
    Neighbour,
    VectorPort,
    VectorStoreError,
    state_id,
)

__all__ = [
    "DEFAULT_URL",
    "SCHEMES",
    "MarketState",
    "Neighbour",
    "VectorPort",
    "VectorStoreError",
    "open_vectors",
    "state_id",
]

DEFAULT_URL = "memory://"
SCHEMES = {
    "memory": "memory://",
    "file": "file:///var/market-states.npz",
    "weaviate": "weaviate://:API_KEY@weaviate:8080",
    "weaviates": "weaviates://:API_KEY@cluster.example.com",
}


def open_vectors(
    url: str, setting: str = "QUANTMESH_VECTORS_URL", *, backoff: Backoff | None = None
) -> VectorPort:
    """The store ``url`` names; StoreConfigError/StoreUnavailableError name ``setting``.

    ``backoff`` bounds the start-up wait for a server (the adapter's default otherwise).
    """
    parsed = parse_store_url(setting, url, SCHEMES)
    if parsed.scheme == "memory":
        if parsed.host or parsed.path.strip("/"):
            raise StoreConfigError(f"{setting}={url!r}: memory:// takes no host or path")
        return NumpyVectors(url="memory://")
    if parsed.scheme == "file":
        try:
            flush_seconds = float(parsed.query.get("flush_seconds", "5"))
            return NumpyVectors(parsed.file, url=parsed.raw, flush_seconds=flush_seconds)
        except ValueError as error:
            raise StoreConfigError(f"{setting}={url!r}: {error}") from None
    # Imported here: httpx is needed only by deployments that use Weaviate.
    from quantmesh.storage.vectors.weaviate import WeaviateVectors

    if backoff is None:
        return WeaviateVectors(parsed)
    return WeaviateVectors(parsed, startup_backoff=backoff)

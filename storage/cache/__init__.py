"""The cache port: in-process by default, Redis or DragonflyDB when the URL names a server.

``QUANTMESH_CACHE_URL`` (or a service's own setting, e.g. ``QUANTMESH_INFERENCE_CACHE_URL``)
picks the adapter:

- ``memory://`` (the default): :class:`~quantmesh.storage.cache.memory.MemoryCache`,
  private to the process;
- ``redis://host:6379/0`` or ``rediss://…`` (TLS): :class:`~quantmesh.storage.cache.redis.
  RedisCache`, shared by every process that names the same server. DragonflyDB takes the
  same URLs.

See :mod:`quantmesh.storage.cache.port` for what is stored and
:mod:`quantmesh.storage.cache.redis` for the key layout.
"""

from __future__ import annotations

from quantmesh.storage.cache.memory import MemoryCache
from quantmesh.storage.cache.port import CachePort, LatestFeatures
from quantmesh.storage.cache.redis import DEFAULT_BACKOFF, RedisCache
from quantmesh.storage.resilience import Backoff
from quantmesh.storage.urls import StoreConfigError, parse_store_url

__all__ = [
    "DEFAULT_URL",
    "SCHEMES",
    "CachePort",
    "LatestFeatures",
    "MemoryCache",
    "RedisCache",
    "open_cache",
]

DEFAULT_URL = "memory://"
SCHEMES = {
    "memory": "memory://",
    "redis": "redis://host:6379/0",
    "rediss": "rediss://user:password@host:6380/0",
}


def open_cache(
    url: str,
    setting: str = "QUANTMESH_CACHE_URL",
    *,
    backoff: Backoff | None = None,
    connect_backoff: Backoff | None = None,
) -> CachePort:
    """The cache ``url`` names; StoreConfigError/StoreUnavailableError name ``setting``.

    ``backoff`` bounds the retries of every call (a latency-bound caller such as the
    inference hot path wants a short one), ``connect_backoff`` those of the check that
    the server answers at open; both default to about three seconds in all.
    """
    parsed = parse_store_url(setting, url, SCHEMES)
    if parsed.scheme == "memory":
        if parsed.host or parsed.path.strip("/"):
            raise StoreConfigError(
                f"{setting}={url!r}: the in-process cache takes no host or path; use memory://"
            )
        return MemoryCache()
    return RedisCache.connect(
        parsed,
        backoff=backoff or DEFAULT_BACKOFF,
        connect_backoff=connect_backoff or DEFAULT_BACKOFF,
    )

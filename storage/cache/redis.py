"""The cache on Redis or DragonflyDB (which speaks the Redis protocol), through redis-py.

Key layout (every key under ``quantmesh:``, so the store can be shared with others):

- ``quantmesh:prediction:<model_key>:<digest as 16 hex digits>`` → the value as text
  (``repr`` of the float, exact both ways), set with ``SET … PX`` (the TTL in ms), a
  batch in one Lua call;
- ``quantmesh:features:latest:<symbol>`` → a hash: ``time_msc`` (decimal), ``names``
  (a JSON list) and ``values`` (float64 little-endian bytes, NaN kept). A small Lua script
  writes it only when the stored ``time_msc`` is not newer, atomically;
- ``quantmesh:count:<key>:<window ms>:<window number>`` → an integer, ``INCRBY`` then
  ``PEXPIRE`` to the window's end in one ``MULTI``; the window number in the key makes
  the next window start at 0 without any reset.

A batch is one round trip (``MGET``, or one script call). Every call is retried
with backoff on connection errors and timeouts (:func:`~quantmesh.storage.resilience.
retrying_sync`; redis-py's own retries are off, so one policy governs), then raises
:class:`~quantmesh.storage.urls.StoreUnavailableError` naming the setting. All writes are
idempotent but ``hit``: a counter whose reply was lost to a dropped connection may count
twice when retried, which errs on the safe side for a rate limit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar, cast

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.typing import EncodableT

from quantmesh.storage.cache.port import LatestFeatures, check_predictions, window_of
from quantmesh.storage.resilience import Backoff, retrying_sync
from quantmesh.storage.urls import StoreConfigError, StoreUnavailableError, StoreUrl

__all__ = ["NAMESPACE", "RedisCache"]

T = TypeVar("T")
NAMESPACE = "quantmesh"
# A cache answer that takes longer than this is not worth waiting for; the URL's
# ``?socket_timeout=`` / ``?socket_connect_timeout=`` override it.
DEFAULT_TIMEOUT_S = 2.0
# redis-py's errors are not the builtin ones; OSError covers sockets failing under it.
TRANSIENT: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError, OSError)

DEFAULT_BACKOFF = Backoff()

# KEYS: prediction keys; ARGV: their values, then the TTL in ms. One command instead of
# a pipeline of SETs: redis-py packs a 1,000-row batch about 4x faster this way.
_PUT_PREDICTIONS = """
local ttl_ms = ARGV[#ARGV]
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[i], 'PX', ttl_ms)
end
return #KEYS
"""

# KEYS[1] the hash; ARGV: time_msc, names (JSON), values (float64 LE bytes).
_PUT_LATEST = """
local stored = redis.call('HGET', KEYS[1], 'time_msc')
if stored and tonumber(stored) > tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'time_msc', ARGV[1], 'names', ARGV[2], 'values', ARGV[3])
return 1
"""


class RedisCache:
    """The :class:`~quantmesh.storage.cache.port.CachePort` on Redis or DragonflyDB.

    Open it with :meth:`connect`, which checks the server answers.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        url: str,
        setting: str,
        backoff: Backoff = DEFAULT_BACKOFF,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self._client = client
        self._store = f"the cache at {url} ({setting})"
        self._backoff = backoff
        self._wall_clock = wall_clock
        self._put_predictions = client.register_script(_PUT_PREDICTIONS)
        self._put_latest = client.register_script(_PUT_LATEST)

    @classmethod
    def connect(
        cls,
        url: StoreUrl,
        *,
        backoff: Backoff = DEFAULT_BACKOFF,
        connect_backoff: Backoff | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> RedisCache:
        """Connect to the server ``url`` names and check that it answers.

        ``backoff`` governs every later call; ``connect_backoff`` (by default the same)
        this first check, which may wait longer for a server that is still starting.

        Raises
        ------
        StoreConfigError
            For a bad database number or options, or credentials the server refuses.
        StoreUnavailableError
            When the server cannot be reached (after the backoff's attempts).
        """
        db = url.path.strip("/")
        if db and not db.isdigit():
            raise StoreConfigError(
                f"{url.setting}={url.redacted()!r}: the path must be a database number, "
                "e.g. redis://host:6379/0"
            )
        try:
            client = redis.Redis.from_url(
                url.raw,
                socket_timeout=DEFAULT_TIMEOUT_S,
                socket_connect_timeout=DEFAULT_TIMEOUT_S,
                retry=Retry(NoBackoff(), 0),
            )
        except (ValueError, TypeError) as error:
            raise StoreConfigError(f"{url.setting}={url.redacted()!r}: {error}") from None
        cache = cls(
            client, url=url.redacted(), setting=url.setting, backoff=backoff, wall_clock=wall_clock
        )

        def ping() -> None:
            # Raised as StoreConfigError (not retried): no retry cures a wrong password.
            try:
                client.ping()
            except redis.AuthenticationError as error:  # a subclass of ConnectionError
                raise StoreConfigError(
                    f"{url.setting}={url.redacted()!r}: the server refused the credentials "
                    f"({error})"
                ) from None
            except redis.ResponseError as error:  # e.g. "DB index is out of range"
                raise StoreConfigError(f"{url.setting}={url.redacted()!r}: {error}") from None

        patience = connect_backoff or backoff
        try:
            retrying_sync(
                ping, store=cache._store, what="connect", transient=TRANSIENT, backoff=patience
            )
        except StoreConfigError:
            client.close()
            raise
        except StoreUnavailableError as error:
            client.close()
            cause = error.__cause__
            raise StoreUnavailableError(
                f"{url.setting}={url.redacted()!r}: cannot reach Redis/Dragonfly after "
                f"{patience.attempts} attempts ({type(cause).__name__}: {cause}); start the "
                f"server or point {url.setting} at one (memory:// needs none)"
            ) from error
        return cache

    def _call(self, operation: Callable[[], T], what: str) -> T:
        return retrying_sync(
            operation, store=self._store, what=what, transient=TRANSIENT, backoff=self._backoff
        )

    # -- predictions ---------------------------------------------------------------------

    def get_predictions(self, model_key: str, digests: Sequence[int]) -> list[float | None]:
        if not digests:
            return []
        keys = [_prediction_key(model_key, digest) for digest in digests]
        raw = self._call(lambda: self._client.mget(keys), "get_predictions")
        return [None if value is None else float(value) for value in raw]

    def put_predictions(
        self, model_key: str, digests: Sequence[int], values: Sequence[float], ttl_s: float
    ) -> None:
        check_predictions(digests, values, ttl_s)
        if not digests:
            return
        ttl_ms = max(1, round(ttl_s * 1000))
        keys = [_prediction_key(model_key, digest) for digest in digests]
        args: list[EncodableT] = [repr(float(value)) for value in values]
        args.append(ttl_ms)
        self._call(lambda: self._put_predictions(keys=keys, args=args), "put_predictions")

    # -- latest features -----------------------------------------------------------------

    def put_latest_features(self, latest: Mapping[str, LatestFeatures]) -> None:
        if not latest:
            return
        writes: list[tuple[str, list[EncodableT]]] = [
            (
                _latest_key(symbol),
                [
                    features.time_msc,
                    json.dumps(features.names),
                    np.asarray(features.values, "<f8").tobytes(),
                ],
            )
            for symbol, features in latest.items()
        ]

        def put() -> None:
            pipe = self._client.pipeline(transaction=False)
            for key, args in writes:
                self._put_latest(keys=[key], args=args, client=pipe)
            pipe.execute()

        self._call(put, "put_latest_features")

    def latest_features(self, symbol: str) -> LatestFeatures | None:
        key = _latest_key(symbol)
        # decode_responses is off: every reply is bytes.
        stored = cast(
            dict[bytes, bytes], self._call(lambda: self._client.hgetall(key), "latest_features")
        )
        if not stored:
            return None
        values = np.frombuffer(stored[b"values"], "<f8")
        return LatestFeatures(
            time_msc=int(stored[b"time_msc"]),
            names=tuple(json.loads(stored[b"names"])),
            values=tuple(values.tolist()),
        )

    # -- counters ------------------------------------------------------------------------

    def hit(self, key: str, window_s: float, amount: int = 1) -> int:
        if amount < 1:
            raise ValueError(f"amount must be 1 or more, got {amount}")
        window_ms, number, left_ms = window_of(self._wall_clock(), window_s)
        counter = _counter_key(key, window_ms, number)

        def increment() -> int:
            pipe = self._client.pipeline(transaction=True)
            pipe.incrby(counter, amount)
            # Relative, not PEXPIREAT: the clocks of this host and the server may differ.
            pipe.pexpire(counter, left_ms)
            count, _ = pipe.execute()
            return int(count)

        return self._call(increment, "hit")

    def count(self, key: str, window_s: float) -> int:
        window_ms, number, _ = window_of(self._wall_clock(), window_s)
        counter = _counter_key(key, window_ms, number)
        value = self._call(lambda: self._client.get(counter), "count")
        return 0 if value is None else int(value)

    def close(self) -> None:
        self._client.close()


def _prediction_key(model_key: str, digest: int) -> str:
    return f"{NAMESPACE}:prediction:{model_key}:{digest:016x}"


def _latest_key(symbol: str) -> str:
    return f"{NAMESPACE}:features:latest:{symbol}"


def _counter_key(key: str, window_ms: int, number: int) -> str:
    return f"{NAMESPACE}:count:{key}:{window_ms}:{number}"

"""Store URLs: which adapter a setting names, with errors that name the setting.

Every store is configured by one URL (``QUANTMESH_DATABASE_URL=postgresql://…``,
``QUANTMESH_CACHE_URL=memory://``, …). :func:`parse_store_url` checks the scheme against
the ones the port has adapters for and keeps the parts the adapters need; a wrong URL
fails at start-up with :class:`StoreConfigError`, whose message names the variable, what
was wrong and what would be right.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["StoreConfigError", "StoreUnavailableError", "StoreUrl", "parse_store_url"]


class StoreConfigError(ValueError):
    """A store's URL is malformed or names no adapter; the message names the setting."""


class StoreUnavailableError(ConnectionError):
    """A store cannot be reached (at start-up, or after the retries at run time)."""


@dataclass(frozen=True)
class StoreUrl:
    """A parsed store URL.

    ``path`` is the filesystem path for file-backed schemes (``sqlite:///var/x.db`` →
    ``var/x.db``; ``sqlite:////abs/x.db`` → ``/abs/x.db``) and the URL path otherwise.
    ``raw`` keeps the URL as given, for adapters that take one (asyncpg, redis-py);
    :meth:`redacted` hides its password for logs and errors.
    """

    setting: str
    raw: str
    scheme: str
    host: str = ""
    port: int | None = None
    username: str = ""
    password: str = field(default="", repr=False)
    path: str = ""
    query: Mapping[str, str] = field(default_factory=dict)

    @property
    def file(self) -> Path:
        """The path of a file-backed store (``sqlite:///…``, ``chdb:///…``)."""
        return Path(self.path)

    def redacted(self) -> str:
        if not self.password:
            return self.raw
        return self.raw.replace(f":{self.password}@", ":***@", 1)


def parse_store_url(setting: str, url: str, schemes: Mapping[str, str]) -> StoreUrl:
    """Parse ``url``, the value of the environment variable ``setting``.

    ``schemes`` maps each accepted scheme to an example, e.g.
    ``{"sqlite": "sqlite:///var/quantmesh.db", "postgresql": "postgresql://user@host/db"}``.
    """
    examples = " or ".join(schemes.values())
    text = url.strip()
    if not text:
        raise StoreConfigError(f"{setting} is empty; set it to {examples}")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as error:
        raise StoreConfigError(
            f"{setting}={text!r} is not a valid URL ({error}); use {examples}"
        ) from None
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        got = f"scheme {scheme!r}" if scheme else "no scheme"
        raise StoreConfigError(
            f"{setting}={_hide(text, parts.password)!r} has {got}; use {examples}"
        )
    netloc_path = parts.path
    if scheme in _FILE_SCHEMES:
        if parts.netloc:
            raise StoreConfigError(
                f"{setting}={text!r}: a {scheme} URL names a file, with three slashes "
                f"(relative: {scheme}:///var/x, absolute: {scheme}:////srv/x)"
            )
        netloc_path = unquote(parts.path[1:]) if parts.path.startswith("/") else parts.path
        if not netloc_path:
            raise StoreConfigError(f"{setting}={text!r} names no file; e.g. {schemes[scheme]}")
    return StoreUrl(
        setting=setting,
        raw=text,
        scheme=scheme,
        host=parts.hostname or "",
        port=port,
        username=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        path=netloc_path,
        query=dict(parse_qsl(parts.query)),
    )


# Schemes whose URL is a path on this machine.
_FILE_SCHEMES = frozenset({"sqlite", "chdb", "file"})


def _hide(text: str, password: str | None) -> str:
    return text.replace(f":{password}@", ":***@", 1) if password else text

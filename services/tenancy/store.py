"""Tenants, API keys and accounts on the relational port (SQLite or PostgreSQL).

The state a tenancy service (``quantmesh.tenancy.v1``) needs, as a pure store:

- a **tenant** has a unique name, a tier (FREE … ENTERPRISE) and can be suspended;
- an **API key** is ``<key id>.<secret>``: the key id is public and names the key; only
  the SHA-256 of the whole key is stored, so a leaked database cannot authenticate
  anybody. :meth:`TenantStore.authenticate` finds a key by that hash, refuses revoked,
  expired or suspended ones, and records when it was last used;
- an **account** (paper or live trading) belongs to one tenant, with its currency and
  starting balance as exact decimal text.

Every change is one transaction; bad input raises
:class:`~quantmesh.runtime.errors.InvalidArgument`, unknown ids
:class:`~quantmesh.runtime.errors.NotFound`, a taken name or id
:class:`~quantmesh.runtime.errors.AlreadyExists` — with a message a person understands.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from enum import IntEnum

from quantmesh.runtime.errors import AlreadyExists, InvalidArgument, NotFound
from quantmesh.storage.relational import Database, IntegrityError, Transaction
from quantmesh.storage.relational.migrations import load_migrations, migrate

__all__ = ["Account", "ApiKey", "Tenant", "TenantStore", "Tier"]

MIGRATIONS = load_migrations("quantmesh.services.tenancy")
KEY_PREFIX = "qmk_"
MAX_PAGE = 1_000


class Tier(IntEnum):
    """``quantmesh.tenancy.v1.Tier``."""

    FREE = 1
    BASIC = 2
    PRO = 3
    ENTERPRISE = 4


@dataclass(frozen=True, slots=True)
class Tenant:
    tenant_id: str
    name: str
    tier: Tier
    suspended: bool
    created_time_ms: int


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key's metadata; never its secret."""

    key_id: str
    tenant_id: str
    label: str
    scopes: tuple[str, ...]
    created_time_ms: int
    expire_time_ms: int  # 0: never
    revoked_time_ms: int = 0
    last_used_time_ms: int = 0

    def active(self, now_ms: int) -> bool:
        return not self.revoked_time_ms and not (
            self.expire_time_ms and now_ms >= self.expire_time_ms
        )


@dataclass(frozen=True, slots=True)
class Account:
    account_id: str
    tenant_id: str
    currency: str
    starting_balance: Decimal
    created_time_ms: int


_TENANT = "SELECT tenant_id, name, tier, suspended, created_time_ms FROM tenants"
_KEY = (
    "SELECT key_id, tenant_id, label, scopes, created_time_ms, expire_time_ms, "
    "revoked_time_ms, last_used_time_ms FROM api_keys"
)
_ACCOUNT = (
    "SELECT account_id, tenant_id, currency, starting_balance, created_time_ms FROM tenant_accounts"
)


def _hash(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


class TenantStore:
    """Tenancy state in ``database`` (its schema is migrated when the store opens)."""

    def __init__(self, database: Database, clock: Callable[[], int] | None = None) -> None:
        self._db = database
        self._clock = clock or (lambda: time.time_ns() // 1_000_000)
        migrate(database, "tenancy", MIGRATIONS)

    # --- tenants -------------------------------------------------------------------

    def create_tenant(self, name: str, tier: Tier = Tier.FREE) -> Tenant:
        name = name.strip()
        if not 1 <= len(name) <= 100:
            raise InvalidArgument("a tenant name is 1 to 100 characters")
        tenant = Tenant(f"tnt_{secrets.token_hex(8)}", name, Tier(tier), False, self._clock())
        try:
            with self._db.transaction() as tx:
                tx.execute(
                    "INSERT INTO tenants (tenant_id, name, tier, suspended, created_time_ms) "
                    "VALUES (?, ?, ?, 0, ?)",
                    tenant.tenant_id,
                    tenant.name,
                    int(tenant.tier),
                    tenant.created_time_ms,
                )
        except IntegrityError:
            raise AlreadyExists(f"a tenant named {name!r} already exists") from None
        return tenant

    def tenant(self, tenant_id: str) -> Tenant:
        with self._db.read() as tx:
            return self._tenant(tx, tenant_id)

    def tenants(self, page_size: int = 100, after: str = "") -> list[Tenant]:
        """Tenants ordered by id, ``page_size`` at a time, after the id ``after``."""
        if not 1 <= page_size <= MAX_PAGE:
            raise InvalidArgument(f"page_size must be 1..{MAX_PAGE}, got {page_size}")
        rows = self._db.fetch(
            f"{_TENANT} WHERE tenant_id > ? ORDER BY tenant_id LIMIT ?", after, page_size
        )
        return [_tenant(row) for row in rows]

    def set_tier(self, tenant_id: str, tier: Tier) -> Tenant:
        return self._update_tenant(tenant_id, "tier", int(Tier(tier)))

    def set_suspended(self, tenant_id: str, suspended: bool) -> Tenant:
        return self._update_tenant(tenant_id, "suspended", int(suspended))

    def _update_tenant(self, tenant_id: str, column: str, value: int) -> Tenant:
        with self._db.transaction() as tx:
            changed = tx.execute(
                f"UPDATE tenants SET {column} = ? WHERE tenant_id = ?",  # noqa: S608 (constant)
                value,
                tenant_id,
            )
            if not changed:
                raise NotFound(f"no tenant {tenant_id!r}")
            return self._tenant(tx, tenant_id)

    def _tenant(self, tx: Transaction, tenant_id: str) -> Tenant:
        row = tx.fetchone(f"{_TENANT} WHERE tenant_id = ?", tenant_id)
        if row is None:
            raise NotFound(f"no tenant {tenant_id!r}")
        return _tenant(row)

    # --- API keys ------------------------------------------------------------------

    def create_api_key(
        self,
        tenant_id: str,
        label: str,
        scopes: Sequence[str] = (),
        expire_time_ms: int = 0,
    ) -> tuple[ApiKey, str]:
        """A new key of ``tenant_id``: its metadata and the full key, shown this once."""
        now = self._clock()
        if expire_time_ms and expire_time_ms <= now:
            raise InvalidArgument(
                "expire_time_ms is in the past; use 0 for a key that never expires"
            )
        if any(not scope or " " in scope for scope in scopes):
            raise InvalidArgument("a scope is a non-empty word, e.g. orders:write")
        key_id = f"{KEY_PREFIX}{secrets.token_hex(6)}"
        full_key = f"{key_id}.{secrets.token_urlsafe(32)}"
        key = ApiKey(key_id, tenant_id, label.strip(), tuple(scopes), now, expire_time_ms)
        with self._db.transaction() as tx:
            self._tenant(tx, tenant_id)  # NotFound for an unknown tenant
            tx.execute(
                "INSERT INTO api_keys (key_id, tenant_id, secret_sha256, label, scopes, "
                "created_time_ms, expire_time_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                key.key_id,
                tenant_id,
                _hash(full_key),
                key.label,
                json.dumps(list(key.scopes)),
                now,
                expire_time_ms,
            )
        return key, full_key

    def revoke_api_key(self, key_id: str) -> ApiKey:
        with self._db.transaction() as tx:
            tx.execute(
                "UPDATE api_keys SET revoked_time_ms = ? WHERE key_id = ? AND revoked_time_ms = 0",
                self._clock(),
                key_id,
            )
            row = tx.fetchone(f"{_KEY} WHERE key_id = ?", key_id)
        if row is None:
            raise NotFound(f"no API key {key_id!r}")
        return _key(row)

    def api_keys(self, tenant_id: str, include_inactive: bool = False) -> list[ApiKey]:
        now = self._clock()
        keys = [
            _key(r)
            for r in self._db.fetch(f"{_KEY} WHERE tenant_id = ? ORDER BY key_id", tenant_id)
        ]
        return keys if include_inactive else [k for k in keys if k.active(now)]

    def authenticate(self, api_key: str) -> tuple[Tenant, ApiKey] | None:
        """The tenant and key ``api_key`` names, if it is active and the tenant is not
        suspended; None otherwise (the caller answers UNAUTHENTICATED, saying no more)."""
        now = self._clock()
        with self._db.transaction() as tx:
            row = tx.fetchone(f"{_KEY} WHERE secret_sha256 = ?", _hash(api_key.strip()))
            if row is None:
                return None
            key = _key(row)
            tenant = self._tenant(tx, key.tenant_id)
            if not key.active(now) or tenant.suspended:
                return None
            tx.execute(
                "UPDATE api_keys SET last_used_time_ms = ? WHERE key_id = ?", now, key.key_id
            )
        return tenant, replace(key, last_used_time_ms=now)

    # --- accounts ------------------------------------------------------------------

    def open_account(
        self, tenant_id: str, account_id: str, currency: str, starting_balance: Decimal | str
    ) -> Account:
        currency = currency.strip().upper()
        if len(currency) != 3 or not currency.isalpha():
            raise InvalidArgument(
                f"currency must be an ISO 4217 code such as USD, got {currency!r}"
            )
        try:
            balance = Decimal(str(starting_balance))
        except InvalidOperation:
            raise InvalidArgument(
                f"starting balance {starting_balance!r} is not a number"
            ) from None
        if not balance.is_finite() or balance < 0:
            raise InvalidArgument("the starting balance is a finite amount of 0 or more")
        if not 1 <= len(account_id) <= 64:
            raise InvalidArgument("an account id is 1 to 64 characters")
        account = Account(account_id, tenant_id, currency, balance, self._clock())
        try:
            with self._db.transaction() as tx:
                self._tenant(tx, tenant_id)
                tx.execute(
                    "INSERT INTO tenant_accounts (account_id, tenant_id, currency, "
                    "starting_balance, created_time_ms) VALUES (?, ?, ?, ?, ?)",
                    account_id,
                    tenant_id,
                    currency,
                    str(balance),
                    account.created_time_ms,
                )
        except IntegrityError:
            raise AlreadyExists(f"account {account_id!r} already exists") from None
        return account

    def accounts(self, tenant_id: str) -> list[Account]:
        rows = self._db.fetch(f"{_ACCOUNT} WHERE tenant_id = ? ORDER BY account_id", tenant_id)
        return [_account(row) for row in rows]

    def account(self, account_id: str) -> Account:
        rows = self._db.fetch(f"{_ACCOUNT} WHERE account_id = ?", account_id)
        if not rows:
            raise NotFound(f"no account {account_id!r}")
        return _account(rows[0])


def _tenant(row: tuple[object, ...]) -> Tenant:
    tenant_id, name, tier, suspended, created = row
    return Tenant(
        str(tenant_id), str(name), Tier(int(str(tier))), bool(suspended), int(str(created))
    )


def _key(row: tuple[object, ...]) -> ApiKey:
    key_id, tenant_id, label, scopes, created, expires, revoked, used = row
    return ApiKey(
        str(key_id),
        str(tenant_id),
        str(label),
        tuple(json.loads(str(scopes))),
        int(str(created)),
        int(str(expires)),
        int(str(revoked)),
        int(str(used)),
    )


def _account(row: tuple[object, ...]) -> Account:
    account_id, tenant_id, currency, balance, created = row
    return Account(
        str(account_id), str(tenant_id), str(currency), Decimal(str(balance)), int(str(created))
    )

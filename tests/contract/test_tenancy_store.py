"""Tenants, API keys and accounts on both relational adapters: SQLite and PostgreSQL."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from quantmesh.runtime.errors import AlreadyExists, InvalidArgument, NotFound
from quantmesh.services.tenancy.store import TenantStore, Tier
from quantmesh.storage.relational import Database


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000_000

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(database: Database, clock: Clock) -> TenantStore:
    return TenantStore(database, clock)


def test_tenants_have_unique_names_tiers_and_pages(store: TenantStore) -> None:
    acme = store.create_tenant("Acme Capital", Tier.PRO)
    store.create_tenant("Zeta Fund")
    with pytest.raises(AlreadyExists, match="Acme Capital"):
        store.create_tenant("Acme Capital")
    with pytest.raises(InvalidArgument):
        store.create_tenant("  ")
    assert store.tenant(acme.tenant_id) == acme
    assert store.set_tier(acme.tenant_id, Tier.ENTERPRISE).tier is Tier.ENTERPRISE
    first = store.tenants(page_size=1)
    second = store.tenants(page_size=1, after=first[0].tenant_id)
    assert len(first) == len(second) == 1
    assert first[0].tenant_id < second[0].tenant_id
    with pytest.raises(NotFound):
        store.set_tier("tnt_missing", Tier.FREE)


def test_an_api_key_authenticates_until_revoked_expired_or_suspended(
    store: TenantStore, clock: Clock
) -> None:
    tenant = store.create_tenant("Acme Capital")
    key, secret = store.create_api_key(tenant.tenant_id, "ci", ["orders:write"], clock.now + 1000)
    assert secret.startswith(f"{key.key_id}.")
    found = store.authenticate(secret)
    assert found is not None
    assert found[0].tenant_id == tenant.tenant_id
    assert found[1].scopes == ("orders:write",)
    assert store.authenticate(secret + "x") is None
    store.set_suspended(tenant.tenant_id, True)
    assert store.authenticate(secret) is None
    store.set_suspended(tenant.tenant_id, False)
    clock.now += 1000
    assert store.authenticate(secret) is None  # expired
    other, other_secret = store.create_api_key(tenant.tenant_id, "desk")
    assert store.revoke_api_key(other.key_id).revoked_time_ms == clock.now
    assert store.authenticate(other_secret) is None
    assert store.api_keys(tenant.tenant_id) == []
    assert len(store.api_keys(tenant.tenant_id, include_inactive=True)) == 2


def test_a_key_secret_is_never_stored(store: TenantStore, tmp_path: Path) -> None:
    tenant = store.create_tenant("Acme Capital")
    _, secret = store.create_api_key(tenant.tenant_id, "ci")
    stored = store._db.fetch("SELECT * FROM api_keys")
    assert secret.split(".", 1)[1] not in repr(stored)


def test_accounts_belong_to_a_tenant(store: TenantStore) -> None:
    tenant = store.create_tenant("Acme Capital")
    account = store.open_account(tenant.tenant_id, "paper-1", "usd", "10000.00")
    assert account.currency == "USD"
    assert account.starting_balance == Decimal("10000.00")
    assert store.accounts(tenant.tenant_id) == [account]
    assert store.account("paper-1") == account
    with pytest.raises(AlreadyExists):
        store.open_account(tenant.tenant_id, "paper-1", "USD", 1)
    with pytest.raises(NotFound):
        store.open_account("tnt_missing", "paper-2", "USD", 1)
    with pytest.raises(InvalidArgument, match="ISO 4217"):
        store.open_account(tenant.tenant_id, "paper-3", "dollars", 1)
    with pytest.raises(InvalidArgument, match="not a number"):
        store.open_account(tenant.tenant_id, "paper-4", "USD", "lots")

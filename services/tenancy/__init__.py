"""Tenancy: tenants, their tiers, API keys and trading accounts."""

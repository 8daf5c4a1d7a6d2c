"""Metadata database: tenants, API keys, gateways, sensors (SQLite by default, PostgreSQL to scale)."""

from ironwatch.store.database import KEY_PREFIX, ApiKey, Gateway, Store, Tenant, hash_secret

__all__ = ["KEY_PREFIX", "ApiKey", "Gateway", "Store", "Tenant", "hash_secret"]

"""Metadata database: tenants, API keys, gateways, sensors (SQLite by default, PostgreSQL to scale)."""

from ironwatch.store.database import KEY_PREFIX, ApiKey, Gateway, Store, Tenant, hash_secret
from ironwatch.store.health import (
    SavedGateway,
    SavedSensor,
    declared_rates,
    load_health,
    save_health,
    set_declared_rate,
)

__all__ = [
    "KEY_PREFIX",
    "ApiKey",
    "Gateway",
    "SavedGateway",
    "SavedSensor",
    "Store",
    "Tenant",
    "declared_rates",
    "hash_secret",
    "load_health",
    "save_health",
    "set_declared_rate",
]

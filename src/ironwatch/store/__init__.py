"""Metadata database: tenants, keys, gateways, sensors, query jobs (SQLite, or PostgreSQL for scale)."""

from ironwatch.store.database import KEY_PREFIX, ApiKey, Gateway, Store, Tenant, hash_secret
from ironwatch.store.health import (
    SavedGateway,
    SavedSensor,
    declared_rates,
    load_health,
    save_health,
    set_declared_rate,
)
from ironwatch.store.queries import QueryJob, QueryRecords

__all__ = [
    "KEY_PREFIX",
    "ApiKey",
    "Gateway",
    "QueryJob",
    "QueryRecords",
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

"""Health state and declared rates in the metadata store, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from ironwatch.errors import InvalidInput, NotFound
from ironwatch.store import (
    SavedGateway,
    SavedSensor,
    Store,
    declared_rates,
    load_health,
    save_health,
    set_declared_rate,
)
from pg import empty_postgres


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ironwatch.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    s = Store(url)
    s.create_tenant("acme", "file:///srv/acme")
    s.create_tenant("other", "file:///srv/other")
    yield s
    if request.param == "postgres":
        empty_postgres(s)
    s.close()


def _sensor(sensor: str, readings: int, **changes: object) -> SavedSensor:
    saved = SavedSensor(
        "acme",
        "hall-a",
        sensor,
        "gw-1",
        1_780_000_000_000_000,
        1_780_000_060_000_000,
        1_780_000_061_000_000,
        readings,
        {"bucket_us": 60_000_000, "buckets": [[29_666_667, 12], [29_666_668, 3]]},
    )
    for name, value in changes.items():
        setattr(saved, name, value)
    return saved


def test_health_rows_round_trip_and_upsert(store: Store) -> None:
    gateway = SavedGateway("acme", "gw-1", "hall-a", 1_780_000_061_000_000, 1_780_000_060_000_000, [[1, 4]])
    save_health(store, [gateway], [_sensor("s-1", 10), _sensor("s-2", 5, last_ts_us=None)])
    gateways, sensors = load_health(store)
    assert gateways == [gateway]
    assert sorted(sensors, key=lambda s: s.sensor) == [_sensor("s-1", 10), _sensor("s-2", 5, last_ts_us=None)]

    # Saving again replaces the rows: no duplicate key error, the newest values win.
    gateway.observed_batches = [[1, 4], [7, 9]]
    save_health(store, [gateway], [_sensor("s-1", 25)])
    gateways, sensors = load_health(store)
    assert gateways[0].observed_batches == [[1, 4], [7, 9]]
    assert {s.sensor: s.readings for s in sensors} == {"s-1": 25, "s-2": 5}
    save_health(store, [], [])  # nothing to save is fine


def test_declared_rates(store: Store) -> None:
    store.discover_sensors("acme", "hall-a", ["s-1", "s-2"], "gw-1")
    store.discover_sensors("other", "hall-a", ["s-1"], "gw-1")
    assert declared_rates(store, "acme") == {}
    set_declared_rate(store, "acme", "hall-a", "s-1", 12.5)
    assert declared_rates(store, "acme") == {("hall-a", "s-1"): 12.5}
    assert declared_rates(store, "other") == {}, "a declared rate belongs to one tenant"
    assert {s["sensor"]: s["declared_rate_per_min"] for s in store.sensors("acme")} == {
        "s-1": 12.5,
        "s-2": None,
    }
    set_declared_rate(store, "acme", "hall-a", "s-1", None)
    assert declared_rates(store, "acme") == {}
    with pytest.raises(NotFound):
        set_declared_rate(store, "acme", "hall-a", "s-9", 1.0)
    with pytest.raises(InvalidInput):
        set_declared_rate(store, "acme", "hall-a", "s-1", 0.0)


def test_migration_2_adds_the_declared_rate_to_a_version_1_database(tmp_path: Path) -> None:
    """A database made by migration 1 (before the column existed) keeps its sensors and gains the column."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for ddl in (
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at DATETIME NOT NULL)",
            "INSERT INTO schema_version VALUES (1, '2026-01-01 00:00:00')",
            "CREATE TABLE tenants (name VARCHAR(64) PRIMARY KEY, root_url TEXT NOT NULL, "
            "created_at DATETIME NOT NULL)",
            "INSERT INTO tenants VALUES ('acme', 'file:///srv/acme', '2026-01-01 00:00:00')",
            "CREATE TABLE api_keys (id VARCHAR(32) PRIMARY KEY, tenant VARCHAR(64) NOT NULL, "
            "role VARCHAR(16) NOT NULL, secret_sha256 VARCHAR(64) NOT NULL UNIQUE, site VARCHAR(64), "
            "gateway VARCHAR(64), "
            "label TEXT, created_at DATETIME NOT NULL, revoked_at DATETIME)",
            "CREATE TABLE gateways (tenant VARCHAR(64), gateway VARCHAR(64), site VARCHAR(64) NOT NULL, "
            "registered_at DATETIME NOT NULL, registered_by VARCHAR(16) NOT NULL, last_seen_at DATETIME, "
            "last_heartbeat JSON, PRIMARY KEY (tenant, gateway))",
            "CREATE TABLE sensors (tenant VARCHAR(64), site VARCHAR(64), sensor VARCHAR(64), "
            "status VARCHAR(16) NOT NULL, first_seen_at DATETIME NOT NULL, first_gateway VARCHAR(64), "
            "PRIMARY KEY (tenant, site, sensor))",
            "INSERT INTO sensors VALUES "
            "('acme', 'hall-a', 's-1', 'discovered', '2026-01-01 00:00:00', 'gw-1')",
        ):
            conn.exec_driver_sql(ddl)
    engine.dispose()
    store = Store(url)
    try:
        assert store.sensors("acme")[0]["declared_rate_per_min"] is None
        set_declared_rate(store, "acme", "hall-a", "s-1", 6.0)
        assert declared_rates(store, "acme") == {("hall-a", "s-1"): 6.0}
        assert load_health(store) == ([], [])
    finally:
        store.close()

"""The metadata store, on SQLite and on a real PostgreSQL: one contract for both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ironwatch.errors import Conflict, InvalidInput, NotFound
from ironwatch.model import Role
from ironwatch.store import Store
from pg import empty_postgres


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ironwatch.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    s = Store(url)
    yield s
    if request.param == "postgres":
        empty_postgres(s)
    s.close()


def test_migrations_are_idempotent(store: Store) -> None:
    assert store.migrate() == store.migrate()
    again = Store(store.url)
    assert again.migrate() == store.migrate()
    again.close()


def test_tenants(store: Store) -> None:
    store.create_tenant("acme", "file:///srv/acme")
    assert store.tenant("acme").root_url == "file:///srv/acme"
    with pytest.raises(Conflict):
        store.create_tenant("acme", "file:///elsewhere")
    with pytest.raises(NotFound):
        store.tenant("nobody")
    with pytest.raises(InvalidInput):
        store.create_tenant("../etc", "file:///x")
    assert [t.name for t in store.tenants()] == ["acme"]


def test_keys_are_hashed_scoped_and_revocable(store: Store) -> None:
    store.create_tenant("acme", "file:///srv/acme")
    key, secret = store.create_key("acme", "gateway", site="hall-a", gateway="gw-1", label="line 3")
    assert secret.startswith("iw_") and key.id in secret
    with store.engine.begin() as conn:
        stored = [row[0] for row in conn.exec_driver_sql("SELECT secret_sha256 FROM api_keys")]
    assert secret not in stored, "the secret itself is never stored"
    found = store.key_by_secret(secret)
    assert found is not None and (found.role, found.site, found.gateway) == (Role.GATEWAY, "hall-a", "gw-1")
    assert store.key_by_secret(secret + "x") is None
    with pytest.raises(NotFound):
        store.revoke_key(key.id, tenant="other")
    store.revoke_key(secret)  # by the key itself
    assert store.key_by_secret(secret) is None
    assert store.keys("acme")[0].revoked_at is not None
    with pytest.raises(InvalidInput):
        store.create_key("acme", "superuser")


def test_gateways_belong_to_one_site(store: Store) -> None:
    store.create_tenant("acme", "file:///srv/acme")
    store.add_gateway("acme", "gw-1", "hall-a")
    assert store.add_gateway("acme", "gw-1", "hall-a").site == "hall-a"
    with pytest.raises(Conflict):
        store.add_gateway("acme", "gw-1", "hall-b")
    store.record_heartbeat("acme", "gw-1", {"buffer_depth": 3})
    gateway = store.gateway("acme", "gw-1")
    assert gateway is not None and gateway.last_heartbeat == {"buffer_depth": 3}
    assert store.gateway("acme", "gw-2") is None


def test_sensor_discovery_counts_only_new_sensors(store: Store) -> None:
    store.create_tenant("acme", "file:///srv/acme")
    assert store.discover_sensors("acme", "hall-a", ["s-1", "s-2"], "gw-1") == 2
    assert store.discover_sensors("acme", "hall-a", ["s-2", "s-3"], "gw-1") == 1
    assert [s["sensor"] for s in store.sensors("acme")] == ["s-1", "s-2", "s-3"]
    assert store.sensors("acme", "hall-b") == []

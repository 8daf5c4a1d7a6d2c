"""Saving and loading the health tracker's state, and the declared rates of sensors.

The tracker keeps gateway and sensor health in memory and saves what changed every few seconds;
rows are upserted (``INSERT ... ON CONFLICT DO UPDATE`` on SQLite and PostgreSQL alike), so saving
the same state twice changes nothing.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from ironwatch.errors import InvalidInput, NotFound
from ironwatch.model import check_id
from ironwatch.store import schema
from ironwatch.store.database import Store


@dataclasses.dataclass
class SavedGateway:
    """One row of ``gateway_health``: what the tracker knows of a gateway (times in epoch µs)."""

    tenant: str
    gateway: str
    site: str
    last_seen_us: int | None
    last_batch_at_us: int | None
    observed_batches: list[list[int]]


@dataclasses.dataclass
class SavedSensor:
    """One row of ``sensor_health``: reading statistics of a sensor (times in epoch µs).

    ``window`` is ``{"bucket_us": n, "buckets": [[bucket, count], ...]}``: readings per bucket of
    event time (``ts // bucket_us``) over the recent window.
    """

    tenant: str
    site: str
    sensor: str
    gateway: str | None
    first_ts_us: int | None
    last_ts_us: int | None
    last_received_us: int | None
    readings: int
    window: dict[str, Any]


def _insert(conn: sa.Connection, table: sa.Table) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table)
    return None


def _upsert(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    keys = [c.name for c in table.primary_key.columns]
    stmt = _insert(conn, table)
    if stmt is None:  # another database: replace row by row
        for row in rows:
            conn.execute(table.delete().where(sa.and_(*(table.c[k] == row[k] for k in keys))))
            conn.execute(table.insert().values(**row))
        return
    updates = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
    conn.execute(stmt.on_conflict_do_update(index_elements=keys, set_=updates), rows)


def save_health(store: Store, gateways: list[SavedGateway], sensors: list[SavedSensor]) -> None:
    """Upsert the given gateway and sensor health rows in one transaction."""
    if not gateways and not sensors:
        return
    now = datetime.now(UTC)
    with store._begin() as conn:
        if gateways:
            _upsert(
                conn,
                schema.gateway_health,
                [{**vars(g), "updated_at": now} for g in gateways],
            )
        if sensors:
            _upsert(
                conn,
                schema.sensor_health,
                [{**vars(s), "updated_at": now} for s in sensors],
            )


def load_health(store: Store) -> tuple[list[SavedGateway], list[SavedSensor]]:
    """Every saved gateway and sensor health row, of every tenant."""
    with store._begin() as conn:
        gateway_rows = conn.execute(sa.select(schema.gateway_health)).all()
        sensor_rows = conn.execute(sa.select(schema.sensor_health)).all()
    gateways = [
        SavedGateway(
            r.tenant,
            r.gateway,
            r.site,
            r.last_seen_us,
            r.last_batch_at_us,
            [list(pair) for pair in (r.observed_batches or [])],
        )
        for r in gateway_rows
    ]
    sensors = [
        SavedSensor(
            r.tenant,
            r.site,
            r.sensor,
            r.gateway,
            r.first_ts_us,
            r.last_ts_us,
            r.last_received_us,
            int(r.readings),
            dict(r.window or {}),
        )
        for r in sensor_rows
    ]
    return gateways, sensors


def set_declared_rate(store: Store, tenant: str, site: str, sensor: str, rate_per_min: float | None) -> None:
    """Declare how many readings per minute a registered sensor sends (``None``: the default setting)."""
    check_id("site", site)
    check_id("sensor", sensor)
    if rate_per_min is not None and not rate_per_min > 0:
        raise InvalidInput("declared_rate_per_min", "expected a positive number of readings per minute")
    table = schema.sensors
    with store._begin() as conn:
        done = conn.execute(
            table.update()
            .where((table.c.tenant == tenant) & (table.c.site == site) & (table.c.sensor == sensor))
            .values(declared_rate_per_min=rate_per_min)
        )
    if done.rowcount == 0:
        raise NotFound("sensor", f"{site}/{sensor}")


def declared_rates(store: Store, tenant: str) -> dict[tuple[str, str], float]:
    """``{(site, sensor): rate_per_min}`` of the tenant's sensors that declare a rate of their own."""
    table = schema.sensors
    with store._begin() as conn:
        rows = conn.execute(
            sa.select(table.c.site, table.c.sensor, table.c.declared_rate_per_min).where(
                (table.c.tenant == tenant) & table.c.declared_rate_per_min.is_not(None)
            )
        ).all()
    return {(r.site, r.sensor): float(r.declared_rate_per_min) for r in rows}

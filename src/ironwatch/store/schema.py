"""Tables of the metadata database and the ordered migrations that build them."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

metadata = sa.MetaData()

tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("root_url", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("tenant", sa.String(64), sa.ForeignKey("tenants.name"), nullable=False, index=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("secret_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("site", sa.String(64)),
    sa.Column("gateway", sa.String(64)),
    sa.Column("label", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
)

gateways = sa.Table(
    "gateways",
    metadata,
    sa.Column("tenant", sa.String(64), sa.ForeignKey("tenants.name"), primary_key=True),
    sa.Column("gateway", sa.String(64), primary_key=True),
    sa.Column("site", sa.String(64), nullable=False),
    sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("registered_by", sa.String(16), nullable=False),
    sa.Column("last_seen_at", sa.DateTime(timezone=True)),
    sa.Column("last_heartbeat", sa.JSON),
)

sensors = sa.Table(
    "sensors",
    metadata,
    sa.Column("tenant", sa.String(64), sa.ForeignKey("tenants.name"), primary_key=True),
    sa.Column("site", sa.String(64), primary_key=True),
    sa.Column("sensor", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("first_gateway", sa.String(64)),
    # Added by migration 2; null means the setting health.default_rate_per_min.
    sa.Column("declared_rate_per_min", sa.Float),
)

#: What the health tracker knows of each gateway beyond the gateways table (times in epoch µs).
gateway_health = sa.Table(
    "gateway_health",
    metadata,
    sa.Column("tenant", sa.String(64), sa.ForeignKey("tenants.name"), primary_key=True),
    sa.Column("gateway", sa.String(64), primary_key=True),
    sa.Column("site", sa.String(64), nullable=False),
    sa.Column("last_seen_us", sa.BigInteger),
    sa.Column("last_batch_at_us", sa.BigInteger),
    sa.Column("observed_batches", sa.JSON),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

#: Per-sensor reading statistics of the health tracker (times in epoch µs).
sensor_health = sa.Table(
    "sensor_health",
    metadata,
    sa.Column("tenant", sa.String(64), sa.ForeignKey("tenants.name"), primary_key=True),
    sa.Column("site", sa.String(64), primary_key=True),
    sa.Column("sensor", sa.String(64), primary_key=True),
    sa.Column("gateway", sa.String(64)),
    sa.Column("first_ts_us", sa.BigInteger),
    sa.Column("last_ts_us", sa.BigInteger),
    sa.Column("last_received_us", sa.BigInteger),
    sa.Column("readings", sa.BigInteger, nullable=False),
    sa.Column("window", sa.JSON),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

#: Query jobs (``POST /api/v1/queries``): what ran, how it ended; results are in the tenant root.
queries = sa.Table(
    "queries",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("tenant", sa.String(64), sa.ForeignKey("tenants.name"), nullable=False),
    sa.Column("sql", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("key_id", sa.String(32)),
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("rows", sa.BigInteger),
    sa.Column("bytes_scanned", sa.BigInteger),
    sa.Column("result_bytes", sa.BigInteger),
    sa.Column("error", sa.JSON),
    sa.Index("ix_queries_tenant_created", "tenant", "created_at"),
    sa.Index("ix_queries_owner_status", "owner", "status"),
)

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)


def _v1(conn: sa.Connection) -> None:
    for table in (tenants, api_keys, gateways, sensors):
        table.create(conn, checkfirst=True)


def _v2(conn: sa.Connection) -> None:
    """Declared sensor rates and the health tracker's tables."""
    # Migration 1 creates the tables from the definitions above, so a database created after the
    # column was declared already has it.
    columns = {c["name"] for c in sa.inspect(conn).get_columns("sensors")}
    if "declared_rate_per_min" not in columns:
        conn.execute(sa.text("ALTER TABLE sensors ADD COLUMN declared_rate_per_min FLOAT"))
    for table in (gateway_health, sensor_health):
        table.create(conn, checkfirst=True)


def _v3(conn: sa.Connection) -> None:
    """Query jobs."""
    queries.create(conn, checkfirst=True)


#: Migration n+1 is MIGRATIONS[n]; a migration never changes once released, later ones are appended.
MIGRATIONS: list[Callable[[sa.Connection], None]] = [_v1, _v2, _v3]

"""The metadata database: tenants, API keys, gateways and discovered sensors.

SQLite (WAL) by default, PostgreSQL for scale-out; both through SQLAlchemy Core. Errors from
SQLAlchemy are translated into the ironwatch error tree here, at the boundary.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from ironwatch.errors import Conflict, InvalidInput, NotFound, StorageError
from ironwatch.model import Role, check_id
from ironwatch.store import schema

KEY_PREFIX = "iw_"


@dataclasses.dataclass(frozen=True)
class Tenant:
    """A customer, with the URL of the storage root that holds all its data."""

    name: str
    root_url: str
    created_at: datetime


@dataclasses.dataclass(frozen=True)
class ApiKey:
    """A stored key (never the secret itself)."""

    id: str
    tenant: str
    role: Role
    site: str | None
    gateway: str | None
    label: str | None
    created_at: datetime
    revoked_at: datetime | None


@dataclasses.dataclass(frozen=True)
class Gateway:
    """A gateway registered to one site of a tenant."""

    tenant: str
    gateway: str
    site: str
    registered_at: datetime
    registered_by: str
    last_seen_at: datetime | None
    last_heartbeat: dict[str, Any] | None


def hash_secret(secret: str) -> str:
    """Keys are long random strings, so one SHA-256 is a safe and fast way to store them."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything ironwatch stores is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class Store:
    """Access to the metadata database; safe to share between threads."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            parsed = make_url(url)
            if parsed.get_backend_name() == "sqlite" and parsed.database:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = sa.create_engine(url, future=True, pool_pre_ping=True)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as exc:
            raise InvalidInput("store.url", f"cannot open {url!r}: {exc}") from exc
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self.migrate()

    @contextmanager
    def _begin(self) -> Iterator[sa.Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.IntegrityError as exc:
            raise Conflict(f"already exists or still in use: {exc.orig}") from exc
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError(f"metadata database error: {exc}") from exc

    def migrate(self) -> int:
        """Apply the migrations this database has not seen yet; return the schema version."""
        with self._begin() as conn:
            schema.schema_version.create(conn, checkfirst=True)
            current = conn.execute(sa.select(sa.func.max(schema.schema_version.c.version))).scalar() or 0
            for version, step in enumerate(schema.MIGRATIONS[current:], start=current + 1):
                step(conn)
                conn.execute(schema.schema_version.insert().values(version=version, applied_at=_now()))
            return len(schema.MIGRATIONS)

    def close(self) -> None:
        self.engine.dispose()

    # tenants -----------------------------------------------------------------------------------
    def create_tenant(self, name: str, root_url: str) -> Tenant:
        """Register a tenant and its storage root."""
        check_id("tenant", name)
        tenant = Tenant(name, root_url, _now())
        with self._begin() as conn:
            conn.execute(schema.tenants.insert().values(**dataclasses.asdict(tenant)))
        return tenant

    def tenant(self, name: str) -> Tenant:
        """The tenant named ``name``, or :class:`NotFound`."""
        with self._begin() as conn:
            row = conn.execute(sa.select(schema.tenants).where(schema.tenants.c.name == name)).first()
        if row is None:
            raise NotFound("tenant", name)
        return Tenant(row.name, row.root_url, _utc(row.created_at) or _now())

    def tenants(self) -> list[Tenant]:
        """Every tenant, by name."""
        with self._begin() as conn:
            rows = conn.execute(sa.select(schema.tenants).order_by(schema.tenants.c.name)).all()
        return [Tenant(r.name, r.root_url, _utc(r.created_at) or _now()) for r in rows]

    # keys --------------------------------------------------------------------------------------
    def create_key(
        self,
        tenant: str,
        role: Role | str,
        *,
        site: str | None = None,
        gateway: str | None = None,
        label: str | None = None,
    ) -> tuple[ApiKey, str]:
        """Create a key; return it and its secret, which is shown this once and stored only hashed."""
        self.tenant(tenant)
        try:
            role = Role(role)
        except ValueError as exc:
            raise InvalidInput("role", f"{role!r} is not one of {', '.join(r.value for r in Role)}") from exc
        if site is not None:
            check_id("site", site)
        if gateway is not None:
            check_id("gateway", gateway)
        key_id = secrets.token_hex(6)
        secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(24)}"
        key = ApiKey(key_id, tenant, role, site, gateway, label, _now(), None)
        with self._begin() as conn:
            conn.execute(
                schema.api_keys.insert().values(
                    **{**dataclasses.asdict(key), "role": role.value}, secret_sha256=hash_secret(secret)
                )
            )
        return key, secret

    def revoke_key(self, key_id: str, *, tenant: str | None = None) -> ApiKey:
        """Revoke a key by its id (the part after ``iw_``); ``tenant`` limits it to one tenant."""
        if key_id.startswith(KEY_PREFIX):
            key_id = key_id[len(KEY_PREFIX) :].split("_", 1)[0]
        cond = schema.api_keys.c.id == key_id
        if tenant is not None:
            cond = cond & (schema.api_keys.c.tenant == tenant)
        with self._begin() as conn:
            done = conn.execute(
                schema.api_keys.update()
                .where(cond & schema.api_keys.c.revoked_at.is_(None))
                .values(revoked_at=_now())
            )
            row = conn.execute(sa.select(schema.api_keys).where(cond)).first()
        if row is None:
            raise NotFound("key", key_id)
        if done.rowcount == 0 and row.revoked_at is None:
            raise Conflict(f"key {key_id} could not be revoked")
        return self._key(row)

    def keys(self, tenant: str) -> list[ApiKey]:
        """Every key of a tenant, revoked ones included."""
        with self._begin() as conn:
            rows = conn.execute(
                sa.select(schema.api_keys)
                .where(schema.api_keys.c.tenant == tenant)
                .order_by(schema.api_keys.c.created_at)
            ).all()
        return [self._key(r) for r in rows]

    def key_by_secret(self, secret: str) -> ApiKey | None:
        """The live (not revoked) key whose secret this is; ``None`` when there is none."""
        with self._begin() as conn:
            row = conn.execute(
                sa.select(schema.api_keys).where(schema.api_keys.c.secret_sha256 == hash_secret(secret))
            ).first()
        if row is None or row.revoked_at is not None:
            return None
        return self._key(row)

    @staticmethod
    def _key(row: Any) -> ApiKey:
        return ApiKey(
            row.id,
            row.tenant,
            Role(row.role),
            row.site,
            row.gateway,
            row.label,
            _utc(row.created_at) or _now(),
            _utc(row.revoked_at),
        )

    # gateways ----------------------------------------------------------------------------------
    def add_gateway(self, tenant: str, gateway: str, site: str, *, registered_by: str = "admin") -> Gateway:
        """Register a gateway to a site; registering it again to the same site changes nothing."""
        self.tenant(tenant)
        check_id("gateway", gateway)
        check_id("site", site)
        existing = self.gateway(tenant, gateway)
        if existing is not None:
            if existing.site != site:
                raise Conflict(
                    f"gateway {gateway} is registered to site {existing.site}, not {site}",
                    {"gateway": gateway, "site": existing.site},
                )
            return existing
        with self._begin() as conn:
            conn.execute(
                schema.gateways.insert().values(
                    tenant=tenant,
                    gateway=gateway,
                    site=site,
                    registered_at=_now(),
                    registered_by=registered_by,
                )
            )
        found = self.gateway(tenant, gateway)
        assert found is not None
        return found

    def gateway(self, tenant: str, gateway: str) -> Gateway | None:
        """The registered gateway, or ``None`` if it was never registered."""
        with self._begin() as conn:
            row = conn.execute(
                sa.select(schema.gateways).where(
                    (schema.gateways.c.tenant == tenant) & (schema.gateways.c.gateway == gateway)
                )
            ).first()
        return None if row is None else self._gateway(row)

    def gateways(self, tenant: str) -> list[Gateway]:
        """Every gateway of a tenant."""
        with self._begin() as conn:
            rows = conn.execute(
                sa.select(schema.gateways)
                .where(schema.gateways.c.tenant == tenant)
                .order_by(schema.gateways.c.gateway)
            ).all()
        return [self._gateway(r) for r in rows]

    def record_heartbeat(self, tenant: str, gateway: str, heartbeat: dict[str, Any]) -> None:
        """Keep the gateway's latest heartbeat and when it was seen."""
        with self._begin() as conn:
            conn.execute(
                schema.gateways.update()
                .where((schema.gateways.c.tenant == tenant) & (schema.gateways.c.gateway == gateway))
                .values(last_seen_at=_now(), last_heartbeat=heartbeat)
            )

    @staticmethod
    def _gateway(row: Any) -> Gateway:
        return Gateway(
            row.tenant,
            row.gateway,
            row.site,
            _utc(row.registered_at) or _now(),
            row.registered_by,
            _utc(row.last_seen_at),
            row.last_heartbeat,
        )

    # sensors -----------------------------------------------------------------------------------
    def discover_sensors(self, tenant: str, site: str, sensors: Iterable[str], gateway: str | None) -> int:
        """Register sensors seen for the first time as ``discovered``; return how many were new."""
        names = sorted(set(sensors))
        if not names:
            return 0
        with self._begin() as conn:
            known = set(
                conn.execute(
                    sa.select(schema.sensors.c.sensor).where(
                        (schema.sensors.c.tenant == tenant)
                        & (schema.sensors.c.site == site)
                        & (schema.sensors.c.sensor.in_(names))
                    )
                ).scalars()
            )
            new = [n for n in names if n not in known]
            if new:
                now = _now()
                conn.execute(
                    schema.sensors.insert(),
                    [
                        {
                            "tenant": tenant,
                            "site": site,
                            "sensor": n,
                            "status": "discovered",
                            "first_seen_at": now,
                            "first_gateway": gateway,
                        }
                        for n in new
                    ],
                )
        return len(new)

    def sensors(self, tenant: str, site: str | None = None) -> list[dict[str, Any]]:
        """Sensors of a tenant (optionally one site) as plain dicts."""
        cond = schema.sensors.c.tenant == tenant
        if site is not None:
            cond = cond & (schema.sensors.c.site == site)
        with self._begin() as conn:
            rows = conn.execute(
                sa.select(schema.sensors).where(cond).order_by(schema.sensors.c.site, schema.sensors.c.sensor)
            ).all()
        return [
            {
                "site": r.site,
                "sensor": r.sensor,
                "status": r.status,
                "first_seen_at": (_utc(r.first_seen_at) or _now()).isoformat(),
                "first_gateway": r.first_gateway,
                "declared_rate_per_min": r.declared_rate_per_min,
            }
            for r in rows
        ]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()

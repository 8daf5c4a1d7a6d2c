"""Records of query jobs in the metadata database: what ran, for which tenant, and how it ended.

A job moves ``queued -> running -> succeeded | failed | cancelled`` (or ``queued -> cancelled``).
Every change of status is a conditional update from the status it leaves, so a cancel and the
worker that starts the job cannot both win. Records outlive the server: after a crash, the
server that owned a running job marks it failed when it starts again (:meth:`QueryRecords.recover`).
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from ironwatch.errors import NotFound
from ironwatch.store import schema
from ironwatch.store.database import Store

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINISHED = (SUCCEEDED, FAILED, CANCELLED)


@dataclasses.dataclass(frozen=True)
class QueryJob:
    """One query job. ``error`` has the API's error shape (``code``, ``message``, ``details``)."""

    id: str
    tenant: str
    sql: str
    status: str
    key_id: str | None
    owner: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    rows: int | None
    bytes_scanned: int | None
    result_bytes: int | None
    error: dict[str, Any] | None

    @property
    def result_path(self) -> str:
        """Where the result is saved in the tenant's root."""
        return f"results/{self.id}.csv"

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to finish (to now while running); ``None`` before it starts."""
        if self.started_at is None:
            return None
        end = self.finished_at or datetime.now(UTC)
        return max(0.0, (end - self.started_at).total_seconds())


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _job(row: Any) -> QueryJob:
    return QueryJob(
        id=row.id,
        tenant=row.tenant,
        sql=row.sql,
        status=row.status,
        key_id=row.key_id,
        owner=row.owner,
        created_at=_utc(row.created_at) or _now(),
        started_at=_utc(row.started_at),
        finished_at=_utc(row.finished_at),
        rows=row.rows,
        bytes_scanned=row.bytes_scanned,
        result_bytes=row.result_bytes,
        error=row.error,
    )


class QueryRecords:
    """Query jobs in the metadata database of ``store``; safe to share between threads."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.table = schema.queries

    def add(self, tenant: str, sql: str, *, key_id: str | None, owner: str) -> QueryJob:
        """A new queued job of ``tenant``, owned (run) by the server named ``owner``."""
        job_id = str(uuid.uuid4())
        values: dict[str, Any] = {"id": job_id, "tenant": tenant, "sql": sql, "status": QUEUED}
        values |= {"key_id": key_id, "owner": owner, "created_at": _now()}
        with self.store._begin() as conn:
            conn.execute(self.table.insert().values(**values))
        return self.get(tenant, job_id)

    def get(self, tenant: str, job_id: str) -> QueryJob:
        """The job ``job_id`` of ``tenant``; :class:`NotFound` if it is another tenant's or none."""
        with self.store._begin() as conn:
            row = conn.execute(
                sa.select(self.table).where((self.table.c.tenant == tenant) & (self.table.c.id == job_id))
            ).first()
        if row is None:
            raise NotFound("query", job_id)
        return _job(row)

    def recent(self, tenant: str, limit: int = 50, status: str | None = None) -> list[QueryJob]:
        """The tenant's latest jobs, newest first."""
        cond = self.table.c.tenant == tenant
        if status is not None:
            cond = cond & (self.table.c.status == status)
        query = sa.select(self.table).where(cond)
        query = query.order_by(self.table.c.created_at.desc(), self.table.c.id).limit(limit)
        with self.store._begin() as conn:
            return [_job(r) for r in conn.execute(query).all()]

    def active(self, tenant: str) -> int:
        """How many of the tenant's jobs are queued or running."""
        cond = (self.table.c.tenant == tenant) & self.table.c.status.in_((QUEUED, RUNNING))
        with self.store._begin() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(self.table).where(cond)).scalar()
        return int(count or 0)

    def _move(self, job_id: str, old: tuple[str, ...], **values: Any) -> bool:
        cond = (self.table.c.id == job_id) & self.table.c.status.in_(old)
        with self.store._begin() as conn:
            return bool(conn.execute(self.table.update().where(cond).values(**values)).rowcount)

    def start(self, job_id: str) -> bool:
        """Mark a queued job running; ``False`` when it is no longer queued (cancelled meanwhile)."""
        return self._move(job_id, (QUEUED,), status=RUNNING, started_at=_now())

    def progress(self, job_id: str, rows: int) -> None:
        """Record how many rows a running job has written so far."""
        self._move(job_id, (RUNNING,), rows=rows)

    def finish(
        self,
        job_id: str,
        status: str,
        *,
        rows: int | None = None,
        bytes_scanned: int | None = None,
        result_bytes: int | None = None,
        error: dict[str, Any] | None = None,
    ) -> bool:
        """Mark a running job finished with ``status``; ``False`` if it was not running."""
        assert status in FINISHED
        values = {"rows": rows, "bytes_scanned": bytes_scanned, "result_bytes": result_bytes}
        return self._move(job_id, (RUNNING,), status=status, finished_at=_now(), error=error, **values)

    def cancel_queued(self, job_id: str) -> bool:
        """Cancel a job that has not started; ``False`` if it already has."""
        error = {"code": "cancelled", "message": "cancelled before it started", "details": {}}
        return self._move(job_id, (QUEUED,), status=CANCELLED, finished_at=_now(), error=error)

    def finished_before(self, when: datetime, limit: int = 1000) -> list[QueryJob]:
        """Jobs of every tenant that finished before ``when``, oldest first."""
        cond = self.table.c.status.in_(FINISHED) & (self.table.c.finished_at < when)
        query = sa.select(self.table).where(cond).order_by(self.table.c.finished_at).limit(limit)
        with self.store._begin() as conn:
            return [_job(r) for r in conn.execute(query).all()]

    def delete(self, job_id: str) -> None:
        """Forget a job (its saved result must be deleted first)."""
        with self.store._begin() as conn:
            conn.execute(self.table.delete().where(self.table.c.id == job_id))

    def recover(self, owner: str, reason: str) -> tuple[list[QueryJob], list[QueryJob]]:
        """After a restart of server ``owner``: fail its jobs that were running (with ``reason``), and
        return them and its jobs still queued, which can run now."""
        mine = self.table.c.owner == owner
        error = {"code": "interrupted", "message": reason, "details": {"retryable": True}}
        with self.store._begin() as conn:
            running = conn.execute(sa.select(self.table).where(mine & (self.table.c.status == RUNNING))).all()
            conn.execute(
                self.table.update()
                .where(mine & (self.table.c.status == RUNNING))
                .values(status=FAILED, finished_at=_now(), error=error)
            )
            queued = conn.execute(
                sa.select(self.table)
                .where(mine & (self.table.c.status == QUEUED))
                .order_by(self.table.c.created_at)
            ).all()
        failed = [dataclasses.replace(_job(r), status=FAILED, error=error) for r in running]
        return failed, [_job(r) for r in queued]

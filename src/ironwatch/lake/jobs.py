"""Query jobs, the Athena way: SQL runs in the background and its answer is saved in the tenant root.

``Runner.submit`` records a queued job and hands it to a bounded pool of worker threads. A worker
runs the SQL in the same kind of sandbox as a synchronous query, lent by the server's pool (with the
longer ``query.job_timeout_s``),
streams Arrow batches through pyarrow's CSV writer into ``results/{id}.csv`` of the tenant root
(never the whole answer in memory), and records rows, bytes scanned and duration. The records live
in the metadata database, so they survive restarts; a job that was running when its server died
is marked failed when the server starts again, and jobs still queued then run. Finished jobs and
their saved results are deleted ``query.results_keep_s`` after they finished, so that the results of
queries nobody fetches do not fill the tenants' roots.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv

from ironwatch.config import Settings
from ironwatch.errors import (
    Conflict,
    InvalidInput,
    IronwatchError,
    NotFound,
    TooManyRequests,
    Unavailable,
)
from ironwatch.lake import query
from ironwatch.lake.pool import Pool
from ironwatch.lake.root import Root
from ironwatch.store import Store
from ironwatch.store.queries import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    STATUSES,
    SUCCEEDED,
    QueryJob,
    QueryRecords,
)

log = logging.getLogger(__name__)

#: How often a running job writes its row count so far to its record.
PROGRESS_INTERVAL_S = 1.0
#: How long ``DELETE`` waits for a running job to stop before it answers.
CANCEL_WAIT_S = 10.0
#: Longest pause between two looks for finished jobs to delete.
EXPIRE_INTERVAL_S = 600.0


class _Counted:
    """A file that counts the bytes written through it (the size of the saved result)."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.size_bytes = 0

    def write(self, data: Any) -> int:
        self.size_bytes += len(data)
        self.file.write(data)
        return len(data)

    def flush(self) -> None:
        self.file.flush()

    @property
    def closed(self) -> bool:
        return False


class Runner:
    """Runs the query jobs of every tenant on ``query.workers`` threads."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        root_of: Callable[[str], Root],
        tables_of: Callable[[str], Mapping[str, pa.Table]] | None = None,
        pool: Pool | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.records = QueryRecords(store)
        self.root_of = root_of
        self.tables_of = tables_of
        # One server per data directory, so host and data directory name the server that owns a job.
        self.owner = f"{socket.gethostname()}:{settings.data_dir}"
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._streams: dict[str, query.Stream] = {}
        self._cancelled: set[str] = set()
        self._done: dict[str, threading.Event] = {}
        self._stop = threading.Event()
        self._expirer: threading.Thread | None = None

    def start(self) -> None:
        """Start the workers; fail the jobs a crash left running, and run those still queued."""
        self._pool = ThreadPoolExecutor(int(self.settings.query.workers), thread_name_prefix="query-job")
        reason = "the server stopped while the query ran; run it again"
        failed, queued = self.records.recover(self.owner, reason)
        for job in failed:
            log.warning("query job %s of %s was running when the server stopped: failed", job.id, job.tenant)
        for job in queued:
            self._schedule(job)
        if float(self.settings.query.results_keep_s) > 0:
            self._expirer = threading.Thread(target=self._expire_loop, name="query-expirer", daemon=True)
            self._expirer.start()

    def stop(self) -> None:
        """Stop running jobs (they fail, saying the server stopped); queued ones run after a restart."""
        self._stop.set()
        if self._expirer is not None:
            self._expirer.join()
        with self._lock:
            streams = list(self._streams.values())
        for stream in streams:
            stream.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    # retention ---------------------------------------------------------------------------------
    def _expire_loop(self) -> None:
        keep_s = float(self.settings.query.results_keep_s)
        interval_s = min(max(keep_s / 4, 0.5), EXPIRE_INTERVAL_S)
        while not self._stop.wait(interval_s):
            try:
                self.expire(keep_s)
            except Exception:  # the next pass tries again
                log.exception("query jobs: cannot delete expired jobs")

    def expire(self, keep_s: float) -> int:
        """Delete the jobs that finished more than ``keep_s`` ago, and their saved results.

        One pass deletes at most a thousand; the next pass goes on.
        """
        cutoff = datetime.now(UTC) - timedelta(seconds=keep_s)
        expired = self.records.finished_before(cutoff)
        for job in expired:
            if job.status == SUCCEEDED:
                try:
                    root = self.root_of(job.tenant)
                except NotFound:  # the tenant is gone, and its root with it
                    pass
                else:
                    root.delete(job.result_path)  # before the record, so no result is ever orphaned
            self.records.delete(job.id)
        if expired:
            log.info("query jobs: deleted %d finished over %.0f s ago, with results", len(expired), keep_s)
        return len(expired)

    # API ---------------------------------------------------------------------------------------
    def submit(self, tenant: str, sql: Any, *, key_id: str | None = None) -> QueryJob:
        """Record a queued job for ``sql`` and schedule it; the job is returned at once."""
        if not isinstance(sql, str) or not sql.strip():
            raise InvalidInput("sql", "expected a non-empty SQL statement")
        if self._pool is None or self._stop.is_set():
            raise Unavailable("the query workers are not running")
        limit = int(self.settings.query.max_jobs)
        if self.records.active(tenant) >= limit:
            raise TooManyRequests(
                f"tenant {tenant} has {limit} query jobs queued or running (query.max_jobs); "
                "wait for some to finish",
                {"max_jobs": limit},
            )
        job = self.records.add(tenant, sql, key_id=key_id, owner=self.owner)
        self._schedule(job)
        return job

    def get(self, tenant: str, job_id: str) -> QueryJob:
        """The job ``job_id`` of ``tenant`` (:class:`NotFound` for another tenant's)."""
        return self.records.get(tenant, job_id)

    def recent(self, tenant: str, limit: int = 50, status: str | None = None) -> list[QueryJob]:
        """The tenant's latest jobs, newest first."""
        return self.records.recent(tenant, limit, status)

    def cancel(self, tenant: str, job_id: str) -> QueryJob:
        """Cancel a queued or running job and return its record once it has stopped.

        A finished job cannot be cancelled (:class:`Conflict`), nor one that runs on another server.
        """
        job = self.records.get(tenant, job_id)
        if job.status == QUEUED and self.records.cancel_queued(job_id):
            return self.records.get(tenant, job_id)
        job = self.records.get(tenant, job_id)
        if job.status not in (QUEUED, RUNNING):
            raise Conflict(f"query {job_id} already {job.status}", {"status": job.status})
        if job.owner != self.owner:
            raise Conflict(
                f"query {job_id} runs on server {job.owner}; cancel it there", {"owner": job.owner}
            )
        with self._lock:
            self._cancelled.add(job_id)
            stream = self._streams.get(job_id)
            done = self._done.get(job_id)
        if stream is not None:
            stream.stop()
        if done is not None:
            done.wait(CANCEL_WAIT_S)
        return self.records.get(tenant, job_id)

    # workers -----------------------------------------------------------------------------------
    def _schedule(self, job: QueryJob) -> None:
        assert self._pool is not None
        with self._lock:
            self._done[job.id] = threading.Event()
        try:
            self._pool.submit(self._run, job)
        except RuntimeError as exc:  # the pool shut down meanwhile: the job stays queued for a restart
            raise Unavailable("the server is stopping; the query runs when it starts again") from exc

    def _run(self, job: QueryJob) -> None:
        try:
            if self.records.start(job.id):
                self._execute(job)
        except Exception:  # a worker must never die silently: the job says what happened
            log.exception("query job %s of %s failed unexpectedly", job.id, job.tenant)
            error = {"code": "internal", "message": "internal error; the server log has the details"}
            self.records.finish(job.id, FAILED, error={**error, "details": {}})
        finally:
            with self._lock:
                self._streams.pop(job.id, None)
                self._cancelled.discard(job.id)
                done = self._done.pop(job.id, None)
            if done is not None:
                done.set()

    def _execute(self, job: QueryJob) -> None:
        settings = self.settings.query
        rows = 0
        try:
            root = self.root_of(job.tenant)
            tables = self.tables_of(job.tenant) if self.tables_of is not None else None
            with query.stream(
                root,
                job.sql,
                timeout_s=float(settings.job_timeout_s),
                memory_limit=str(settings.memory_limit),
                tables=tables,
                fmt="csv",
                is_profiled=True,
                on_open=lambda answer: self._opened(job.id, answer),
                pool=self.pool,
            ) as answer:
                with root.write_stream(job.result_path) as file:
                    out = _Counted(file)
                    writer = pacsv.CSVWriter(out, answer.schema)
                    reported = time.monotonic()
                    for batch in answer:
                        writer.write_batch(batch)
                        rows += batch.num_rows
                        if time.monotonic() - reported >= PROGRESS_INTERVAL_S:
                            self.records.progress(job.id, rows)
                            reported = time.monotonic()
                    writer.close()
                scanned = answer.bytes_scanned()
        except IronwatchError as exc:
            self._fail(job, exc)
            return
        self.records.finish(job.id, SUCCEEDED, rows=rows, bytes_scanned=scanned, result_bytes=out.size_bytes)

    def _opened(self, job_id: str, answer: query.Stream) -> None:
        with self._lock:
            self._streams[job_id] = answer
            if job_id in self._cancelled or self._stop.is_set():
                answer.stop()

    def _fail(self, job: QueryJob, exc: IronwatchError) -> None:
        error = exc.to_json()["error"]
        with self._lock:
            is_cancelled = job.id in self._cancelled
        if exc.details.get("cancelled") and not is_cancelled:
            # Stopped by a server shutdown, not by a user: the answer is a failure worth retrying.
            message = "the server stopped while the query ran; run it again"
            error = {"code": "interrupted", "message": message, "details": {"retryable": True}}
        status = CANCELLED if is_cancelled else FAILED
        self.records.finish(job.id, status, error=error)


def describe(job: QueryJob) -> dict[str, Any]:
    """A job as the API shows it."""
    doc: dict[str, Any] = {
        "id": job.id,
        "status": job.status,
        "sql": job.sql,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "duration_s": round(job.duration_s, 3) if job.duration_s is not None else None,
        "rows": job.rows,
        "bytes_scanned": job.bytes_scanned,
        "result_bytes": job.result_bytes,
        "result_path": job.result_path if job.status == SUCCEEDED else None,
        "error": job.error,
    }
    return doc


__all__ = ["CANCELLED", "FAILED", "QUEUED", "RUNNING", "STATUSES", "SUCCEEDED", "Runner", "describe"]

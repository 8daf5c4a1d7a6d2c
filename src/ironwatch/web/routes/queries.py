"""Query jobs under ``/api/v1/queries``: submit SQL, follow it, fetch its saved CSV, cancel it.

Jobs belong to the caller's tenant: another tenant's job id is a 404, as if it did not exist.
Every route needs an analyst or admin key.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from ironwatch.errors import Conflict, InvalidInput, IronwatchError
from ironwatch.lake import jobs
from ironwatch.web import body
from ironwatch.web.auth import ANALYSTS
from ironwatch.web.services import Services

router = APIRouter(prefix="/api/v1", tags=["query jobs"])

MAX_LIST = 1000


class NotReady(IronwatchError):
    """The job has no result yet; ask again once its status is ``succeeded``."""

    status = 404
    code = "not_ready"
    retryable = True


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


@router.post("/queries", status_code=202, response_model=None)
async def submit(request: Request) -> JSONResponse:
    """Start a query job: ``{"sql": "SELECT ..."}``; answers at once with the queued job (202).

    Follow it at ``GET /api/v1/queries/{id}``; its result will be ``results/{id}.csv`` in the
    tenant's root, served by ``GET /api/v1/queries/{id}/result``.
    """
    services = _services(request)
    principal = services.auth.require(request, *ANALYSTS)
    doc = await body.read_json(request, 1024 * 1024)
    job = await run_in_threadpool(
        services.jobs.submit, principal.tenant, doc.get("sql"), key_id=principal.key_id
    )
    location = f"/api/v1/queries/{job.id}"
    return JSONResponse(jobs.describe(job), status_code=202, headers={"Location": location})


@router.get("/queries")
async def recent(request: Request, limit: int = 50, status: str | None = None) -> dict[str, Any]:
    """The tenant's latest query jobs, newest first (``limit`` up to 1000; ``status`` filters)."""
    services = _services(request)
    principal = services.auth.require(request, *ANALYSTS)
    if not 1 <= limit <= MAX_LIST:
        raise InvalidInput("limit", f"expected 1 to {MAX_LIST}, got {limit}")
    if status is not None and status not in jobs.STATUSES:
        raise InvalidInput("status", f"{status!r} is not one of {', '.join(jobs.STATUSES)}")
    found = await run_in_threadpool(services.jobs.recent, principal.tenant, limit, status)
    return {"queries": [jobs.describe(j) for j in found]}


@router.get("/queries/{query_id}")
async def status(request: Request, query_id: str) -> dict[str, Any]:
    """One query job: status, rows, bytes scanned, duration and, if it failed, the error."""
    services = _services(request)
    principal = services.auth.require(request, *ANALYSTS)
    return jobs.describe(await run_in_threadpool(services.jobs.get, principal.tenant, query_id))


@router.get("/queries/{query_id}/result", response_model=None)
async def result(request: Request, query_id: str) -> StreamingResponse:
    """The saved CSV of a succeeded job, streamed from the tenant's root.

    404 ``not_ready`` while it is queued or running; 409 with the job's error if it failed or was
    cancelled.
    """
    services = _services(request)
    principal = services.auth.require(request, *ANALYSTS)
    job = await run_in_threadpool(services.jobs.get, principal.tenant, query_id)
    if job.status in (jobs.QUEUED, jobs.RUNNING):
        raise NotReady(
            f"query {job.id} is {job.status}; its result is there once it has succeeded",
            {"status": job.status},
        )
    if job.status != jobs.SUCCEEDED:
        reason = (job.error or {}).get("message", "no reason recorded")
        raise Conflict(
            f"query {job.id} {job.status}, so it has no result: {reason}",
            {"status": job.status, "error": job.error},
        )
    root = services.pipeline.root_of(principal.tenant)
    chunks = await run_in_threadpool(root.read_stream, job.result_path)
    headers = {"Content-Disposition": f'attachment; filename="{job.id}.csv"'}
    if job.result_bytes is not None:
        headers["Content-Length"] = str(job.result_bytes)
    return StreamingResponse(chunks, media_type="text/csv; charset=utf-8", headers=headers)


@router.delete("/queries/{query_id}")
async def cancel(request: Request, query_id: str) -> dict[str, Any]:
    """Cancel a queued or running job; answers with the job once it has stopped (409 if it had ended)."""
    services = _services(request)
    principal = services.auth.require(request, *ANALYSTS)
    return jobs.describe(await run_in_threadpool(services.jobs.cancel, principal.tenant, query_id))

"""``POST /api/v1/query``: SQL over the caller's own lake, answered as CSV, JSON or Parquet."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ironwatch import lake
from ironwatch.errors import InvalidInput
from ironwatch.ingest import health_report
from ironwatch.web import body
from ironwatch.web.auth import ANALYSTS
from ironwatch.web.services import Services

router = APIRouter(prefix="/api/v1", tags=["query"])

MEDIA = {
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
    "parquet": "application/vnd.apache.parquet",
}


@router.post("/query", response_model=None)
async def query(request: Request) -> Response:
    """Run one SELECT over the caller's views: ``readings``, ``quarantine``, ``sensors``, ``gateways``.

    Body: ``{"sql": "SELECT ...", "format": "csv" | "json" | "parquet"}`` (default json).
    """
    services: Services = request.app.state.services
    principal = services.auth.require(request, *ANALYSTS)
    doc = await body.read_json(request, 1024 * 1024)
    sql, fmt = doc.get("sql"), doc.get("format", "json")
    if not isinstance(sql, str):
        raise InvalidInput("sql", "expected the SQL text as a string")
    if fmt not in MEDIA:
        raise InvalidInput("format", f"{fmt!r} is not one of {', '.join(MEDIA)}")
    root = services.pipeline.root_of(principal.tenant)
    settings = services.settings.query

    def work() -> bytes:
        tables = health_report.sql_tables(services.store, principal.tenant, services.pipeline.health)
        table = lake.query.run(
            root,
            sql,
            tables=tables,
            timeout_s=float(settings.timeout_s),
            memory_limit=str(settings.memory_limit),
            max_rows=int(settings.max_rows),
            fmt=fmt,
            pool=services.sandboxes,
        )
        return lake.query.encode(table, fmt)

    return Response(await run_in_threadpool(work), media_type=MEDIA[fmt])

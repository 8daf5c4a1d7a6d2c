"""``GET /api/v1/series`` (one series, downsampled) and ``GET /api/v1/live`` (server-sent events)."""

from __future__ import annotations

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ironwatch import live
from ironwatch.errors import Forbidden
from ironwatch.model import Principal
from ironwatch.web.auth import READERS
from ironwatch.web.services import Services

router = APIRouter(prefix="/api/v1", tags=["series"])

_SERIES_DOC = """One sensor's metric over ``[start, end)``, at most ``max_points`` points.

Raw readings when they fit, else 1-minute buckets, else 1-hour buckets (``resolution`` says which;
ask for one with ``resolution=raw|1m|1h``). The answer is columnar: ``ts`` (epoch milliseconds, the
reading's time or the bucket's start), ``mean``, ``min``, ``max``, ``count`` (raw readings have
mean = min = max = value and count 1). Readings are in it as soon as they are acknowledged. Times are
RFC 3339 with an offset, epoch milliseconds, ``now`` or ``-15m``, ``-6h``, ``-7d``; the default range
is the last hour. An unknown site, sensor or metric gives an empty series. docs/series.md has more.
"""

_LIVE_DOC = """Server-sent events with the readings of a site as they are acknowledged (within 2 s).

Events: ``hello``; ``readings`` (columnar ``ts``, ``sensor``, ``metric``, ``value``); ``rollup`` (the
current minute per sensor and metric: ``count``, ``mean``, ``min``, ``max``, ``last``); ``lagged``
(``skipped`` readings, when the client reads too slowly); ``dropped`` (the last one). A ``: heartbeat``
comment comes after a quiet while. Filter with ``sensor`` and ``metric``. docs/series.md has more.
"""


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _may_read(principal: Principal, site: str | None) -> None:
    if principal.site is not None and site is not None and site != principal.site:
        raise Forbidden(f"this key may not read site {site}", {"field": "site"})


@router.get("/series", description=_SERIES_DOC, response_model=None)
async def series(
    request: Request,
    site: str | None = Query(None, description="site id"),
    sensor: str | None = Query(None, description="sensor id"),
    metric: str | None = Query(None, description="metric name"),
    start: str | None = Query(None, description="RFC 3339, epoch ms, now or -6h (default: end - 1 h)"),
    end: str | None = Query(None, description="RFC 3339, epoch ms, now or -6h (default: now)"),
    max_points: str | None = Query(None, description="most points in the answer (default 1000)"),
    resolution: str | None = Query(None, description="auto (default), raw, 1m or 1h"),
) -> Response:
    services = _services(request)
    principal = services.auth.require(request, *READERS)
    service: live.Series = services.series
    params = {
        "site": site,
        "sensor": sensor,
        "metric": metric,
        "start": start,
        "end": end,
        "max_points": max_points,
        "resolution": resolution,
    }
    wanted = service.parse(params)
    _may_read(principal, wanted.site)
    answer = await run_in_threadpool(service.get, principal.tenant, wanted)
    return Response(answer, media_type="application/json")


@router.get("/live", description=_LIVE_DOC, response_model=None)
async def live_stream(
    request: Request,
    site: str | None = Query(None, description="site id"),
    sensor: str | None = Query(None, description="only this sensor"),
    metric: str | None = Query(None, description="only this metric"),
) -> Response:
    services = _services(request)
    principal = services.auth.require(request, *READERS)
    streams: live.Streams = services.streams
    wanted = streams.filter(site, sensor, metric)
    _may_read(principal, wanted.site)
    return StreamingResponse(
        streams.open(principal.tenant, wanted),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )

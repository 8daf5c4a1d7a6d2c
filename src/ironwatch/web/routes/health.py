"""``/healthz`` (the process answers), ``/readyz`` (it can take readings) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ironwatch.web.services import Services

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Always ok while the process serves requests."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(request: Request) -> Response:
    """Ok when the write-ahead log is open and the lake takes writes; 503 with the reason otherwise."""
    services: Services = request.app.state.services
    problems = []
    if not services.pipeline.is_ready:
        problems.append("the write-ahead log is not open")
    if services.pipeline.flush_error:
        problems.append(services.pipeline.flush_error)
    if services.mqtt is not None and not services.mqtt.is_connected:
        problems.append("not connected to the MQTT broker")
    if problems:
        return JSONResponse({"status": "unready", "problems": problems}, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get("/metrics", response_model=None)
async def metrics(request: Request) -> Response:
    """Counters and gauges in the Prometheus text format."""
    services: Services = request.app.state.services
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)

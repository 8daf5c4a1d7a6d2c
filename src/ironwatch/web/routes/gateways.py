"""``GET /api/v1/gateways``, ``/gateways/{id}`` and ``/sensors``: gateway and sensor health.

They tell a dead link from a dead sensor: when a gateway is ``offline`` its sensors are reported as
``link_down`` (nothing is known of them), while a sensor of an ``online`` gateway that stops sending
is ``silent``. Readers (viewer, mechanic, analyst, admin) of the caller's tenant only; the shapes are
documented in ``docs/health.md``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from ironwatch.ingest import health_report
from ironwatch.web.auth import READERS
from ironwatch.web.services import Services

router = APIRouter(prefix="/api/v1", tags=["health"])

_GATEWAY_SHAPE = """
A gateway: ``gateway``, ``site``, ``status`` (``online`` | ``offline``: no batch or heartbeat for
``health.offline_after_heartbeats`` x ``health.heartbeat_interval_s``), ``last_seen_at`` (last batch
or heartbeat), ``silent_for_s``, ``last_batch`` (highest batch number stored), ``last_batch_at``
(when the latest batch arrived), ``received_batches`` and ``missing_batches`` (``[[first, last],
...]``: gaps in the sequence, and the batches the gateway reports formed but not yet delivered),
``missing_batch_count``, ``backlog`` (from the last heartbeat: ``buffer_depth``,
``oldest_buffered_ts``, ``reported_last_batch``, ``undelivered_batches``, ``dropped``; null before
the first heartbeat), ``last_heartbeat`` (as sent), ``last_heartbeat_at``, ``registered_at``,
``registered_by`` and ``sensor_counts`` (its sensors by status).
"""

_SENSOR_SHAPE = """
A sensor: ``site``, ``sensor``, ``status`` (``ok`` | ``stale`` | ``silent`` | ``delayed`` |
``link_down`` | ``unknown``), ``gateway`` (the one carrying its readings), ``gateway_status``,
``last_ts`` (newest reading, event time), ``last_received_at``, ``silent_for_s``, ``rate_per_min``
(readings per minute over ``health.rate_window_s``; null until a tenth of it has passed),
``declared_rate_per_min``, ``readings`` (counted since tracking began), ``reported`` (the sensor's
entry in its gateway's last heartbeat), ``registration`` and ``first_seen_at`` (from the registry).
"""


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


@router.get(
    "/gateways", description=f'Health of the caller\'s gateways: ``{{"gateways": [...]}}``.\n{_GATEWAY_SHAPE}'
)
async def list_gateways(request: Request, status: str | None = None) -> dict[str, Any]:
    services = _services(request)
    p = services.auth.require(request, *READERS)
    found = await run_in_threadpool(
        health_report.gateways, services.store, services.pipeline.health, p.tenant, status
    )
    return {"gateways": found}


@router.get(
    "/gateways/{gateway}",
    description=(
        f"One gateway's health, with ``sensors``: every sensor it carries.\n{_GATEWAY_SHAPE}\n{_SENSOR_SHAPE}"
    ),
)
async def get_gateway(request: Request, gateway: str) -> dict[str, Any]:
    services = _services(request)
    p = services.auth.require(request, *READERS)
    found: dict[str, Any] = await run_in_threadpool(
        health_report.gateway, services.store, services.pipeline.health, p.tenant, gateway
    )
    return found


@router.get(
    "/sensors",
    description=(
        'Health of the caller\'s sensors: ``{"sensors": [...]}``, filtered by ``status``, ``site`` '
        f"and ``gateway`` when given.\n{_SENSOR_SHAPE}"
    ),
)
async def list_sensors(
    request: Request, status: str | None = None, site: str | None = None, gateway: str | None = None
) -> dict[str, Any]:
    services = _services(request)
    p = services.auth.require(request, *READERS)

    def work() -> list[dict[str, Any]]:
        return health_report.sensors(
            services.store, services.pipeline.health, p.tenant, status=status, site=site, gateway=gateway
        )

    return {"sensors": await run_in_threadpool(work)}

"""``POST /api/v1/ingest`` and ``POST /api/v1/heartbeat``: the HTTP front door for gateways."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from ironwatch.ingest.heartbeat import parse_heartbeat
from ironwatch.web import body
from ironwatch.web.auth import WRITERS
from ironwatch.web.services import Services

router = APIRouter(prefix="/api/v1", tags=["ingest"])

_INGEST_DOC = """Store one batch of readings.

Body: the batch envelope (``gateway``, ``batch``, ``site``, ``sent_at`` and either ``readings`` as rows
or ``columns``), optionally with ``Content-Encoding: gzip``. The answer comes once the batch is durable:
``{"accepted", "rejected", "duplicate", "errors"}``. Sending the same ``(gateway, batch)`` again stores
nothing and answers ``duplicate: true``. Readings that cannot be stored go to quarantine with the reason.
"""


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


@router.post("/ingest", description=_INGEST_DOC, response_model=None)
async def ingest(request: Request) -> Response:
    services = _services(request)
    principal = services.auth.require(request, *WRITERS)
    raw = await body.read(request, int(services.settings.server.max_body_bytes))
    outcome = await services.pipeline.ingest(principal, raw, "http")
    return Response(orjson.dumps(outcome.to_json()), media_type="application/json")


@router.post("/heartbeat", response_model=None)
async def heartbeat(request: Request) -> dict[str, Any]:
    """Record a gateway heartbeat (buffer depth, oldest buffered reading, last batch, sensor status).

    The answer's ``last_batch_stored`` is the highest batch number of the gateway the server holds
    or has begun to write (null: none): a gateway with a new outbox numbers its batches after it.
    """
    services = _services(request)
    principal = services.auth.require(request, *WRITERS)
    doc = await body.read_json(request, int(services.settings.server.max_body_bytes))
    beat = parse_heartbeat(doc, principal)
    stored = services.pipeline.heartbeat(principal.tenant, beat)
    return {"recorded": True, "gateway": beat["gateway"], "last_batch_stored": stored}

"""The ASGI front of the server: ``POST /api/v1/ingest`` straight to the pipeline, the rest to FastAPI.

Ingest is the one route that runs thousands of times a second. Through FastAPI each request passes
about ten layers of middleware, routing and dependency handling, which cost about a quarter of the
server's GIL time under the ingest benchmark (py-spy, ``--gil``). The front answers that route
itself with the very same steps as the FastAPI route in :mod:`ironwatch.web.routes.ingest` (the
key and role, the size limit and gzip, the pipeline, the answer and the one error shape), which
stays declared there for the OpenAPI document and for apps built without the front. The tests of
the HTTP API (refusals, errors, authentication) run against the server, so they cover this path.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ironwatch.errors import IronwatchError
from ironwatch.web import body
from ironwatch.web.auth import WRITERS
from ironwatch.web.errors import error_response, ironwatch_response
from ironwatch.web.services import Services

log = logging.getLogger(__name__)

INGEST_PATH = "/api/v1/ingest"


class Front:
    """An ASGI app: the ingest fast path in front of the FastAPI ``app``."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.services: Services = app.state.services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == INGEST_PATH and scope["method"] == "POST":
            response = await self._ingest(Request(scope, receive))
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _ingest(self, request: Request) -> Response:
        services = self.services
        try:
            principal = services.auth.require(request, *WRITERS)
            raw = await body.read(request, int(services.settings.server.max_body_bytes))
            outcome = await services.pipeline.ingest(principal, raw, "http")
        except IronwatchError as exc:
            return ironwatch_response(exc)
        except Exception:
            log.exception("unexpected error")
            return error_response(500, "internal", "internal error; the server log has the details")
        return Response(orjson.dumps(outcome.to_json()), media_type="application/json")


def front(app: FastAPI) -> Any:
    """The app the server runs: :class:`Front` over ``app``."""
    return Front(app)

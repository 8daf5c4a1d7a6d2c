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
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from ironwatch.errors import IronwatchError
from ironwatch.web import body
from ironwatch.web.auth import WRITERS
from ironwatch.web.errors import error_response, ironwatch_response
from ironwatch.web.services import Services

log = logging.getLogger(__name__)

INGEST_PATH = "/api/v1/ingest"


_JSON_HEADERS = [(b"content-type", b"application/json")]


class _Gone(Exception):
    """The client went away before its body was read: there is no one to answer."""


class Front:
    """An ASGI app: the ingest fast path in front of the FastAPI ``app``."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.services: Services = app.state.services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == INGEST_PATH and scope["method"] == "POST":
            await self._ingest(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _ingest(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Plain ASGI messages in and out: no Request or Response objects for the good case."""
        services, auth = self.services, self.services.auth
        limit = int(services.settings.server.max_body_bytes)
        headers = _headers(scope)
        try:
            principal = auth.require_role(auth.bearer(headers.get("authorization")), *WRITERS)
            body.check_length(headers.get("content-length"), limit)
            wire = await body.collect(_chunks(receive), limit)
            raw = body.decoded(wire, headers.get("content-encoding"), limit)
            outcome = await services.pipeline.ingest(principal, raw, "http")
        except _Gone:
            return
        except IronwatchError as exc:
            await ironwatch_response(exc)(scope, receive, send)
            return
        except Exception:
            log.exception("unexpected error")
            response = error_response(500, "internal", "internal error; the server log has the details")
            await response(scope, receive, send)
            return
        answer = orjson.dumps(outcome.to_json())
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*_JSON_HEADERS, (b"content-length", str(len(answer)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": answer})


def _headers(scope: Scope) -> dict[str, str]:
    """The request headers this route reads (names are lower case in ASGI)."""
    wanted = {b"authorization", b"content-length", b"content-encoding"}
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in wanted}


async def _chunks(receive: Receive) -> AsyncIterator[bytes]:
    """The request body's chunks, straight from the ASGI messages."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Gone
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


def front(app: FastAPI) -> Any:
    """The app the server runs: :class:`Front` over ``app``."""
    return Front(app)

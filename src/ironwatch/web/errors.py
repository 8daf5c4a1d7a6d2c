"""Every error the API answers has one JSON shape: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from ironwatch.errors import IronwatchError, UnsupportedEncoding

log = logging.getLogger(__name__)


def error_response(
    status: int, code: str, message: str, details: dict[str, object] | None = None
) -> JSONResponse:
    """A response in the API's one error shape."""
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        {"error": {"code": code, "message": message, "details": details or {}}},
        status_code=status,
        headers=headers,
    )


def ironwatch_response(exc: IronwatchError) -> JSONResponse:
    """The answer to one of our own errors, in the error shape."""
    details = {**exc.details, "retryable": exc.retryable} if exc.retryable else exc.details
    response = error_response(exc.status, exc.code, exc.message, details)
    if isinstance(exc, UnsupportedEncoding):  # RFC 7694: say which codings a resend may use
        response.headers["Accept-Encoding"] = ", ".join(exc.supported)
    return response


def install(app: FastAPI) -> None:
    """Translate every exception into the error shape; nothing leaves as a bare 500 page."""

    @app.exception_handler(IronwatchError)
    async def _ironwatch(_request: Request, exc: IronwatchError) -> JSONResponse:
        return ironwatch_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = exc.errors()
        first = problems[0] if problems else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        message = f"{where}: {first.get('msg', 'invalid request')}"
        return error_response(422, "invalid", message, {"field": where, "problems": len(problems)})

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, "internal", "internal error; the server log has the details")

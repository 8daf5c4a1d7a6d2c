"""Reading request bodies within the size limit, undoing gzip without inflating past it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request

from ironwatch.errors import BodyTooLarge, InvalidInput, UnsupportedEncoding
from ironwatch.ingest import gunzip, parse_json


async def read(request: Request, limit_bytes: int) -> bytes:
    """The raw body, gunzipped if ``Content-Encoding: gzip``; :class:`BodyTooLarge` past the limit."""
    check_length(request.headers.get("content-length"), limit_bytes)
    raw = await collect(request.stream(), limit_bytes)
    return decoded(raw, request.headers.get("content-encoding"), limit_bytes)


async def collect(chunks: AsyncIterator[bytes], limit_bytes: int) -> bytes:
    """Join a body's chunks as they arrive; :class:`BodyTooLarge` as soon as they pass the limit."""
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit_bytes:
            raise BodyTooLarge(limit_bytes)
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def check_length(declared: str | None, limit_bytes: int) -> None:
    """Refuse a body by its declared ``Content-Length`` before reading it."""
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes:
        raise BodyTooLarge(limit_bytes)


def decoded(body: bytes, content_encoding: str | None, limit_bytes: int) -> bytes:
    """A body as read off the wire, undone from its ``Content-Encoding`` (gzip or none)."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "gzip":
        return gunzip(body, limit_bytes)
    if encoding not in {"identity", ""}:
        raise UnsupportedEncoding(encoding, ("gzip", "identity"))
    return body


async def read_json(request: Request, limit_bytes: int) -> dict[str, Any]:
    """The body as a JSON object."""
    doc = parse_json(await read(request, limit_bytes))
    if not isinstance(doc, dict):
        raise InvalidInput("body", "expected a JSON object")
    return doc

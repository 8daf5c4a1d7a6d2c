"""The client side of the HTTP API, with the standard library only (the CLI must not need httpx).

:func:`error_from_answer` turns the API's one error shape back into the ironwatch error tree, with
the answer's status and whether a retry can help; the SDK uses it too. :class:`Remote` makes the
calls ``ironwatch query --url`` needs, and :func:`run_job` follows a query job to its saved CSV.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, BinaryIO
from urllib.parse import urlparse

from ironwatch import errors
from ironwatch.errors import InvalidInput, IronwatchError, QueryError, Unavailable

_BY_CODE: dict[str, type[IronwatchError]] = {
    "query": errors.QueryError,
    "unauthenticated": errors.Unauthenticated,
    "forbidden": errors.Forbidden,
    "not_found": errors.NotFound,
    "not_ready": errors.NotFound,
    "conflict": errors.Conflict,
    "invalid": errors.InvalidInput,
    "malformed": errors.MalformedBody,
    "too_large": errors.BodyTooLarge,
    "unsupported_encoding": errors.UnsupportedEncoding,
    "too_many": errors.TooManyRequests,
    "storage": errors.StorageError,
    "unavailable": errors.Unavailable,
}
_BY_STATUS: dict[int, type[IronwatchError]] = {
    401: errors.Unauthenticated,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.Conflict,
    413: errors.BodyTooLarge,
    422: errors.InvalidInput,
    429: errors.TooManyRequests,
    503: errors.Unavailable,
}
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})


def _one_line(text: str) -> str:
    return " ".join(text.split())


def error_from_answer(status: int, body: bytes, *, prefix: str = "") -> IronwatchError:
    """The ironwatch error for an error answer: the class of its ``code``, its message and details,
    and the answer's ``status``; ``prefix`` is put before the message (the CLI names the server)."""
    try:
        doc = json.loads(body)["error"]
        code, message, details = str(doc["code"]), str(doc["message"]), dict(doc.get("details") or {})
    except (ValueError, KeyError, TypeError):
        snippet = _one_line(body[:200].decode("utf-8", "replace"))
        code, details = "http", {}
        message = f"HTTP {status} without an ironwatch error" + (f": {snippet}" if snippet else "")
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status, IronwatchError)
    # Built without the subclasses' constructors, whose arguments the answer does not carry.
    error = cls.__new__(cls)
    IronwatchError.__init__(error, prefix + _one_line(message), details)
    error.status = status
    error.code = code
    error.retryable = bool(details.get("retryable")) or status in RETRYABLE_STATUSES
    for name in ("field", "kind", "name", "reason"):  # the attributes the subclasses promise
        setattr(error, name, str(details.get(name, message if name == "reason" else "")))
    if isinstance(error, errors.UnsupportedEncoding):
        error.encoding, error.supported = "", tuple(details.get("supported", ()))
    return error


class Remote:
    """An ironwatch server at ``url``, called with ``key``."""

    def __init__(self, url: str, key: str, *, timeout_s: float = 300.0) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in {"http", "https"} or not parsed.netloc:
            raise InvalidInput("--url", f"{url!r} is not an http:// or https:// URL")
        self.url = url.rstrip("/")
        self.key = key
        self.timeout_s = timeout_s

    def open(self, method: str, path: str, doc: Any = None) -> http.client.HTTPResponse:
        """Send a request; the open response on 2xx, the translated error otherwise."""
        data = json.dumps(doc).encode() if doc is not None else None
        headers = {"Authorization": f"Bearer {self.key}", "Accept": "application/json, text/csv, */*"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=self.timeout_s)
            return response
        except urllib.error.HTTPError as exc:
            with exc:
                body = exc.read()
            raise error_from_answer(exc.code, body, prefix=f"{self.url} answered {exc.code}: ") from exc
        except urllib.error.URLError as exc:
            raise Unavailable(f"cannot reach {self.url}: {_reason(exc.reason)}") from exc
        except TimeoutError as exc:
            raise Unavailable(f"{self.url} did not answer within {self.timeout_s:g} s") from exc
        except (http.client.HTTPException, ConnectionError) as exc:
            raise Unavailable(f"{self.url} broke off the answer: {_reason(exc)}") from exc

    def call(self, method: str, path: str, doc: Any = None) -> Any:
        """A JSON call: the decoded answer."""
        with self.open(method, path, doc) as response:
            return json.loads(self._read(response))

    def _read(self, response: http.client.HTTPResponse) -> bytes:
        try:
            return bytes(response.read())
        except (TimeoutError, http.client.HTTPException, ConnectionError) as exc:
            raise Unavailable(f"{self.url} broke off the answer: {_reason(exc)}") from exc

    def query(self, sql: str, fmt: str) -> bytes:
        """The answer of ``POST /api/v1/query`` in ``fmt`` (csv, json or parquet)."""
        with self.open("POST", "/api/v1/query", {"sql": sql, "format": fmt}) as response:
            return self._read(response)

    def download(self, path: str, out: BinaryIO, chunk_bytes: int = 1 << 20) -> int:
        """Copy the body of ``GET path`` into ``out`` in chunks; returns the bytes copied."""
        size = 0
        with self.open("GET", path) as response:
            while chunk := self._chunk(response, chunk_bytes):
                out.write(chunk)
                size += len(chunk)
        return size

    def _chunk(self, response: http.client.HTTPResponse, chunk_bytes: int) -> bytes:
        try:
            return bytes(response.read(chunk_bytes))
        except (TimeoutError, http.client.HTTPException, ConnectionError) as exc:
            raise Unavailable(f"{self.url} broke off the answer: {_reason(exc)}") from exc


def _reason(reason: object) -> str:
    return _one_line(str(reason)) or type(reason).__name__


def _size(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def run_job(
    remote: Remote,
    sql: str,
    out: BinaryIO,
    progress: Callable[[str], None],
    *,
    report_every_s: float = 5.0,
) -> dict[str, Any]:
    """Run ``sql`` as a query job, tell ``progress`` how it goes, and copy its CSV into ``out``.

    A failed job raises its error (a :class:`QueryError` for bad SQL); Ctrl-C cancels the job.
    """
    job = remote.call("POST", "/api/v1/queries", {"sql": sql})
    url = f"/api/v1/queries/{job['id']}"
    progress(f"query {job['id']}: {job['status']}")
    status, reported, pause = job["status"], time.monotonic(), 0.05
    try:
        while job["status"] in {"queued", "running"}:
            time.sleep(pause)
            pause = min(pause * 2, 1.0)
            job = remote.call("GET", url)
            is_news = job["status"] != status or time.monotonic() - reported >= report_every_s
            if is_news and job["status"] in {"queued", "running"}:
                rows = f", {job['rows']:,} rows so far" if job.get("rows") else ""
                duration = f", {job['duration_s']:.1f} s" if job.get("duration_s") is not None else ""
                progress(f"query {job['id']}: {job['status']}{duration}{rows}")
                status, reported = job["status"], time.monotonic()
    except KeyboardInterrupt:
        remote.call("DELETE", url)
        progress(f"query {job['id']}: cancelled")
        raise
    if job["status"] != "succeeded":
        error = job.get("error") or {}
        raise QueryError(
            f"query {job['id']} {job['status']}: {error.get('message', 'no reason given')}",
            {**error.get("details", {}), "query": job["id"]},
        )
    scanned = f", {_size(job['bytes_scanned'])} scanned" if job.get("bytes_scanned") is not None else ""
    progress(
        f"query {job['id']}: succeeded, {job['rows']:,} rows{scanned} in {job['duration_s']:.1f} s; "
        f"downloading {_size(job['result_bytes'] or 0)}"
    )
    remote.download(f"{url}/result", out)
    return dict(job)

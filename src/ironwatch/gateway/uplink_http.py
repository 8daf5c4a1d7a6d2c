"""HTTP uplink: gzip batch envelopes to ``POST /api/v1/ingest`` over keep-alive connections.

Up to ``uplink.in_flight`` batches are on their way at once, each on its own connection, so a
backlog drains at the rate the server can take rather than one round trip at a time.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import orjson

from ironwatch.gateway.config import GatewayConfig
from ironwatch.gateway.outbox import Batch
from ironwatch.gateway.uplink import REFUSING_STATUSES, LinkDown, Result, last_batch_stored

_INGEST = "/api/v1/ingest"
_HEARTBEAT = "/api/v1/heartbeat"


class HttpUplink:
    """Sends to an ironwatch server with the gateway's key."""

    def __init__(self, config: GatewayConfig) -> None:
        parts = urlsplit(config.uplink.url)
        self.target = (
            f"{parts.scheme}://{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        )
        self._is_tls = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._is_tls else 80)
        self._prefix = parts.path.rstrip("/")
        self._timeout_s = config.uplink.timeout_s
        self._headers = {
            "Authorization": f"Bearer {config.uplink.key}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        }
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(config.uplink.in_flight, thread_name_prefix="uplink-http")

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._is_tls else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self._timeout_s)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _request(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, str | None]:
        conn = self._connection()
        try:
            conn.request("POST", self._prefix + path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read(), response.getheader("Retry-After")
        except (OSError, http.client.HTTPException) as exc:
            conn.close()  # the next request opens a new connection
            raise LinkDown(f"{self.target}: {type(exc).__name__}: {exc}") from exc

    def _send_one(self, batch: Batch) -> Result:
        try:
            status, body, retry_after = self._request(_INGEST, batch.payload, self._headers)
        except LinkDown as exc:
            return Result(batch, "failed", reason=exc.message)
        answer = _answer(body)
        if status == 200:
            return Result(batch, "delivered", status, answer)
        if status in REFUSING_STATUSES:
            return Result(batch, "refused", status, answer)
        return Result(
            batch,
            "failed",
            status,
            answer,
            reason=f"{self.target} answered {status}: {_message(answer)}",
            retry_after_s=_seconds(retry_after),
        )

    def send(self, batches: Sequence[Batch]) -> list[Result]:
        """Send the batches, up to ``in_flight`` at once; results in the order of ``batches``."""
        if len(batches) == 1:
            return [self._pool.submit(self._send_one, batches[0]).result()]
        return list(self._pool.map(self._send_one, batches))

    def heartbeat(self, doc: dict[str, Any]) -> None:
        """Post one heartbeat."""
        self._heartbeat(doc)

    def _heartbeat(self, doc: dict[str, Any]) -> Any:
        headers = {"Authorization": self._headers["Authorization"], "Content-Type": "application/json"}
        status, body, _ = self._pool.submit(self._request, _HEARTBEAT, orjson.dumps(doc), headers).result()
        if status != 200:
            raise LinkDown(f"{self.target} answered the heartbeat with {status}: {_message(_answer(body))}")
        return _answer(body)

    def last_batch_stored(self, heartbeat: dict[str, Any]) -> int | None:
        """Post a heartbeat; the answer's ``last_batch_stored``."""
        return last_batch_stored(self._heartbeat(heartbeat), self.target)

    def check(self, heartbeat: dict[str, Any]) -> None:
        """Prove the server, the key and the gateway's site with one real heartbeat, answered."""
        self.last_batch_stored(heartbeat)

    def close(self) -> None:
        """Close every connection."""
        self._pool.shutdown(wait=True)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()


def _answer(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:2000].decode("utf-8", "replace")


def _message(answer: Any) -> str:
    if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        return str(answer["error"].get("message", ""))
    return str(answer)[:300]


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None

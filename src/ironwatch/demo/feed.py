"""The demo's built-in feed: a synthetic site sent to a server as a gateway would send it.

Readings go over real HTTP as columnar, gzip-encoded batch envelopes with the gateway's own
increasing batch numbers. A batch that fails for a reason that may pass (no connection, a 5xx, 429)
is sent again with the same number until it is acknowledged, so a restart of the server loses
nothing and stores nothing twice. The gateway issue replaces this feed with the real gateway.
"""

from __future__ import annotations

import gzip
import http.client
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

import orjson

from ironwatch.demo.site import Site, Window
from ironwatch.errors import IronwatchError

log = logging.getLogger(__name__)

#: Answers after which the same request may succeed.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class Refused(IronwatchError):
    """The server refused a request for a reason that sending it again cannot fix."""

    def __init__(self, what: str, status: int, reason: str) -> None:
        super().__init__(f"the server refused {what}: {status} {reason}", {"status": status})
        self.what = what
        self.status = status
        self.reason = reason


class Link:
    """One keep-alive HTTP connection to a server, authenticated with an API key."""

    def __init__(self, url: str, key: str, *, timeout_s: float = 60.0) -> None:
        parsed = urlparse(url)
        host = parsed.hostname or "127.0.0.1"
        self.host = "127.0.0.1" if host in {"0.0.0.0", "::"} else host
        self.port = parsed.port or 80
        self.key = key
        self.timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """Send one request; connection problems raise ``OSError`` or ``http.client.HTTPException``."""
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        try:
            self._conn.request(
                method, path, body=body, headers={"Authorization": f"Bearer {self.key}", **(headers or {})}
            )
            response = self._conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise

    def json(self, method: str, path: str, doc: Any = None) -> Any:
        """A JSON request whose answer must be 2xx; :class:`Refused` otherwise."""
        body = None if doc is None else orjson.dumps(doc)
        status, answer = self.request(method, path, body, {"Content-Type": "application/json"})
        if status >= 300:
            raise Refused(f"{method} {path}", status, _message(answer))
        return orjson.loads(answer)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _message(answer: bytes) -> str:
    try:
        return str(orjson.loads(answer)["error"]["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return answer[:200].decode(errors="replace")


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Feed:
    """Sends ``site``'s readings for ``site_id`` as ``gateway``, numbering batches from ``first_batch``.

    ``fed_until_ms`` is the time of the last reading acknowledged; ``on_sent(batch, fed_until_ms)``
    is called after each acknowledged batch.
    """

    def __init__(
        self,
        link: Link,
        site: Site,
        *,
        site_id: str,
        gateway: str,
        first_batch: int,
        fed_until_ms: int,
        interval_s: float = 2.0,
        max_batch_readings: int = 100_000,
        on_sent: Callable[[int, int], None] | None = None,
    ) -> None:
        self.link = link
        self.site = site
        self.site_id = site_id
        self.gateway = gateway
        self.next_batch = first_batch
        self.fed_until_ms = fed_until_ms
        self.interval_s = interval_s
        self.periods_per_batch = max(1, max_batch_readings // site.readings_per_period)
        self.on_sent = on_sent
        self.readings_sent = 0
        self.batches_sent = 0
        self.retries = 0

    def send_until(self, until_ms: int, stop: threading.Event) -> bool:
        """Send every reading up to ``until_ms`` not sent yet; ``False`` if ``stop`` came first."""
        while not stop.is_set():
            ts = self.site.timestamps(self.fed_until_ms, until_ms)[: self.periods_per_batch]
            if len(ts) == 0:
                return True
            window = self.site.window(ts)
            if not self._deliver(self._envelope(self.next_batch, window), stop):
                return False
            self.fed_until_ms = int(ts[-1])
            self.readings_sent += window.count
            self.batches_sent += 1
            if self.on_sent is not None:
                self.on_sent(self.next_batch, self.fed_until_ms)
            self.next_batch += 1
        return False

    def run(
        self,
        stop: threading.Event,
        *,
        clock: Callable[[], float] = time.time,
        on_tick: Callable[[], None] | None = None,
        heartbeat_s: float = 10.0,
    ) -> None:
        """Send what happened since the last batch every ``interval_s``, until ``stop`` is set."""
        last_beat = 0.0
        while not stop.is_set():
            started = time.monotonic()
            if not self.send_until(int(clock() * 1000), stop):
                return
            if started - last_beat >= heartbeat_s:
                self.heartbeat(int(clock() * 1000))
                last_beat = started
            if on_tick is not None:
                on_tick()
            stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def heartbeat(self, now_ms: int) -> None:
        """Tell the server this gateway is alive and how much it still holds; failures are only logged."""
        waiting = len(self.site.timestamps(self.fed_until_ms, now_ms)) * self.site.readings_per_period
        beat: dict[str, Any] = {
            "gateway": self.gateway,
            "site": self.site_id,
            "ts": _iso(now_ms),
            "buffer_depth": waiting,
            "last_batch": max(0, self.next_batch - 1),
        }
        if waiting:
            beat["oldest_buffered_ts"] = _iso(self.fed_until_ms + self.site.period_ms)
        try:
            self.link.json("POST", "/api/v1/heartbeat", beat)
        except (OSError, http.client.HTTPException, IronwatchError) as exc:
            log.info("demo feed: heartbeat not sent: %s", exc)

    def _envelope(self, batch: int, window: Window) -> bytes:
        doc = {
            "gateway": self.gateway,
            "batch": batch,
            "site": self.site_id,
            "sent_at": _iso(int(time.time() * 1000)),
            "columns": {
                "ts": window.ts_ms,
                "sensor": window.sensor,
                "metric": window.metric,
                "value": window.value,
            },
        }
        return gzip.compress(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), compresslevel=1)

    def _deliver(self, body: bytes, stop: threading.Event) -> bool:
        """POST one batch until it is acknowledged (stored, or already stored); ``False`` if stopped."""
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        delay_s, failures = 0.2, 0
        while not stop.is_set():
            try:
                status, answer = self.link.request("POST", "/api/v1/ingest", body, headers)
            except (OSError, http.client.HTTPException) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if status == 200:
                    doc = orjson.loads(answer)
                    if doc.get("rejected"):
                        log.warning(
                            "demo feed: batch %d: %d readings quarantined", self.next_batch, doc["rejected"]
                        )
                    return True
                if status not in RETRY_STATUSES:
                    raise Refused(f"batch {self.next_batch}", status, _message(answer))
                problem = f"{status} {_message(answer)}"
            failures += 1
            self.retries += 1
            # A server restart takes a few seconds; say something only when it takes longer.
            level = logging.WARNING if failures == 8 else logging.INFO
            log.log(
                level, "demo feed: batch %d not acknowledged (%s); sending it again", self.next_batch, problem
            )
            stop.wait(delay_s)
            delay_s = min(delay_s * 2, 5.0)
        return False

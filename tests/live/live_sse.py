"""A server-sent events listener for tests: reads a real stream in a thread, events with arrival times."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Event:
    name: str
    data: dict[str, Any]
    at: float  # time.monotonic() when it arrived


@dataclass
class Listener:
    """``GET /api/v1/live`` with ``params``, read until :meth:`stop` (the server's heartbeats wake it)."""

    url: str
    key: str
    params: dict[str, str]
    events: list[Event] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    status: int = 0
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _open: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Listener:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._open.wait(10), "the live stream did not open"
        assert self.status == 200, f"live stream answered {self.status}"
        return self

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        try:
            with (
                httpx.Client(base_url=self.url, headers=headers, timeout=30) as client,
                client.stream("GET", "/api/v1/live", params=self.params) as response,
            ):
                self.status = response.status_code
                self._open.set()
                if response.status_code != 200:
                    return
                name, data = "message", ""
                for line in response.iter_lines():
                    if line.startswith(":"):
                        self.comments.append(line)
                    elif line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: "):
                        data += line[6:]
                    elif line == "" and data:
                        self.events.append(Event(name, json.loads(data), time.monotonic()))
                        name, data = "message", ""
                    if self._stop.is_set():
                        return
        except (httpx.HTTPError, OSError) as exc:
            self.error = exc
        finally:
            self._open.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def named(self, name: str) -> list[Event]:
        return [e for e in list(self.events) if e.name == name]

    def values(self) -> list[float]:
        return [v for e in self.named("readings") for v in e.data["value"]]

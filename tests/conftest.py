"""Shared fixtures: real servers on free loopback ports, a real Mosquitto, tenants and keys.

Nothing here mocks ironwatch: the server is the real ``ironwatch server`` command in a subprocess,
so tests can ``kill -9`` it and start it again on the same data directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from ironwatch.store import Store

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_tool(name: str, *candidates: str) -> str:
    """Path of a tool the test needs; missing fails in CI (never a silent skip there)."""
    for candidate in (name, *candidates):
        found = shutil.which(candidate) or (
            candidate if os.path.isabs(candidate) and os.access(candidate, os.X_OK) else None
        )
        if found:
            return found
    message = f"{name} is not installed (make test installs it)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)
    raise AssertionError("unreachable")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    check: Callable[[], Any], timeout_s: float = 20.0, interval_s: float = 0.05, what: str = ""
) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what or check}; last value {last!r}")


@dataclass
class Server:
    """An ``ironwatch server`` subprocess on a data directory; restartable, killable."""

    data_dir: Path
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    url: str = ""
    port: int = 0
    log_path: Path | None = None
    #: Its own process group, as a server started from a terminal (signals to the group reach its children).
    new_session: bool = False

    def start(self) -> Server:
        args = [
            sys.executable,
            "-m",
            "ironwatch.cli",
            "server",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
            *self.extra_args,
        ]
        env = {**os.environ, "IRONWATCH_LAKE__FLUSH_INTERVAL_S": "0.5", **self.env}
        self.log_path = self.data_dir.parent / "server.log"
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                args,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
                start_new_session=self.new_session,
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("ironwatch listening on "):
            self.kill()
            raise AssertionError(f"server did not start: {line!r} {self.log_path.read_text()[-2000:]}")
        self.url = line.split()[-1]
        self.port = int(self.url.rsplit(":", 1)[1])  # keep the port across restarts
        return self

    def stop(self) -> None:
        """Graceful stop (SIGTERM): everything acknowledged is flushed to the lake."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
        self._close()

    def kill(self) -> None:
        """``kill -9``: no chance to flush anything."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._close()

    def _close(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@dataclass
class Tenant:
    name: str
    keys: dict[str, str]


class Lab:
    """A data directory with tenants and keys, and the server that runs on it."""

    def __init__(self, data_dir: Path, store_url: str | None = None) -> None:
        self.data_dir = data_dir
        self.store_url = store_url or f"sqlite:///{data_dir / 'ironwatch.db'}"
        self.store = Store(self.store_url)
        self.servers: list[Server] = []

    def tenant(self, name: str, *roles: str) -> Tenant:
        self.store.create_tenant(name, (self.data_dir / "lake" / name).as_uri())
        keys = {}
        for role in roles or ("admin", "analyst", "gateway", "viewer", "mechanic"):
            _, secret = self.store.create_key(name, role)
            keys[role] = secret
        return Tenant(name, keys)

    def server(self, *extra_args: str, **env: str) -> Server:
        env = {"IRONWATCH_STORE__URL": self.store_url, **env}
        server = Server(self.data_dir, list(extra_args), dict(env)).start()
        self.servers.append(server)
        return server

    def close(self) -> None:
        for server in self.servers:
            server.kill()
        self.store.close()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path / "data")
    yield lab
    lab.close()


@dataclass
class Broker:
    """A Mosquitto on a free loopback port, restartable."""

    port: int
    conf: Path
    binary: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Broker:
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_until(up, 10, what="mosquitto to listen")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    binary = require_tool("mosquitto", "/usr/sbin/mosquitto")
    port = free_port()
    store = tmp_path / "mosquitto"
    store.mkdir()
    conf = tmp_path / "mosquitto.conf"
    # As root, Mosquitto drops to the 'mosquitto' user, who cannot write the persistence file
    # under pytest's private tmp_path: persistence would silently do nothing.
    run_as = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
        f"persistence_location {store}/\nautosave_interval 1\nmax_queued_messages 0\n"
        f"max_inflight_messages 0\n{run_as}"
    )
    broker = Broker(port, conf, binary).start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database on a private cluster, shared by one test module."""
    from pg import postgres_cluster  # pg imports this module: import it only when needed

    with postgres_cluster() as url:
        yield url

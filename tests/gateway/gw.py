"""Test helpers: a gateway subprocess on a written config, and a loopback proxy that can cut the link."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import free_port, wait_until


def simulator_config(
    folder: Path,
    uplink: str,
    *,
    key: str | None = None,
    tenant: str | None = None,
    sensors: int = 20,
    rate_per_min: float = 60,
    gateway: str = "gw-test",
    site: str = "hall-t",
    max_bytes: int = 1 << 30,
    batch_max_readings: int = 500,
    extra_source: str = "",
) -> Path:
    """Write ``gateway.toml`` for a small simulated site; returns its path."""
    credentials = f'key = "{key}"' if key else f'tenant = "{tenant}"'
    text = f"""
[gateway]
id = "{gateway}"
site = "{site}"
heartbeat_interval_s = 1

[uplink]
url = "{uplink}"
{credentials}
timeout_s = 3
backoff_min_s = 0.05
backoff_max_s = 0.5

[buffer]
path = "outbox.db"
max_bytes = {max_bytes}

[batch]
max_readings = {batch_max_readings}
interval_s = 0.2

[metrics]
port = {free_port()}

[[sources]]
type = "simulator"
sensors = {sensors}
rate_per_min = {rate_per_min}
delivery = 1.0
faults = "none"
interval_s = 0.2
{extra_source}
"""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "gateway.toml"
    path.write_text(text)
    return path


@dataclass
class GatewayProcess:
    """``ironwatch gateway --config PATH`` as a subprocess: start, stop (SIGTERM), kill -9, status."""

    config: Path
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    log_path: Path | None = None

    def start(self) -> GatewayProcess:
        self.log_path = self.config.parent / "gateway.log"
        args = [
            sys.executable,
            "-m",
            "ironwatch.cli",
            "gateway",
            "--config",
            str(self.config),
            *self.extra_args,
        ]
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True, env=os.environ)
        return self

    def status(self) -> dict[str, Any]:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "ironwatch.cli",
                "gateway",
                "status",
                "--config",
                str(self.config),
                "--json",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        doc: dict[str, Any] = json.loads(out.stdout)
        return doc

    def stop(self, timeout_s: float = 60) -> dict[str, Any]:
        """SIGTERM; returns the JSON counts of the last line of standard output."""
        assert self.proc is not None and self.proc.stdout is not None
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=timeout_s)
        assert self.proc.returncode == 0, f"gateway exited {self.proc.returncode}: {self.log()}"
        self.proc = None
        lines = [line for line in out.splitlines() if line.strip()]
        doc: dict[str, Any] = json.loads(lines[-1])
        return doc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text()[-3000:] if self.log_path and self.log_path.exists() else ""


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of a server; ``cut()`` makes every connection die mid-request.

    While cut, it accepts connections, reads part of the request, and closes them: the client sees
    its request fail half-way, the worst case for exactly-once delivery.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.is_cut = threading.Event()
        self.cuts = 0
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        """From now on, connections die mid-request; open ones are closed too."""
        self.is_cut.set()
        with self._lock:
            for conn in self._conns:
                _close(conn)
            self._conns.clear()

    def heal(self) -> None:
        self.is_cut.clear()

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self.listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if self.is_cut.is_set():
            client.settimeout(2)
            with contextlib.suppress(OSError):
                client.recv(700)  # take part of the request, then drop the connection
            self.cuts += 1
            _close(client)
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            _close(client)
            return
        with self._lock:
            self._conns += [client, upstream]
        pair = {client: upstream, upstream: client}
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select(list(pair), [], [], 0.2)
                if self.is_cut.is_set():
                    break
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    pair[sock].sendall(data)
        except OSError:
            pass
        finally:
            _close(client)
            _close(upstream)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def lake_count(server_client: Any, gateway: str) -> int:
    """Readings of ``gateway`` that SQL sees."""
    answer = server_client.post(
        "/api/v1/query",
        json={"sql": f"SELECT count(*) FROM readings WHERE gateway = '{gateway}'", "format": "json"},
    )
    answer.raise_for_status()
    return int(answer.json()["rows"][0][0])


def duplicates(server_client: Any, gateway: str) -> int:
    """Readings stored more than once (same sensor, metric and time)."""
    sql = (
        "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM readings "
        f"WHERE gateway = '{gateway}' GROUP BY sensor, metric, ts)"
    )
    answer = server_client.post("/api/v1/query", json={"sql": sql, "format": "json"})
    answer.raise_for_status()
    return int(answer.json()["rows"][0][0])


def settle(server_client: Any, gateway: str, want: int, timeout_s: float = 60) -> int:
    """Wait until SQL sees ``want`` readings of the gateway (the lake flushes every 0.5 s in tests)."""
    return int(
        wait_until(
            lambda: (n := lake_count(server_client, gateway)) >= want and n,
            timeout_s,
            interval_s=0.3,
            what=f"{want} readings in SQL",
        )
    )

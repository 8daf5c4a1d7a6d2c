"""The demo: the real `ironwatch demo` command with its gateway, simulated outages and backfill."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from conftest import Server, wait_until
from ironwatch.demo import Link
from ironwatch.gateway.outbox import open_outbox
from ironwatch.gateway.simulator import Options, Simulator

SENSORS = 20
FAST = ["--port", "0", "--sensors", str(SENSORS), "--backfill-days", "0.02"]


class Demo:
    """``ironwatch demo`` in a subprocess, its stdout read line by line as it comes."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        env = {**os.environ, "IRONWATCH_LAKE__FLUSH_INTERVAL_S": "1"}
        command = [sys.executable, "-m", "ironwatch.cli", "demo", "--data-dir", str(data_dir), *args]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.lines: list[tuple[float, str]] = []  # (wall time seen, line)
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def line(self, prefix: str, timeout_s: float = 30) -> tuple[float, str]:
        """The first stdout line starting with ``prefix`` (after indentation): when it came, and the rest."""
        deadline = time.monotonic() + timeout_s
        while True:
            for seen, line in self.lines:
                if line.strip().startswith(prefix):
                    return seen, line.strip()[len(prefix) :]
            try:
                got = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                got = None
            if got is None:
                raise AssertionError(f"no line starting with {prefix!r} in {self.lines} {self.stderr()}")
            self.lines.append((time.time(), got))

    def value_after(self, prefix: str, timeout_s: float = 30) -> str:
        return self.line(prefix, timeout_s)[1]

    def wait(self, timeout_s: float = 60) -> int:
        code = self.proc.wait(timeout=timeout_s)
        self.line("demo stopped:", timeout_s=5)
        assert self.lines[-1][1].startswith("demo stopped:")
        return code

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def sql(url: str, key: str, text: str) -> list[list[Any]]:
    answer = httpx.post(f"{url}/api/v1/query", json={"sql": text}, headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    rows: list[list[Any]] = answer.json()["rows"]
    return rows


def test_demo_runs_a_gateway_through_outages_and_backfills_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo-data"
    started_ms = int(time.time() * 1000)
    demo = Demo(data_dir, *FAST, "--outage-every", "4", "--outage-s", "2", "--duration", "9")
    try:
        assert "0.02 days at 2 readings per minute per metric" in demo.value_after("history: ")
        url = demo.value_after("export IRONWATCH_URL=")
        key = demo.value_after("export IRONWATCH_KEY=")
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        # Some sensors may be silent for the whole short test (a dropout fault, a poor link).
        sensors = "SELECT count(DISTINCT sensor) FROM readings WHERE gateway = 'gw-hall-a'"
        wait_until(lambda: sql(url, key, sensors)[0][0] >= SENSORS // 2, 20, 0.2, "sensors in SQL")
        cut_at, _ = demo.line("uplink cut for 2 s (simulated outage)")
        healed_at, buffered = demo.line("uplink back after 2 s: ")
        assert int(buffered.split()[0].replace(",", "")) > 0
        demo.line("backlog drained in ")
        assert demo.wait() == 0, demo.stderr()
    finally:
        demo.kill()
    truth = data_dir / "gateway" / "simulator-faults.jsonl"
    assert [json.loads(line)["kind"] for line in truth.read_text().splitlines()]

    # A second run reuses the outbox: new keys, the old ones revoked, no second backfill.
    again = Demo(data_dir, *FAST, "--outage-every", "0", "--duration", "2")
    try:
        assert again.value_after("history: ").startswith("backfilled by an earlier run")
        url = again.value_after("export IRONWATCH_URL=")
        new_key = again.value_after("export IRONWATCH_KEY=")
        assert new_key != key
        refused = httpx.post(
            f"{url}/api/v1/query", json={"sql": "SELECT 1"}, headers={"Authorization": f"Bearer {key}"}
        )
        assert refused.status_code == 401
        assert again.wait() == 0, again.stderr()
    finally:
        again.kill()

    outbox = open_outbox(
        data_dir / "gateway" / "outbox.db", gateway="gw-hall-a", site="hall-a", max_bytes=1 << 30
    )
    counts = outbox.counts()
    history_ms = [int(part) for part in (outbox.note("backfill_range") or "").split(",")]
    outbox.close()
    assert counts.buffered == counts.dropped == counts.dead_lettered == 0, counts
    # The banner's command for the gateway's counts gives the same figures.
    (shown,) = [line for _, line in again.lines if " gateway status --outbox " in line]
    words = shown.split("#")[0].split()
    assert (
        words[1:4] == ["gateway", "status", "--outbox"]
        and Path(words[4]) == data_dir / "gateway" / "outbox.db"
    )
    status = subprocess.run(
        [sys.executable, "-m", "ironwatch.cli", *words[1:], "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    got, want = json.loads(status.stdout), counts.to_dict()
    del want["oldest_buffered_ms"]  # shown as oldest_buffered_ts: "-" (nothing buffered)
    assert {k: got[k] for k in want} == want and got["oldest_buffered_ts"] == "-", got
    server = Server(data_dir).start()
    try:
        with server.client(new_key) as client:
            (gateway,) = client.get("/api/v1/gateways").json()["gateways"]
        assert gateway["received_batches"] == [[1, counts.last_batch]]  # one range: no gap, no repeat
        # Everything the gateway sampled, through both runs and the outage, is in the lake once.
        total, distinct, first = sql(
            server.url,
            new_key,
            "SELECT count(*), count(DISTINCT (sensor, metric, ts)), epoch_ms(min(ts)) FROM readings",
        )[0]
        assert total == distinct == counts.sampled == counts.acknowledged
        # History: 0.02 days before the first run, one sample per sensor every 30 s.
        assert history_ms[1] - history_ms[0] == round(0.02 * 86_400_000)
        assert abs(history_ms[1] - started_ms) < 10_000 and first >= history_ms[0]
        phases = sql(
            server.url,
            new_key,
            "SELECT max(n) FROM (SELECT count(DISTINCT epoch_ms(ts) % 30000) AS n FROM readings "
            f"WHERE epoch_ms(ts) < {history_ms[1]} GROUP BY sensor)",
        )
        assert phases == [[1]]
        # The readings of the outage's window are all there: the simulator says which they are.
        a, b = int(cut_at * 1000) - 1000, int(healed_at * 1000) + 1000
        expected = Simulator(Options(sensors=SENSORS)).readings(a, b).num_rows
        window = f"SELECT count(*) FROM readings WHERE epoch_ms(ts) >= {a} AND epoch_ms(ts) < {b}"
        assert sql(server.url, new_key, window) == [[expected]] and expected > 0
    finally:
        server.stop()


def test_link_cuts_open_connections_and_turns_new_ones_away() -> None:
    upstream = socket.create_server(("127.0.0.1", 0))
    link = Link("127.0.0.1", upstream.getsockname()[1])
    try:
        client = socket.create_connection(("127.0.0.1", link.port), timeout=5)
        server_side, _ = upstream.accept()
        client.sendall(b"hello")
        assert server_side.recv(5) == b"hello"
        link.cut()
        assert client.recv(10) == b""  # the open connection died
        late = socket.create_connection(("127.0.0.1", link.port), timeout=5)
        late.sendall(b"POST /api/v1/ingest")
        assert late.recv(10) == b""
        wait_until(lambda: link.refused == 1, 5, 0.05, "the late connection turned away")
        link.heal()
        healed = socket.create_connection(("127.0.0.1", link.port), timeout=5)
        again, _ = upstream.accept()
        healed.sendall(b"back")
        assert again.recv(4) == b"back"
        for sock in (client, server_side, late, healed, again):
            sock.close()
    finally:
        link.close()
        upstream.close()

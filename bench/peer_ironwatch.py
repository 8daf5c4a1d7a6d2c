"""ironwatch as one more system in the peer ingest benchmark (``../shared/bench/peers``).

    python3 ../shared/bench/peers/run_peers.py --readings 2000000 --json \
        --extra-peer bench/peer_ironwatch.py:IronwatchPeer \
        --extra-peer bench/peer_ironwatch.py:IronwatchAckedPeer

This file is loaded by the peers harness inside its own virtual environment (urllib3, psycopg and
numpy only), so it never imports ironwatch: it drives the real ``ironwatch`` command of the project's
``.venv`` (or ``$IRONWATCH_BIN``) and talks to the server over HTTP, like any user would.

- ``IronwatchPeer`` counts with SQL (``SELECT count(*) FROM readings``): the same meaning as the
  other systems' count, readings a query can see. It includes the wait for the write-ahead log to be
  flushed to Parquet (``lake.flush_interval_s``, default 10 s, or ``$IRONWATCH_PEER_FLUSH_INTERVAL_S``).
- ``IronwatchAckedPeer`` counts the readings the server acknowledged as durable (fsynced in the
  write-ahead log, ``ironwatch_readings_accepted_total`` in ``/metrics``): what a gateway waits for.
  Its settle() then waits until SQL sees them all and reports how long that took.
See bench/README.md for why both are reported.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode

TENANT = "bench"
HERE = Path(__file__).resolve().parent


def ironwatch_bin() -> Path:
    """The ``ironwatch`` command: ``$IRONWATCH_BIN``, else the project's ``.venv`` next to this folder."""
    found = os.environ.get("IRONWATCH_BIN")
    return Path(found) if found else HERE.parent / ".venv" / "bin" / "ironwatch"


def _pool(url: str) -> Any:
    import urllib3

    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    return urllib3.HTTPConnectionPool(
        host, int(port), maxsize=2, retries=False, timeout=urllib3.Timeout(connect=5, read=120)
    )


class IronwatchPeer:
    """The peer: a private ``ironwatch server`` on a free loopback port, in the run's temp dir."""

    name = "ironwatch"
    client_kind = "peer_ironwatch:IronwatchRows"
    count_by = "sql"

    def __init__(self) -> None:
        self.bin = ironwatch_bin()
        self.flush_interval_s = os.environ.get("IRONWATCH_PEER_FLUSH_INTERVAL_S", "")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None
        self.pool: Any = None
        self.dir = Path()
        self.url = ""
        self.keys: dict[str, str] = {}
        self.count_started: float | None = None
        self.acked_seen_s: float | None = None
        self._sql_cache: tuple[float, int] = (-1.0, -1)
        self._sql_at = 0.0

    # lifecycle -----------------------------------------------------------------------------------
    def install(self) -> None:
        if not os.access(self.bin, os.X_OK):
            raise RuntimeError(f"{self.bin} is missing: run `make install` in the ironwatch repository")

    def version(self) -> str:
        out = subprocess.run([str(self.bin), "--version"], capture_output=True, text=True, timeout=60)
        return out.stdout.strip() or out.stderr.strip()

    def settings(self) -> dict[str, Any]:
        return {
            "binary": str(self.bin),
            "count": "SQL count(*) over the Parquet lake"
            if self.count_by == "sql"
            else "readings acknowledged as durable (/metrics ironwatch_readings_accepted_total)",
            "durability": "200 only after the batch is fdatasync'ed in the write-ahead log (group commit)",
            "dedupe": "(gateway, batch) ledger",
            "lake.flush_interval_s": self.flush_interval_s or "server default",
            "envelope": "JSON rows, ts as epoch ms, 1000 readings per POST /api/v1/ingest",
        }

    def _cli(self, *args: str) -> str:
        done = subprocess.run(
            [str(self.bin), *args, "--data-dir", str(self.dir)], capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"ironwatch {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def start(self, workdir: Path) -> None:
        self.dir = workdir / "ironwatch"
        self.dir.mkdir()
        self._cli("tenants", "create", TENANT)
        for role in ("gateway", "analyst"):
            self.keys[role] = json.loads(
                self._cli("keys", "create", "--tenant", TENANT, "--role", role, "--json")
            )["key"]
        env = dict(os.environ)
        if self.flush_interval_s:
            env["IRONWATCH_LAKE__FLUSH_INTERVAL_S"] = self.flush_interval_s
        self.log = open(self.dir / "server.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(self.bin), "server", "--data-dir", str(self.dir), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=self.log,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        self.url = self._read_url(time.monotonic() + 60)
        threading.Thread(target=self._drain, daemon=True).start()
        self.pool = _pool(self.url)
        self.count_started = self.acked_seen_s = None
        self._sql_cache, self._sql_at = (-1.0, -1), 0.0

    def _read_url(self, deadline: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        stdout = self.proc.stdout
        box: list[bytes] = []
        reader = threading.Thread(target=lambda: box.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(max(0.0, deadline - time.monotonic()))
        line = box[0].decode(errors="replace").strip() if box else ""
        if not line.startswith("ironwatch listening on "):
            self.stop()
            raise RuntimeError(f"ironwatch server did not start ({line or 'no answer'}): {self.tail_log()}")
        return line.rsplit(" ", 1)[1]

    def _drain(self) -> None:
        proc, log = self.proc, self.log
        if proc is None or proc.stdout is None or log is None:
            return
        try:
            while chunk := os.read(proc.stdout.fileno(), 65536):
                log.write(chunk)
        except (OSError, ValueError):
            pass

    def tail_log(self) -> str:
        try:
            return (self.dir / "server.log").read_text(errors="replace")[-800:]
        except OSError:
            return ""

    def server_pids(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

    def client_spec(self) -> dict[str, Any]:
        return {"url": self.url, "key": self.keys["gateway"]}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.log is not None:
            self.log.close()
        if self.pool is not None:
            self.pool.close()
        self.proc, self.log, self.pool = None, None, None

    # talking to the server -------------------------------------------------------------------------
    def _metric(self, name: str) -> float:
        r = self.pool.urlopen("GET", "/metrics")
        if r.status != 200:
            raise RuntimeError(f"/metrics answered {r.status}")
        pattern = rf"^{re.escape(name)}(?:\{{[^}}]*\}})?\s+(\S+)$"
        return sum(float(v) for v in re.findall(pattern, r.data.decode(), re.MULTILINE))

    def sql(self, text: str) -> list[list[Any]]:
        body = json.dumps({"sql": text, "format": "json"}).encode()
        headers = {"Authorization": f"Bearer {self.keys['analyst']}", "Content-Type": "application/json"}
        r = self.pool.urlopen("POST", "/api/v1/query", body=body, headers=headers)
        if r.status != 200:
            raise RuntimeError(f"query answered {r.status}: {r.data[:300]!r}")
        rows: list[list[Any]] = json.loads(r.data)["rows"]
        return rows

    def sql_count(self) -> int:
        """``count(*)`` through SQL; asked again only when a Parquet file was written (or after 1 s),
        because every SQL query opens the lake afresh and takes CPU from the flusher."""
        files = self._metric("ironwatch_lake_files_written_total")
        now = time.monotonic()
        if files != self._sql_cache[0] or now - self._sql_at >= 1.0:
            self._sql_cache = (files, int(self.sql("SELECT count(*) FROM readings")[0][0]))
            self._sql_at = now
        return self._sql_cache[1]

    def acked_count(self) -> int:
        return int(self._metric("ironwatch_readings_accepted_total"))

    def count(self) -> int:
        if self.count_started is None:
            self.count_started = time.monotonic()
        if self.count_by == "sql":
            return self.sql_count()
        got = self.acked_count()
        if self.acked_seen_s is None and got > 0:
            self.acked_seen_s = time.monotonic()
        return got

    def query(self, sensor: str, metric: str, t0_ms: int, t1_ms: int) -> list[tuple[int, float]]:
        """The mean per minute of one series: ``GET /api/v1/series`` at 1-minute resolution.

        That is the route dashboards and the SDK use for this question; it answers from the per-minute
        rollups. ``$IRONWATCH_PEER_QUERY=sql`` asks the same through analysts' SQL over the raw
        readings instead.
        """
        if os.environ.get("IRONWATCH_PEER_QUERY") == "sql":
            return self.query_sql(sensor, metric, t0_ms, t1_ms)
        from workload import SITE

        params = {"site": SITE, "sensor": sensor, "metric": metric, "start": t0_ms, "end": t1_ms}
        headers = {"Authorization": f"Bearer {self.keys['analyst']}"}
        r = self.pool.urlopen(
            "GET", f"/api/v1/series?{urlencode({**params, 'resolution': '1m'})}", headers=headers
        )
        if r.status != 200:
            raise RuntimeError(f"series answered {r.status}: {r.data[:300]!r}")
        answer = json.loads(r.data)
        return [(int(t), float(m)) for t, m in zip(answer["ts"], answer["mean"], strict=True)]

    def query_sql(self, sensor: str, metric: str, t0_ms: int, t1_ms: int) -> list[tuple[int, float]]:
        """The same question through ``POST /api/v1/query``: DuckDB over the raw readings."""

        def q(text: str) -> str:
            return "'" + text.replace("'", "''") + "'"

        rows = self.sql(
            "SELECT epoch_ms(ts) // 60000 * 60000 AS minute, avg(value) AS mean FROM readings "
            f"WHERE sensor = {q(sensor)} AND metric = {q(metric)} "
            f"AND ts >= to_timestamp({int(t0_ms)} / 1000) AND ts < to_timestamp({int(t1_ms)} / 1000) "
            "GROUP BY 1 ORDER BY 1"
        )
        return [(int(m), float(v)) for m, v in rows]

    # footprint -------------------------------------------------------------------------------------
    def disk(self) -> dict[str, Any]:
        files = list((self.dir / "lake" / TENANT / "readings").rglob("*.parquet"))
        wal = [p for p in (self.dir / "wal").glob("*.wal") if p.is_file()]
        return {
            "stored_bytes": sum(p.stat().st_blocks * 512 for p in files),
            "parquet_apparent_bytes": sum(p.stat().st_size for p in files),
            "parquet_files": len(files),
            "wal_bytes": sum(p.stat().st_size for p in wal),
            "what": "readings/**/*.parquet in the tenant root (allocated bytes, like du); WAL not counted",
        }

    def settle(self, timeout: float = 120) -> dict[str, Any]:
        """Wait until SQL counts every acknowledged reading and the log holds nothing unflushed."""
        t0 = time.monotonic()
        want = self.acked_count()
        sql_s: float | None = None
        while time.monotonic() - t0 < timeout:
            if sql_s is None and self.sql_count() == want:
                sql_s = time.monotonic() - t0
            pending = self._metric("ironwatch_lake_segments_pending") + self._metric(
                "ironwatch_ingest_queue_depth_bytes"
            )
            if sql_s is not None and pending == 0:
                out: dict[str, Any] = {"settled": True, "settle_s": round(time.monotonic() - t0, 2)}
                if self.count_by == "acked":
                    # Seconds from the moment every reading was acknowledged (count() saw N) until
                    # SQL counted them all: the freshness of the lake under this load.
                    out["sql_visible_after_ack_s"] = round(sql_s, 2)
                return out
            time.sleep(0.1)
        return {"settled": False, "settle_s": round(time.monotonic() - t0, 2)}


class IronwatchAckedPeer(IronwatchPeer):
    """The same server, counted by what it acknowledged as durable rather than by SQL."""

    name = "ironwatch_acked"
    count_by = "acked"


class IronwatchRows:
    """Client kind: batch envelopes in row form (JSON), one keep-alive connection, one batch in flight."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.url = spec["url"]
        self.headers = {"Authorization": f"Bearer {spec['key']}", "Content-Type": "application/json"}
        self.pool: Any = None

    def encode(self, wl: Any, client: int) -> list[bytes]:
        from workload import METRICS, N_METRICS, SENSORS, SITE

        lo, hi = wl.client_series(client)
        names = {j: (SENSORS[j // N_METRICS], METRICS[j % N_METRICS]) for j in range(lo, hi)}
        gateway = f"gw-peers-{client}"
        out = []
        for number, (ts, series, value) in enumerate(wl.client_batches(client), start=1):
            readings = [
                {"ts": t, "sensor": names[j][0], "metric": names[j][1], "value": v}
                for t, j, v in zip(ts.tolist(), series.tolist(), value.tolist(), strict=True)
            ]
            sent_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            doc = {
                "gateway": gateway,
                "batch": number,
                "site": SITE,
                "sent_at": sent_at,
                "readings": readings,
            }
            out.append(json.dumps(doc, separators=(",", ":")).encode())
        return out

    def open(self) -> None:
        self.pool = _pool(self.url)
        r = self.pool.urlopen("GET", "/readyz")
        if r.status != 200:
            raise RuntimeError(f"/readyz answered {r.status}: {r.data[:300]!r}")

    def send(self, payload: bytes) -> None:
        r = self.pool.urlopen("POST", "/api/v1/ingest", body=payload, headers=self.headers)
        if r.status != 200:
            raise RuntimeError(f"/api/v1/ingest answered {r.status}: {r.data[:300]!r}")
        answer = json.loads(r.data)
        if answer.get("rejected") or answer.get("duplicate"):
            raise RuntimeError(f"/api/v1/ingest did not store the whole batch: {r.data[:300]!r}")

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()

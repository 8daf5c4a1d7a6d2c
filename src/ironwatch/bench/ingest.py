"""``ironwatch bench ingest``: a real server on a temporary data dir, readings from client processes.

The run: create a tenant and keys, start ``ironwatch server`` (and Mosquitto for MQTT), let every
client process encode its share, release them together, and time until the last reading is durable
(acknowledged after fsync over HTTP; counted by the server's ``/metrics`` over MQTT). Then wait until
SQL sees every reading, check the count, and measure the Parquet bytes per reading.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from ironwatch.bench.clients import ClientSpec, client_main
from ironwatch.bench.sampler import TreeSampler
from ironwatch.bench.workload import SITE, Workload
from ironwatch.errors import InvalidInput, IronwatchError

TENANT = "bench"

Progress = Callable[[str], None]


class BenchFailed(IronwatchError):
    """The benchmark could not finish, or the server did not store exactly what was sent."""

    code = "bench_failed"


def stderr_progress(line: str) -> None:
    """Default progress printer: one line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def _quiet(_line: str) -> None:
    return None


# processes under test ---------------------------------------------------------------------------
class ServerProcess:
    """``ironwatch server --port 0`` in a subprocess; the URL is read back from its first line."""

    def __init__(
        self, data_dir: Path, log_path: Path, *, mqtt_url: str = "", env: dict[str, str] | None = None
    ):
        args = [sys.executable, "-m", "ironwatch.cli", "server", "--data-dir", str(data_dir), "--port", "0"]
        if mqtt_url:
            args += ["--mqtt-url", mqtt_url]
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
        self.url = self._read_url(deadline=time.monotonic() + 60)
        # Anything else the server prints must not fill the pipe and block it.
        self._drain = threading.Thread(target=self._copy_stdout, name="bench-server-stdout", daemon=True)
        self._drain.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_url(self, deadline: float) -> str:
        stdout = self.proc.stdout
        assert stdout is not None
        box: list[bytes] = []
        reader = threading.Thread(target=lambda: box.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(max(0.0, deadline - time.monotonic()))
        line = box[0].decode(errors="replace").strip() if box else ""
        if not line.startswith("ironwatch listening on "):
            self.stop()
            raise BenchFailed(f"the server did not start ({line or 'no answer'}): {self.log_tail()}")
        return line.rsplit(" ", 1)[1]

    def _copy_stdout(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        with contextlib.suppress(OSError, ValueError):
            while chunk := os.read(fd, 65536):
                self._log.write(chunk)

    def log_tail(self, size: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM (a graceful stop flushes the log), SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


class Broker:
    """A private Mosquitto on a free loopback port, for the MQTT transport."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None
        )
        if binary is None:
            raise BenchFailed(
                "mosquitto is not installed: apt-get install mosquitto (the MQTT bench needs a broker)"
            )
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        conf = workdir / "mosquitto.conf"
        # No queue limits: a slow subscriber must make messages wait, never drop them.
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 0\nmax_queued_bytes 0\nmax_inflight_messages 0\n"
        )
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise BenchFailed("mosquitto did not start listening within 10 s") from None
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


# talking to the server --------------------------------------------------------------------------
def _http(url: str, *, body: bytes | None = None, key: str = "", timeout_s: float = 60) -> bytes:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(
        url, data=body, headers=headers, method="POST" if body is not None else "GET"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return bytes(response.read())
    except urllib.error.HTTPError as exc:
        raise BenchFailed(f"{url} answered {exc.code}: {exc.read()[:500]!r}") from exc
    except urllib.error.URLError as exc:
        raise BenchFailed(f"cannot reach {url}: {exc.reason}") from exc


def metric_total(url: str, name: str) -> float:
    """A counter from ``/metrics``, summed over its labels (0 when absent)."""
    text = _http(f"{url}/metrics").decode()
    return sum(
        float(v) for v in re.findall(rf"^{re.escape(name)}(?:\{{[^}}]*\}})?\s+(\S+)$", text, re.MULTILINE)
    )


def sql_count(url: str, key: str) -> int:
    """``SELECT count(*) FROM readings`` through ``POST /api/v1/query``."""
    doc = {"sql": "SELECT count(*) AS n FROM readings", "format": "json"}
    answer = orjson.loads(_http(f"{url}/api/v1/query", body=orjson.dumps(doc), key=key))
    return int(answer["rows"][0][0])


def parquet_bytes(root: Path) -> tuple[int, int]:
    """(bytes, files) of ``readings/**/*.parquet`` under a local tenant root."""
    files = list((root / "readings").rglob("*.parquet"))
    return sum(f.stat().st_size for f in files), len(files)


# the run ----------------------------------------------------------------------------------------
def _check_args(transport: str, form: str, readings: int, batch: int, clients: int) -> None:
    if transport not in {"http", "mqtt"}:
        raise InvalidInput("--transport", f"{transport!r} is not http or mqtt")
    if form not in {"rows", "columns"}:
        raise InvalidInput("--form", f"{form!r} is not rows or columns")
    if readings < 1:
        raise InvalidInput("--readings", "must be at least 1")
    if not 1 <= batch <= 200_000:
        raise InvalidInput("--batch", "must be between 1 and 200,000 (the server's batch limit)")
    if clients < 1:
        raise InvalidInput("--clients", "must be at least 1")


@contextlib.contextmanager
def _workdir(keep: bool, progress: Progress) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ironwatch-bench-"))
    try:
        yield path
    finally:
        if keep:
            progress(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def _setup_tenant(data_dir: Path, wl: Workload, transport: str) -> tuple[str, str]:
    from ironwatch.store import Store

    store = Store(f"sqlite:///{data_dir / 'ironwatch.db'}")
    try:
        store.create_tenant(TENANT, (data_dir / "lake" / TENANT).as_uri())
        _, gateway_key = store.create_key(TENANT, "gateway", label="bench")
        _, analyst_key = store.create_key(TENANT, "analyst", label="bench")
        if transport == "mqtt":
            for c in range(wl.clients):
                store.add_gateway(TENANT, wl.gateway(c), SITE)
    finally:
        store.close()
    return gateway_key, analyst_key


def _eta(done: int, total: int, elapsed_s: float) -> str:
    if done <= 0 or elapsed_s <= 0:
        return "?"
    return f"{(total - done) / (done / elapsed_s):.1f} s"


def run_ingest_bench(
    *,
    transport: str = "http",
    readings: int = 2_000_000,
    batch: int = 1000,
    clients: int = 2,
    form: str = "rows",
    flush_interval_s: float | None = None,
    workers: int | None = None,
    keep: bool = False,
    progress: Progress | None = stderr_progress,
) -> dict[str, Any]:
    """Run one ingest benchmark and return its figures (see ``bench/README.md``).

    ``flush_interval_s`` and ``workers`` override the server's ``lake.flush_interval_s`` and
    ``ingest.workers`` (None keeps what its settings say);
    ``keep`` keeps the temporary data dir and server log. Raises :class:`BenchFailed` when the run
    cannot finish or SQL does not count exactly ``readings``.
    """
    _check_args(transport, form, readings, batch, clients)
    say = progress or _quiet
    wl = Workload.create(readings, clients, batch)
    load_before = os.getloadavg()[0]
    with _workdir(keep, say) as work:
        data_dir = work / "data"
        data_dir.mkdir()
        gateway_key, analyst_key = _setup_tenant(data_dir, wl, transport)
        env = {} if flush_interval_s is None else {"IRONWATCH_LAKE__FLUSH_INTERVAL_S": str(flush_interval_s)}
        if workers is not None:
            env["IRONWATCH_INGEST__WORKERS"] = str(workers)
        broker = Broker(work) if transport == "mqtt" else None
        server: ServerProcess | None = None
        try:
            server = ServerProcess(
                data_dir, work / "server.log", mqtt_url=broker.url if broker else "", env=env
            )
            say(
                f"server {server.url} (pid {server.pid}); {readings:,} readings, {transport} {form}, "
                f"batches of {batch}, {clients} clients"
            )
            figures = _measure(server, wl, transport, form, gateway_key, analyst_key, broker, say)
        finally:
            if server is not None:
                server.stop()
            if broker is not None:
                broker.stop()
        bytes_total, files = parquet_bytes(data_dir / "lake" / TENANT)
    result = {
        "transport": transport,
        "form": form,
        "readings": readings,
        "batch": batch,
        "clients": clients,
        **figures,
        "bytes_per_reading": round(bytes_total / readings, 2),
        "parquet_bytes": bytes_total,
        "parquet_files": files,
        "flush_interval_s": flush_interval_s,
        "ingest_workers": int(
            env.get("IRONWATCH_INGEST__WORKERS", os.environ.get("IRONWATCH_INGEST__WORKERS", 0))
        ),
        "cpus": os.cpu_count(),
        "loadavg_1m_before": round(load_before, 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
    }
    say(
        f"{result['readings_per_s']:,} readings/s, p99 ack {result['p99_ack_ms']} ms, "
        f"peak RSS {result['peak_rss_mib']} MiB, {result['bytes_per_reading']} B/reading"
    )
    return result


def _measure(
    server: ServerProcess,
    wl: Workload,
    transport: str,
    form: str,
    gateway_key: str,
    analyst_key: str,
    broker: Broker | None,
    say: Progress,
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    go, events = ctx.Event(), ctx.Queue()
    encoded, acked = ctx.RawArray("q", wl.clients), ctx.RawArray("q", wl.clients)
    procs = []
    sampler = TreeSampler(server.pid).start()
    try:
        for c in range(wl.clients):
            spec = ClientSpec(
                c, wl, transport, form, server.url, gateway_key, TENANT, broker.url if broker else ""
            )
            p = ctx.Process(
                target=client_main, args=(spec, go, events, encoded, acked), name=f"bench-client-{c}"
            )
            p.start()
            procs.append(p)
        t_enc = time.monotonic()
        _wait_ready(wl, procs, events, encoded, say)
        encode_s = time.monotonic() - t_enc
        t0, cpu0 = time.monotonic(), sampler.cpu_s()
        go.set()
        done = _wait_sent(server, wl, procs, events, acked, t0, say)
        if transport == "mqtt":
            t_ack = _wait_accepted(server, wl.readings, t0, say)
        else:
            t_ack = max(d["t_end"] for d in done)
        cpu_ack = sampler.cpu_s()
        say(
            f"all {wl.readings:,} acknowledged in {t_ack - t0:.2f} s "
            f"({wl.readings / (t_ack - t0):,.0f} readings/s, server CPU {cpu_ack - cpu0:.2f} s)"
        )
        stored, t_visible = _wait_visible(server, analyst_key, wl.readings, say)
        cpu_all = sampler.cpu_s()
        worker_groups = metric_total(server.url, "ironwatch_ingest_worker_groups_total")
        for p in procs:
            p.join(timeout=30)
    finally:
        sampler.stop()
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)
        events.close()
    latency = np.concatenate([np.asarray(d["latency_ms"]) for d in done])
    seconds = t_ack - t0
    return {
        "readings_per_s": round(wl.readings / seconds),
        "seconds": round(seconds, 3),
        "p50_ack_ms": round(float(np.percentile(latency, 50)), 2),
        "p99_ack_ms": round(float(np.percentile(latency, 99)), 2),
        "max_ack_ms": round(float(latency.max()), 2),
        "ack_is": "broker PUBACK (MQTT)" if transport == "mqtt" else "server 200 after fsync",
        "peak_rss_mib": round(sampler.peak_rss_bytes / 2**20, 1),
        "peak_pss_mib": round(sampler.peak_pss_bytes / 2**20, 1),
        "peak_rss_mib_by_process": {
            name: round(n / 2**20, 1) for name, n in sorted(sampler.peak_rss_by_role.items())
        },
        "sql_visible_s": round(t_visible - t_ack, 3),
        "stored": stored,
        "worker_groups": int(worker_groups),
        "server_cpu_s": round(cpu_ack - cpu0, 2),
        "server_cpu_s_until_visible": round(cpu_all - cpu0, 2),
        "client_cpu_s": round(sum(d["cpu_s"] for d in done), 2),
        "request_bytes_per_reading": round(sum(d["request_bytes"] for d in done) / wl.readings, 1),
        "encode_s": round(encode_s, 2),
        "client_seconds_median": round(statistics.median(d["t_end"] - d["t_start"] for d in done), 3),
    }


def _event(events: Any, procs: list[Any], timeout_s: float) -> dict[str, Any] | None:
    try:
        event: dict[str, Any] = events.get(timeout=timeout_s)
    except queue.Empty:
        dead = [p.name for p in procs if p.exitcode not in (None, 0)]
        if dead:
            raise BenchFailed(f"client processes died without a word: {', '.join(dead)}") from None
        return None
    if event["event"] == "failed":
        raise BenchFailed(f"client {event['client']} failed: {event['error']}\n{event['trace'][-1500:]}")
    return event


def _wait_ready(wl: Workload, procs: list[Any], events: Any, encoded: Any, say: Progress) -> None:
    ready: set[int] = set()
    t0 = last = time.monotonic()
    deadline = t0 + max(120.0, wl.readings / 20_000)
    while len(ready) < wl.clients:
        event = _event(events, procs, 0.5)
        if event is not None and event["event"] == "ready":
            ready.add(event["client"])
        now = time.monotonic()
        if now > deadline:
            raise BenchFailed(f"clients did not finish encoding within {deadline - t0:.0f} s")
        if now - last >= 2:
            last = now
            done = sum(encoded)
            left = _eta(done, wl.readings, now - t0)
            say(f"encoding: {done:,} of {wl.readings:,} readings, about {left} left")


def _wait_sent(
    server: ServerProcess, wl: Workload, procs: list[Any], events: Any, acked: Any, t0: float, say: Progress
) -> list[dict[str, Any]]:
    done: list[dict[str, Any]] = []
    last = t0
    deadline = t0 + max(300.0, wl.readings / 10_000)
    while len(done) < wl.clients:
        event = _event(events, procs, 0.2)
        if event is not None and event["event"] == "done":
            done.append(event)
        now = time.monotonic()
        if server.proc.poll() is not None:
            raise BenchFailed(f"the server exited with {server.proc.returncode}: {server.log_tail()}")
        if now > deadline:
            raise BenchFailed(f"sending did not finish within {deadline - t0:.0f} s")
        if now - last >= 1:
            last = now
            n = sum(acked)
            say(
                f"sent: {n:,} of {wl.readings:,} acknowledged, {n / (now - t0):,.0f}/s, "
                f"about {_eta(n, wl.readings, now - t0)} left"
            )
    return done


def _wait_accepted(server: ServerProcess, want: int, t0: float, say: Progress) -> float:
    """MQTT: poll ``/metrics`` until the server has made every reading durable."""
    last = time.monotonic()
    deadline = last + max(120.0, want / 20_000)
    while True:
        got = int(metric_total(server.url, "ironwatch_readings_accepted_total"))
        now = time.monotonic()
        if got >= want:
            if got > want:
                raise BenchFailed(f"the server accepted {got:,} readings; {want:,} were sent")
            return now
        if now > deadline:
            raise BenchFailed(f"the server accepted {got:,} of {want:,} readings before the deadline")
        if now - last >= 1:
            last = now
            say(f"accepted by the server: {got:,} of {want:,}, about {_eta(got, want, now - t0)} left")
        # Each poll renders every metric on the server's event loop and takes GIL time from the
        # ingest under test (at 50 polls/s, ~18% of it, py-spy --gil): poll sparsely, and often
        # only near the predicted end, so the clock still stops within a few milliseconds.
        rate = got / max(now - t0, 1e-3)
        left_s = (want - got) / rate if rate > 0 else 0.25
        time.sleep(min(0.25, max(0.005, left_s / 2)))


def _wait_visible(server: ServerProcess, key: str, want: int, say: Progress) -> tuple[int, float]:
    """Poll SQL until it counts every reading; fail loudly on too many or on the deadline.

    Each SQL count opens the lake afresh, which costs the server CPU that the flusher needs, so SQL
    runs only when ``/metrics`` shows a new Parquet file, and at least once a second.
    """
    start = last_say = last_sql = time.monotonic()
    deadline = start + 180
    files_seen = -1.0
    while True:
        files = metric_total(server.url, "ironwatch_lake_files_written_total")
        now = time.monotonic()
        if files != files_seen or now - last_sql >= 1:
            files_seen, last_sql = files, now
            got = sql_count(server.url, key)
            now = time.monotonic()
            if got == want:
                return got, now
            if got > want:
                raise BenchFailed(f"SQL counts {got:,} readings; {want:,} were sent (duplicates stored)")
            if now - last_say >= 2:
                last_say = now
                say(f"waiting for the lake: SQL counts {got:,} of {want:,}")
        if now > deadline:
            raise BenchFailed(
                f"SQL counts {got:,} of {want:,} readings {now - start:.0f} s after the last ack"
            )
        time.sleep(0.05)

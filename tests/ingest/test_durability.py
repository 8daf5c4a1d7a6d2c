"""Acknowledged means durable, and stored exactly once: ``kill -9``, restarts, concurrent re-sends.

One data directory and one server serve the module; tests stop, kill and restart that server and
leave it running. Before counting, ``settle`` sends a barrier batch and waits for it in SQL: the
log is flushed in order, so everything acknowledged before the barrier is in the lake by then.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from conftest import Lab, Server, Tenant, wait_until

READINGS_PER_BATCH = 5
BASE = (datetime.now(UTC) - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)


def envelope(gateway: str, batch: int) -> dict[str, Any]:
    """Batch ``batch`` of ``gateway``: five good readings and one that goes to quarantine."""
    ts = BASE + timedelta(seconds=batch)
    good = [
        {"ts": ts.isoformat(), "sensor": f"s-{i}", "metric": "vibration_rms", "value": batch + i / 10}
        for i in range(READINGS_PER_BATCH)
    ]
    bad = {"ts": ts.isoformat(), "sensor": "no such sensor", "metric": "vibration_rms", "value": 0.0}
    return {"gateway": gateway, "batch": batch, "site": "hall-a", "readings": [*good, bad]}


STORED = {"accepted": READINGS_PER_BATCH, "rejected": 1, "duplicate": False}
DUPLICATE = {"accepted": 0, "rejected": 0, "duplicate": True, "errors": []}


@dataclass
class Plant:
    lab: Lab
    server: Server
    acme: Tenant
    barriers: Iterator[int] = field(default_factory=itertools.count)

    @property
    def wal(self) -> Path:
        return self.lab.data_dir / "wal"

    @property
    def lake(self) -> Path:
        return self.lab.data_dir / "lake" / "acme"

    def send(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.server.client(self.acme.keys["gateway"]) as gw:
            r = gw.post("/api/v1/ingest", json=body)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def rows(self, sql: str) -> list[list[Any]]:
        with self.server.client(self.acme.keys["analyst"]) as analyst:
            r = analyst.post("/api/v1/query", json={"sql": sql})
        assert r.status_code == 200, r.text
        return list(r.json()["rows"])

    def settle(self) -> None:
        """Wait until everything acknowledged so far is in SQL (readings and quarantine)."""
        n = next(self.barriers)
        assert self.send(envelope("gw-barrier", n))["duplicate"] is False
        wait_until(
            lambda: (
                self.rows(
                    "SELECT (SELECT count(*) FROM readings WHERE gateway = 'gw-barrier' AND batch = "
                    f"{n}) + (SELECT count(*) FROM quarantine WHERE gateway = 'gw-barrier' AND batch = {n})"
                )
                == [[READINGS_PER_BATCH + 1]]
            ),
            what=f"barrier batch {n} in the lake",
        )

    def assert_stored_once(self, gateway: str, batches: range | list[int]) -> None:
        """Each batch of ``gateway`` is in the lake exactly once: readings and quarantined ones."""
        expected = sorted(batches)
        got = self.rows(
            "SELECT count(*), count(DISTINCT (gateway, batch, sensor, metric, ts)), "
            f"list(DISTINCT batch ORDER BY batch) FROM readings WHERE gateway = '{gateway}'"
        )
        assert got == [[READINGS_PER_BATCH * len(expected)] * 2 + [expected]]
        per_batch = self.rows(
            f"SELECT batch, count(*) FROM readings WHERE gateway = '{gateway}' GROUP BY batch "
            f"HAVING count(*) <> {READINGS_PER_BATCH}"
        )
        assert per_batch == []
        kept = self.rows(
            f"SELECT count(*), count(DISTINCT (batch, \"index\")) FROM quarantine WHERE gateway = '{gateway}'"
        )
        assert kept == [[len(expected), len(expected)]]

    def unflushed_segments(self) -> list[Path]:
        return sorted(p for p in self.wal.glob("*.wal") if p.stat().st_size > 0)

    def lake_writer(self) -> psutil.Process:
        """The server's lake writer process (it starts with the server)."""
        assert self.server.proc is not None
        return lake_writer_of(self.server.proc.pid)


def lake_writer_of(server_pid: int) -> psutil.Process:
    def find() -> psutil.Process | None:
        for child in psutil.Process(server_pid).children():
            if "ironwatch.ingest.lakewriter" in " ".join(child.cmdline()):
                return child
        return None

    found = wait_until(find, 30, what="the server's lake writer process")
    assert isinstance(found, psutil.Process)
    return found


def gone(proc: psutil.Process) -> bool:
    try:
        return bool(proc.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plant]:
    lab = Lab(tmp_path_factory.mktemp("durability") / "data")
    acme = lab.tenant("acme", "gateway", "analyst")
    server = lab.server()
    try:
        yield Plant(lab, server, acme)
    finally:
        lab.close()


def send_all_to(server: Server, tenant: Tenant, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send ``bodies`` one after the other; the answers."""
    with server.client(tenant.keys["gateway"]) as gw:
        answers = [gw.post("/api/v1/ingest", json=body) for body in bodies]
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    return [dict(r.json()) for r in answers]


def send_all(plant: Plant, bodies: list[dict[str, Any]], threads: int) -> list[dict[str, Any]]:
    """Send ``bodies`` from ``threads`` clients at once; the answers in the order of ``bodies``."""

    def worker(part: list[tuple[int, dict[str, Any]]]) -> list[tuple[int, dict[str, Any]]]:
        with plant.server.client(plant.acme.keys["gateway"]) as gw:
            out = []
            for i, body in part:
                r = gw.post("/api/v1/ingest", json=body)
                assert r.status_code == 200, r.text
                out.append((i, r.json()))
            return out

    numbered = list(enumerate(bodies))
    with ThreadPoolExecutor(threads) as pool:
        parts = pool.map(worker, [numbered[k::threads] for k in range(threads)])
        answers = dict(item for part in parts for item in part)
    return [answers[i] for i in range(len(bodies))]


def test_every_acknowledged_reading_survives_kill_9(plant: Plant) -> None:
    batches = range(200)
    writer = plant.lake_writer()
    answers = send_all(plant, [envelope("gw-kill", b) for b in batches], threads=4)
    plant.server.kill()  # right after the last acknowledgement, before the next flush
    assert all({k: a[k] for k in STORED} == STORED for a in answers), answers
    # The test means something only if acknowledged batches were still only in the log.
    assert plant.unflushed_segments(), "every batch was already flushed; nothing was left to recover"
    # The killed server's lake writer sees the end of its input and leaves by itself.
    wait_until(lambda: gone(writer), 30, what="the killed server's lake writer to exit")
    plant.server.start()
    plant.settle()
    plant.assert_stored_once("gw-kill", batches)


def test_a_killed_lake_writer_is_replaced_and_nothing_is_lost(plant: Plant) -> None:
    """The lake writer process dies (OOM killer, crash): the server starts another one, which writes
    the segments again; every acknowledged reading lands once."""
    for round_ in range(3):
        writer = plant.lake_writer()
        batches = range(round_ * 100, (round_ + 1) * 100)
        answers = send_all(plant, [envelope("gw-writer", b) for b in batches], threads=4)
        assert all({k: a[k] for k in STORED} == STORED for a in answers), answers
        writer.kill()  # while it may be writing a segment, or between two
        wait_until(lambda writer=writer: gone(writer), 10, what="the killed lake writer to exit")
        plant.settle()
        assert plant.lake_writer().pid != writer.pid
    plant.assert_stored_once("gw-writer", range(300))
    with plant.server.client(plant.acme.keys["analyst"]) as analyst:
        ready = analyst.get("/readyz")
    assert ready.status_code == 200, ready.text


def test_same_batch_from_8_threads_at_once_is_stored_once(plant: Plant) -> None:
    rounds, threads = 10, 8
    clients = [plant.server.client(plant.acme.keys["gateway"]) for _ in range(threads)]
    try:
        for c in clients:
            assert c.get("/api/v1/whoami").status_code == 200  # connections open before the race
        for batch in range(rounds):
            body = envelope("gw-race", batch)
            start = threading.Barrier(threads)

            def race(
                client: httpx.Client, body: dict[str, Any] = body, start: threading.Barrier = start
            ) -> Any:
                start.wait()
                r = client.post("/api/v1/ingest", json=body)
                assert r.status_code == 200, r.text
                return r.json()

            with ThreadPoolExecutor(threads) as pool:
                answers = list(pool.map(race, clients))
            first = [a for a in answers if a["duplicate"] is False]
            assert len(first) == 1, answers
            assert {k: first[0][k] for k in STORED} == STORED
            assert [a for a in answers if a["duplicate"] is True] == [DUPLICATE] * (threads - 1)
    finally:
        for c in clients:
            c.close()
    plant.settle()
    plant.assert_stored_once("gw-race", range(rounds))


def test_batch_sent_again_after_restarts_is_a_duplicate(plant: Plant) -> None:
    first, flushed, logged = envelope("gw-again", 1), envelope("gw-again", 2), envelope("gw-again", 3)
    assert plant.send(first)["duplicate"] is False
    plant.server.stop()
    plant.server.start()
    assert plant.send(first) == DUPLICATE  # known from the checkpoint of a graceful stop

    assert plant.send(flushed)["duplicate"] is False
    plant.settle()  # batch 2 is in Parquet and the checkpoint
    assert plant.send(logged)["duplicate"] is False
    plant.server.kill()  # batch 3 is only in the write-ahead log
    assert plant.unflushed_segments()
    plant.server.start()
    for body in (first, flushed, logged):
        assert plant.send(body) == DUPLICATE
    assert plant.send(envelope("gw-again", 4))["duplicate"] is False  # and a new one is not
    plant.settle()
    plant.assert_stored_once("gw-again", [1, 2, 3, 4])
    with plant.server.client(plant.acme.keys["analyst"]) as analyst:
        gateways = {g["gateway"]: g for g in analyst.get("/api/v1/gateways").json()["gateways"]}
    assert gateways["gw-again"]["received_batches"] == [[1, 4]]


def lake_files(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every Parquet file with its content hash, inode and modification time (a rewrite shows)."""
    out = {}
    for p in root.rglob("*.parquet"):
        st = p.stat()
        out[p.relative_to(root).as_posix()] = (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            st.st_ino,
            st.st_mtime_ns,
        )
    return out


def test_replaying_a_segment_already_written_to_parquet_adds_nothing(plant: Plant, tmp_path: Path) -> None:
    """A crash after a segment's Parquet files are written but before the segment is deleted.

    Produced for real: the log as ``kill -9`` left it is copied aside, the server recovers it into
    Parquet and stops, then the copy is put back, so the next start replays segments whose files
    are already in the lake.
    """
    batches = range(30)
    answers = send_all(plant, [envelope("gw-replay", b) for b in batches], threads=2)
    assert all(a["duplicate"] is False for a in answers)
    plant.server.kill()
    segments = plant.unflushed_segments()
    assert segments, "every batch was already flushed; nothing to replay"
    saved = tmp_path / "wal-at-crash"
    shutil.copytree(plant.wal, saved)

    plant.server.start()
    wait_until(lambda: not any(p.exists() for p in segments), what="recovered segments to be flushed")
    written = lake_files(plant.lake)
    for segment in segments:  # the recovered segments' own files, named after them
        assert any(name.endswith(f"-{segment.stem}.parquet") for name in written), segment.name
    plant.server.stop()

    shutil.rmtree(plant.wal)
    shutil.copytree(saved, plant.wal)  # the lake has the files, the log still has the segments
    plant.server.start()
    wait_until(lambda: not any(p.exists() for p in segments), what="replayed segments to be flushed")
    assert lake_files(plant.lake) == written  # no new file, no file rewritten
    plant.assert_stored_once("gw-replay", batches)
    assert plant.send(envelope("gw-replay", 0)) == DUPLICATE


def test_a_second_server_on_the_same_data_dir_is_refused(lab: Lab) -> None:
    lab.tenant("acme", "gateway")
    lab.server()
    with pytest.raises(AssertionError, match="another ironwatch server is already using"):
        lab.server()


def test_a_graceful_stop_writes_everything_to_the_lake(lab: Lab) -> None:
    acme = lab.tenant("acme", "gateway")
    server = lab.server(IRONWATCH_LAKE__FLUSH_INTERVAL_S="600")
    body = {
        "gateway": "gw-1",
        "batch": 1,
        "site": "hall-a",
        "readings": [{"ts": "2026-11-24T10:00:00Z", "sensor": "s-1", "metric": "rpm", "value": 1.0}],
    }
    with server.client(acme.keys["gateway"]) as gw:
        assert gw.post("/api/v1/ingest", json=body).status_code == 200
    assert not list((lab.data_dir / "lake" / "acme").rglob("*.parquet")), "still only in the log"
    assert server.proc is not None
    writer = lake_writer_of(server.proc.pid)
    server.stop()
    assert gone(writer), "the lake writer stops with the server"
    assert list((lab.data_dir / "lake" / "acme" / "readings").rglob("*.parquet")), "SIGTERM flushes"
    assert not [p for p in (lab.data_dir / "wal").glob("*.wal") if p.stat().st_size], "the log is empty"


def test_ctrl_c_to_the_process_group_stops_server_and_lake_writer_cleanly(lab: Lab) -> None:
    """Ctrl-C in a terminal signals the server and its lake writer at once: the server still writes
    everything to the lake through its lake writer, and nothing is killed half-way."""
    acme = lab.tenant("acme", "gateway")
    env = {"IRONWATCH_STORE__URL": lab.store_url, "IRONWATCH_LAKE__FLUSH_INTERVAL_S": "600"}
    server = Server(lab.data_dir, [], env, new_session=True).start()
    lab.servers.append(server)
    answers = send_all_to(server, acme, [envelope("gw-ctrl-c", b) for b in range(50)])
    assert all({k: a[k] for k in STORED} == STORED for a in answers)
    assert server.proc is not None
    writer = lake_writer_of(server.proc.pid)
    os.killpg(server.proc.pid, signal.SIGINT)
    assert server.proc.wait(timeout=60) in (0, 130)  # 130: the shell's code for a Ctrl-C
    wait_until(lambda: gone(writer), 10, what="the lake writer to exit with the server")
    assert server.log_path is not None
    log = server.log_path.read_text()
    assert "lake writer" not in log and "KeyboardInterrupt" not in log, log[-3000:]
    files = list((lab.data_dir / "lake" / "acme" / "readings").rglob("*.parquet"))
    assert files, "the graceful stop wrote the log to the lake"
    assert not [p for p in (lab.data_dir / "wal").glob("*.wal") if p.stat().st_size], "the log is empty"

"""The outbox: durable, ordered, exact counts, bounded in bytes (oldest dropped, counted), kill -9 safe."""

from __future__ import annotations

import gzip
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pytest

from conftest import wait_until
from ironwatch.gateway.outbox import Outbox, OutboxError, decode_sample, open_outbox
from ironwatch.gateway.source import SAMPLE_SCHEMA

T0 = 1_790_000_000_000


def readings(n: int, start_ms: int = T0, sensors: int = 10, seed: int = 1) -> pa.Table:
    """``n`` readings, one per 100 ms, round-robin over sensors, with noisy values."""
    rng = np.random.default_rng(seed)
    idx = np.arange(n)
    return pa.table(
        {
            "ts_ms": start_ms + idx * 100,
            "sensor": [f"s-{i % sensors:04d}" for i in range(n)],
            "metric": ["temperature_c"] * n,
            "value": rng.normal(40, 5, n),
        },
        schema=SAMPLE_SCHEMA,
    )


def payload(batch_payload: bytes) -> dict:
    return orjson.loads(gzip.decompress(batch_payload))


def test_readings_flow_in_order_with_exact_counts(tmp_path: Path) -> None:
    box = open_outbox(tmp_path / "o.db", gateway="gw-1", site="hall-a", max_bytes=64 << 20)
    assert box.add(readings(2500)) == 2500
    assert box.form_batches(1000, max_age_s=60, now_ms=T0) == 2  # the rest of 500 waits
    counts = box.counts()
    assert (counts.sampled, counts.buffered, counts.batches, counts.last_batch) == (2500, 2500, 2, 2)
    assert box.form_batches(1000, max_age_s=0) == 1  # due now: the rest goes too
    batches = box.next_batches(10)
    assert [b.seq for b in batches] == [1, 2, 3]
    docs = [payload(b.payload) for b in batches]
    assert [len(d["columns"]["ts"]) for d in docs] == [1000, 1000, 500]
    assert all(d["gateway"] == "gw-1" and d["site"] == "hall-a" for d in docs)
    ts = np.concatenate([d["columns"]["ts"] for d in docs])
    assert (np.diff(ts) > 0).all(), "batches hold the readings oldest first"
    box.acknowledge(batches[:2])
    counts = box.counts()
    assert (counts.acknowledged, counts.sent, counts.buffered, counts.batches) == (2000, 2000, 500, 1)
    box.mark_attempted(batches[2])
    assert box.counts().sent == 2500
    box.dead_letter([batches[2]])
    counts = box.counts()
    assert (counts.dead_lettered, counts.buffered, counts.buffer_bytes) == (500, 0, 0)
    assert box.size_bytes == 0


def test_a_reopened_outbox_keeps_batches_counts_and_numbering(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = open_outbox(path, gateway="gw-1", site="hall-a", max_bytes=64 << 20)
    box.add(readings(1500))
    box.form_batches(1000, max_age_s=60, now_ms=T0)
    box.close()
    box = open_outbox(path, gateway="gw-1", site="hall-a", max_bytes=64 << 20)
    assert box.counts().sampled == 1500
    box.add(readings(700, start_ms=T0 + 10_000_000))
    assert box.form_batches(1000, max_age_s=60) == 1
    assert [b.seq for b in box.next_batches(5)] == [1, 2]
    second = payload(box.next_batches(5)[1].payload)
    assert len(second["columns"]["ts"]) == 1000 and second["batch"] == 2


def test_another_gateways_outbox_is_refused(tmp_path: Path) -> None:
    open_outbox(tmp_path / "o.db", gateway="gw-1", site="hall-a", max_bytes=64 << 20).close()
    with pytest.raises(OutboxError, match="belongs to gateway gw-1 of site hall-a"):
        open_outbox(tmp_path / "o.db", gateway="gw-2", site="hall-a", max_bytes=64 << 20)


def test_a_full_buffer_drops_the_oldest_batches_and_counts_them_exactly(tmp_path: Path) -> None:
    box = open_outbox(tmp_path / "o.db", gateway="gw-1", site="hall-a", max_bytes=1 << 20)
    added = 0
    chunk = 5000
    for i in range(60):  # far more than a megabyte of readings: random values do not compress
        added += box.add(readings(chunk, start_ms=T0 + i * chunk * 100, seed=i))
        box.form_batches(chunk, max_age_s=60)
    counts = box.counts()
    assert counts.sampled == added
    assert counts.dropped > 0
    assert counts.buffer_bytes <= 1 << 20
    assert box.size_bytes == counts.buffer_bytes, "the running size agrees with the database"
    # Every reading is either still buffered or counted as dropped: nothing vanished unaccounted.
    assert counts.buffered + counts.dropped == added
    batches = box.next_batches(1000)
    assert [b.seq for b in batches] == list(range(1, counts.last_batch + 1)), "numbers stay contiguous"
    tombstones = [b for b in batches if b.is_tombstone]
    assert tombstones and tombstones == batches[: len(tombstones)], "the oldest are the ones dropped"
    assert sum(len(payload(b.payload)["columns"]["ts"]) for b in tombstones) == 0
    kept = [b for b in batches if not b.is_tombstone]
    assert sum(b.readings for b in kept) == counts.buffered  # nothing is left pending here
    oldest_kept = min(payload(b.payload)["columns"]["ts"][0] for b in kept)
    assert oldest_kept > T0, "the newest readings survive"


def test_a_batch_dropped_while_on_its_way_is_not_counted_twice(tmp_path: Path) -> None:
    box = open_outbox(tmp_path / "o.db", gateway="gw-1", site="hall-a", max_bytes=1 << 20)
    box.add(readings(5000, seed=1))
    box.form_batches(5000, max_age_s=60)
    in_flight = box.next_batches(1)[0]
    i = 1
    while box.counts().dropped == 0:  # fill until the buffer drops the batch being sent
        box.add(readings(5000, start_ms=T0 + i * 500_000, seed=i + 1))
        box.form_batches(5000, max_age_s=60)
        i += 1
    assert box.next_batches(1)[0].is_tombstone
    box.acknowledge([in_flight])  # ... and then the server's answer for the full batch comes
    counts = box.counts()
    assert counts.acknowledged == 5000
    assert counts.buffered + counts.dropped + counts.acknowledged == counts.sampled


WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np, pyarrow as pa
    from ironwatch.gateway.outbox import open_outbox
    from ironwatch.gateway.source import SAMPLE_SCHEMA
    box = open_outbox(__import__("pathlib").Path(sys.argv[1]), gateway="gw-1", site="s", max_bytes=1 << 30)
    i = 0
    while True:
        n = 300
        t = pa.table({"ts_ms": 1_790_000_000_000 + i * 1000 + np.arange(n), "sensor": ["s-1"] * n,
                      "metric": ["m"] * n, "value": np.arange(n, dtype=float)}, schema=SAMPLE_SCHEMA)
        box.add(t)
        box.form_batches(1000, max_age_s=60)
        if i == 20:
            print("going", flush=True)
        i += 1
    """
)


def test_kill_9_while_sampling_loses_no_sampled_reading(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "going"
    box = open_outbox(path, gateway="gw-1", site="s", max_bytes=1 << 30)
    wait_until(lambda: box.counts().sampled > 30_000, 30, what="30000 sampled readings")
    box.close()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    box = open_outbox(path, gateway="gw-1", site="s", max_bytes=1 << 30)
    counts = box.counts()
    stored = sum(b.readings for b in box.next_batches(100_000))
    pending = box._writer.execute("SELECT data FROM pending").fetchall()
    stored += sum(decode_sample(row[0]).num_rows for row in pending)
    assert counts.sampled == stored == counts.buffered
    assert counts.sampled % 300 == 0, "a chunk is either all in or not in at all"


def test_a_file_that_is_not_an_outbox_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError, match=r"^outbox .*o\.db: file is not a database$"):
        open_outbox(path, gateway="gw-1", site="hall-a", max_bytes=64 << 20)


def test_counts_read_while_batches_are_added_and_acknowledged(tmp_path: Path) -> None:
    """The heartbeat and status threads read the counts while the sampler adds readings and the
    sender acknowledges batches: every call succeeds (no "database is locked") and nothing is lost."""
    import threading

    box = open_outbox(tmp_path / "o.db", gateway="gw-1", site="hall-a", max_bytes=256 << 20)
    errors: list[BaseException] = []
    done = threading.Event()
    rounds = 150

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)
                done.set()

        return run

    def sample() -> None:
        for i in range(rounds):
            box.add(readings(200, start_ms=T0 + i * 20_000))
            box.form_batches(100, max_age_s=0)

    def send() -> None:
        acked = 0
        while acked < rounds * 2:
            batches = box.next_batches(10)
            box.acknowledge(batches)
            acked += len(batches)
        done.set()  # the watchers stop once everything is acknowledged

    def watch() -> None:
        while not done.is_set():
            box.counts()
            box.note("anything")

    threads = [threading.Thread(target=guarded(f)) for f in (sample, send, watch, watch)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    counts = box.counts()
    assert (counts.sampled, counts.acknowledged, counts.buffered) == (rounds * 200, rounds * 200, 0)


def status(*args: str) -> subprocess.CompletedProcess[str]:
    """``ironwatch gateway status ARGS --json``."""
    cmd = [sys.executable, "-m", "ironwatch.cli", "gateway", "status", *args, "--json"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def test_status_reads_an_outbox_by_its_path_or_through_the_config(tmp_path: Path) -> None:
    """``--outbox`` serves a gateway without a config file of its own (the demo's)."""
    box = open_outbox(tmp_path / "outbox.db", gateway="gw-9", site="hall-z", max_bytes=64 << 20)
    box.add(readings(1500))
    box.form_batches(1000, max_age_s=60, now_ms=T0)
    box.acknowledge(box.next_batches(1))
    (tmp_path / "gateway.toml").write_text(
        '[gateway]\nid = "gw-9"\nsite = "hall-z"\n[uplink]\nurl = "http://127.0.0.1:9"\nkey = "k"\n'
        '[buffer]\npath = "outbox.db"\n[metrics]\nport = 0\n'
        '[[sources]]\ntype = "simulator"\nsensors = 1\n'
    )
    # Read by another process while this one still holds the outbox open, as with a running gateway.
    by_path = status("--outbox", str(tmp_path / "outbox.db"))
    by_config = status("--config", str(tmp_path / "gateway.toml"))
    box.close()
    assert by_path.returncode == 0 and by_config.returncode == 0, (by_path.stderr, by_config.stderr)
    counts, via_config = orjson.loads(by_path.stdout), orjson.loads(by_config.stdout)
    assert (counts["sampled"], counts["acknowledged"], counts["buffered"]) == (1500, 1000, 500)
    assert counts["is_running"] is None and via_config["is_running"] is False
    assert counts["numbering"] == "waiting for the server"  # never sent: a new outbox waits
    assert {k: v for k, v in counts.items() if k != "is_running"} == {
        k: v for k, v in via_config.items() if k != "is_running"
    }
    text = subprocess.run(
        [sys.executable, "-m", "ironwatch.cli", "gateway", "status", "--outbox", str(tmp_path / "outbox.db")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert text.startswith(f"gateway gw-9 (site hall-z), outbox {tmp_path / 'outbox.db'}\n"), text
    assert "is_running           unknown" in text
    box = open_outbox(tmp_path / "outbox.db", gateway="gw-9", site="hall-z", max_bytes=64 << 20)
    box.fix_numbering(None)
    box.close()
    assert orjson.loads(status("--outbox", str(tmp_path / "outbox.db")).stdout)["numbering"] == "settled"


@pytest.mark.parametrize("what", ["missing", "text", "another sqlite"])
def test_status_of_a_path_that_is_no_outbox_is_one_clear_error(tmp_path: Path, what: str) -> None:
    path = tmp_path / "outbox.db"
    if what == "text":
        path.write_text("not a database\n" * 100)
    elif what == "another sqlite":
        sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
    answer = status("--outbox", str(path))
    assert answer.returncode != 0 and "Traceback" not in answer.stderr, answer.stderr
    assert ("does not exist" if what == "missing" else "is not a gateway outbox") in answer.stderr
    assert what != "missing" or not path.exists()  # looking did not create it
    if what == "text":
        assert path.read_text() == "not a database\n" * 100  # nor change it


def test_a_new_outbox_moves_its_numbers_past_the_servers_once(tmp_path: Path) -> None:
    box = open_outbox(tmp_path / "o.db", gateway="gw-1", site="hall-a", max_bytes=1 << 20)
    assert box.numbering_is_provisional
    i = 0
    while box.counts().dropped == 0:  # fill until the buffer drops its oldest batch
        box.add(readings(5000, start_ms=T0 + i * 500_000, seed=i + 1))
        box.form_batches(5000, max_age_s=60)
        i += 1
    before = box.counts()
    old = box.next_batches(1000)
    assert old[0].is_tombstone and not old[-1].is_tombstone

    assert box.fix_numbering(41) == 41
    assert not box.numbering_is_provisional
    batches = box.next_batches(1000)
    assert [b.seq for b in batches] == [b.seq + 41 for b in old]
    assert [payload(b.payload)["batch"] for b in batches] == [b.seq + 41 for b in old]
    assert [b.is_tombstone for b in batches] == [b.is_tombstone for b in old]
    for was, now in zip(old, batches, strict=True):  # the same readings
        assert payload(now.payload)["columns"] == payload(was.payload)["columns"]
    after = box.counts()
    assert after.last_batch == before.last_batch + 41
    assert (after.buffered, after.dropped, after.sampled) == (before.buffered, before.dropped, before.sampled)
    assert box.size_bytes == after.buffer_bytes, "the running size agrees with the database"

    # The numbers are fixed now, also after a restart, and new batches follow them.
    assert box.fix_numbering(1000) == 0
    box.close()
    box = open_outbox(tmp_path / "o.db", gateway="gw-1", site="hall-a", max_bytes=1 << 20)
    assert not box.numbering_is_provisional
    box.add(readings(10, start_ms=T0 + 10**9))
    box.form_batches(10, max_age_s=0)
    assert box.next_batches(1000)[-1].seq == after.last_batch + 1
    box.close()


def test_an_outbox_moves_no_number_that_was_sent_or_that_the_server_is_behind(tmp_path: Path) -> None:
    box = open_outbox(tmp_path / "o.db", gateway="gw-1", site="hall-a", max_bytes=64 << 20)
    box.add(readings(2000))
    box.form_batches(1000, max_age_s=60, now_ms=T0)
    box.mark_attempted(box.next_batches(1)[0])
    assert box.fix_numbering(10) == 0  # batch 1 may already be at the server under its number
    assert [b.seq for b in box.next_batches(5)] == [1, 2]
    box.close()

    other = open_outbox(tmp_path / "p.db", gateway="gw-2", site="hall-a", max_bytes=64 << 20)
    other.add(readings(2000))
    other.form_batches(1000, max_age_s=60, now_ms=T0)
    assert other.fix_numbering(None) == 0  # the server holds nothing of this gateway
    assert [b.seq for b in other.next_batches(5)] == [1, 2]
    other.close()


def test_an_outbox_from_before_provisional_numbers_keeps_its_numbers(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = open_outbox(path, gateway="gw-1", site="hall-a", max_bytes=64 << 20)
    box.close()
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM meta WHERE key = 'numbering'")
    box = open_outbox(path, gateway="gw-1", site="hall-a", max_bytes=64 << 20)
    assert not box.numbering_is_provisional
    box.close()


def _assert_numbers_whole(box: Outbox) -> list[int]:
    batches = box.next_batches(100_000)
    seqs = [b.seq for b in batches]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "numbers stay contiguous"
    assert [payload(b.payload)["batch"] for b in batches] == seqs, "each envelope carries its number"
    assert box.size_bytes == box.counts().buffer_bytes, "the running size agrees with the database"
    return seqs


def test_a_move_cut_short_is_finished_with_the_same_shift_after_a_restart(tmp_path: Path) -> None:
    box = open_outbox(tmp_path / "o.db", gateway="gw-1", site="hall-a", max_bytes=64 << 20)
    box.add(readings(100 * 100))
    box.form_batches(100, max_age_s=60, now_ms=T0)
    # The move's first steps, then a "crash" (the process ends between two transactions).
    assert box._plan_move(1000) == 1000
    assert box._move_some()
    box.close()

    box = open_outbox(tmp_path / "o.db", gateway="gw-1", site="hall-a", max_bytes=64 << 20)
    assert box.numbering_is_provisional and box.numbering_is_moving
    assert box.fix_numbering(None) == 1000  # what the server says now no longer matters
    assert not box.numbering_is_provisional and not box.numbering_is_moving
    assert _assert_numbers_whole(box) == list(range(1001, 1101))
    box.close()


def test_sampling_goes_on_while_a_new_outbox_moves_its_numbers(tmp_path: Path) -> None:
    box = open_outbox(tmp_path / "o.db", gateway="gw-1", site="hall-a", max_bytes=64 << 20)
    box.add(readings(300 * 100))
    box.form_batches(100, max_age_s=60, now_ms=T0)
    stop = threading.Event()

    def sample() -> None:
        i = 1
        while not stop.is_set():
            box.add(readings(100, start_ms=T0 + i * 10**7, seed=i))
            box.form_batches(100, max_age_s=60)
            i += 1

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        assert box.fix_numbering(5000) == 5000
    finally:
        stop.set()
        sampler.join()
    seqs = _assert_numbers_whole(box)
    assert seqs[0] == 5001 and len(seqs) > 300
    assert box.counts().sampled == box.counts().buffered
    box.close()


def test_a_transaction_the_disk_refuses_leaves_the_counts_as_the_file_has_them(tmp_path: Path) -> None:
    box = open_outbox(tmp_path / "o.db", gateway="gw-1", site="hall-a", max_bytes=1 << 20)
    i = 0
    while box.counts().dropped == 0:  # a full buffer: the next add tombstones before it inserts
        box.add(readings(5000, start_ms=T0 + i * 500_000, seed=i + 1))
        box.form_batches(5000, max_age_s=60)
        i += 1
    before = box.counts()
    # SQLite itself refuses the insert that follows the tombstoning, as a full disk would.
    box._writer.execute(
        "CREATE TEMP TRIGGER full BEFORE INSERT ON pending BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )
    with pytest.raises(sqlite3.IntegrityError, match="disk full"):
        box.add(readings(5000, start_ms=T0 + 10**9, seed=99))
    box._writer.execute("DROP TRIGGER temp.full")
    assert box.counts() == before, "the failed add changed nothing in the file"
    assert box.size_bytes == before.buffer_bytes, "... nor in what the outbox believes"
    box.add(readings(10, start_ms=T0 + 2 * 10**9))
    assert box.size_bytes == box.counts().buffer_bytes
    box.close()

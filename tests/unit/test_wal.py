"""The write-ahead log: group commit, segments handed over in order, torn tails ignored."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ironwatch.errors import StorageError
from ironwatch.ingest.wal import Log, Segment, frame, read_records


def test_records_come_back_in_order_across_segments(tmp_path: Path) -> None:
    closed: list[Segment] = []
    log = Log(tmp_path, segment_max_bytes=2_000, on_closed=closed.append, first_seq=5)
    futures = [log.append(frame(f"record {i}".encode() * 20)) for i in range(100)]
    for f in futures:
        f.result(timeout=10)
    log.close()
    assert [s.seq for s in closed] == list(range(5, 5 + len(closed)))
    payloads = [p for s in closed for p in read_records(s.path)]
    assert payloads == [f"record {i}".encode() * 20 for i in range(100)]


def test_concurrent_appends_share_fsyncs(tmp_path: Path) -> None:
    closed: list[Segment] = []
    log = Log(tmp_path, segment_max_bytes=1 << 30, on_closed=closed.append, first_seq=0)
    done = []

    def writer(n: int) -> None:
        for i in range(50):
            log.append(frame(f"{n}:{i}".encode())).result(timeout=10)
        done.append(n)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    assert sorted(done) == list(range(8))
    payloads = [p.decode() for s in closed for p in read_records(s.path)]
    assert len(payloads) == 400
    for n in range(8):
        mine = [p for p in payloads if p.startswith(f"{n}:")]
        assert mine == [f"{n}:{i}" for i in range(50)], "each writer's records keep their order"


def test_a_torn_tail_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "000000000001.wal"
    whole = frame(b"first") + frame(b"second")
    path.write_bytes(whole + frame(b"third")[:-2])
    assert list(read_records(path)) == [b"first", b"second"]
    corrupt = bytearray(whole)
    corrupt[-1] ^= 0xFF
    path.write_bytes(bytes(corrupt))
    assert list(read_records(path)) == [b"first"]


def test_a_segment_that_cannot_be_opened_fails_its_records_and_the_next_open_is_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The log's folder gone (an unmounted disk, a removed directory): errors, not a hung writer."""
    folder, moved = tmp_path / "wal", tmp_path / "wal-moved"
    folder.mkdir()
    closed: list[Segment] = []
    log = Log(folder, segment_max_bytes=1 << 20, on_closed=closed.append, first_seq=0)
    try:
        log.append(frame(b"first")).result(5)
        folder.rename(moved)  # the open segment keeps working; the next one cannot be created
        log.rotate()
        assert wait_for(lambda: not log.is_open)
        assert [s.seq for s in closed] == [0]  # handed on although the next one is not open
        assert "cannot open the next segment" in caplog.text

        with pytest.raises(StorageError, match="cannot open write-ahead log"):
            log.append(frame(b"refused")).result(5)  # answered, not left waiting

        folder.mkdir()
        log.append(frame(b"second")).result(5)
        assert log.is_open
    finally:
        log.close()
    assert list(read_records(moved / "000000000000.wal")) == [b"first"]
    assert list(read_records(folder / "000000000001.wal")) == [b"second"]
    assert [s.seq for s in closed] == [0, 1]


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True

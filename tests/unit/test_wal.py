"""The write-ahead log: group commit, segments handed over in order, torn tails ignored."""

from __future__ import annotations

import threading
from pathlib import Path

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

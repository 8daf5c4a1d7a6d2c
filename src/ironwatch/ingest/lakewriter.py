"""The lake writer process: the flusher's Parquet work, done outside the server's interpreter.

Turning a log segment into sorted, compressed Parquet files and rollup partials holds Python's
global lock for much of its work. In the server's own process that work competes with the event
loop and the MQTT subscriber for the one lock (a server that writes no Parquet at all ingests about
a third faster). Run in a child process it uses the other core instead.

The child does one thing: given a closed segment, the file name and the tenants' storage root URLs,
it writes the segment's files (:func:`ironwatch.ingest.flusher.write_segment`) and answers with what
it wrote. It keeps no state: the server's flusher registers the sensors, writes the checkpoint and
deletes the segment, in the same order as when it writes the files itself. Writing is idempotent, so
if the child dies half-way the flusher starts a new one and writes the segment again.

Protocol, over the child's stdin and stdout: each message is ``u32 length | JSON``. The child holds
``lake-writer.lock`` in the log directory while it lives, so that a child left behind by a server
killed with ``kill -9`` finishes its segment before a new server's child starts (it exits when it
reads the end of its stdin).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import select
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import orjson

from ironwatch.errors import StorageError
from ironwatch.ingest import child
from ironwatch.ingest.flusher import Seen, SegmentWriter, Written, write_segment
from ironwatch.ingest.wal import Segment

log = logging.getLogger(__name__)

LOCK = "lake-writer.lock"
#: How long the child waits for the next segment before it gives its memory back to the system.
IDLE_S = 1.0
_CHILD = "from ironwatch.ingest.lakewriter import main; main()"


def _send(stream: IO[bytes], message: dict[str, Any]) -> None:
    child.send(stream, orjson.dumps(message))


def _receive(stream: IO[bytes]) -> dict[str, Any] | None:
    """The next message, or ``None`` at the end of the stream."""
    data = child.receive(stream)
    return None if data is None else dict(orjson.loads(data))


def is_shared(root_url: str) -> bool:
    """Whether another process sees what is written at ``root_url`` (memory roots are per process)."""
    return not root_url.startswith("memory://")


class ProcessWriter:
    """Writes segments in a child process, started on first use and again whenever it dies.

    ``roots`` gives every tenant's storage root URL; it is asked for each segment, so tenants
    created while the server runs are found. While some tenant's root lives in this process's
    memory (``memory://``, for tests), segments are written by ``fallback`` instead.
    """

    def __init__(
        self,
        state_dir: Path,
        roots: Callable[[], Mapping[str, str]],
        compression_level: int,
        fallback: SegmentWriter,
    ) -> None:
        self.state_dir = state_dir
        self._roots = roots
        self._compression_level = compression_level
        self._fallback = fallback
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the child now, so that its imports overlap with the rest of the server's start."""
        with self._lock:
            self._running()

    def _running(self) -> subprocess.Popen[bytes]:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            return proc
        if proc is not None:
            log.error("lake writer: the process stopped (exit code %s); starting a new one", proc.returncode)
            _close(proc)
        self._proc = child.spawn(_CHILD, str(self.state_dir))
        return self._proc

    def write(self, segment: Segment, name: str) -> Written:
        roots = dict(self._roots())
        if not all(is_shared(url) for url in roots.values()):
            return self._fallback.write(segment, name)
        request = {
            "path": str(segment.path),
            "seq": segment.seq,
            "size_bytes": segment.size_bytes,
            "name": name,
            "roots": roots,
            "compression_level": self._compression_level,
        }
        with self._lock:
            proc = self._running()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                _send(proc.stdin, request)
                answer = _receive(proc.stdout)
            except (OSError, ValueError):
                answer = None
            if answer is None:
                proc.kill()
                code = proc.wait()
                _close(proc)
                raise StorageError(
                    f"the lake writer process stopped (exit code {code}) while writing segment "
                    f"{segment.seq}; a new one writes it again"
                )
        if "error" in answer:
            raise StorageError(f"lake writer: {answer['error']}")
        return Written(int(answer["files"]), [Seen(**seen) for seen in answer["seen"]])

    def close(self) -> None:
        """Let the child finish and exit (it stops at the end of its input)."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.close()
            proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            log.error("lake writer: the process did not stop; killing it")
            proc.kill()
            proc.wait()
        _close(proc)


def _close(proc: subprocess.Popen[bytes]) -> None:
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _serve(state_dir: Path, requests: IO[bytes], answers: IO[bytes]) -> None:
    from ironwatch import lake
    from ironwatch.model import warm_up_arrow

    warm_up_arrow()

    fd = os.open(state_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # waits for a child a killed server left behind
    roots: dict[str, lake.Root] = {}
    while (request := _receive(requests)) is not None:
        urls: dict[str, str] = request["roots"]

        def root_of(tenant: str, urls: dict[str, str] = urls) -> lake.Root:
            url = urls.get(tenant)
            if url is None:
                raise StorageError(f"tenant {tenant} has no storage root")
            if url not in roots:
                roots[url] = lake.open_root(url)
            return roots[url]

        segment = Segment(int(request["seq"]), Path(request["path"]), int(request["size_bytes"]))
        try:
            written = write_segment(segment, request["name"], root_of, int(request["compression_level"]))
        except Exception as exc:  # every failure goes back to the flusher, which retries
            log.exception("lake writer: cannot write segment %s", segment.seq)
            _send(answers, {"error": f"writing segment {segment.seq}: {type(exc).__name__}: {exc}"})
            continue
        _send(
            answers,
            {
                "files": written.files,
                "seen": [
                    {"tenant": s.tenant, "site": s.site, "gateway": s.gateway, "sensors": s.sensors}
                    for s in written.seen
                ],
            },
        )
        if not _request_within(requests, IDLE_S):
            _give_back()


def _request_within(requests: IO[bytes], timeout_s: float) -> bool:
    """Whether the next request (or the end of the input) arrives within ``timeout_s``.

    The flusher sends a request only after the answer to the last one, so nothing is left in the
    stream's buffer here and waiting on its file descriptor is enough.
    """
    try:
        ready, _, _ = select.select([requests], [], [], timeout_s)
    except (OSError, ValueError):
        return True
    return bool(ready)


def _give_back() -> None:
    """Return the memory of the last flushes to the system, once the child is idle.

    Not after every segment: under a steady stream the next segment comes within a second, and
    memory given back would be faulted in again page by page (~35,000 page faults a second at
    900k readings/s, a tenth of a core in the kernel).
    """
    with contextlib.suppress(OSError, AttributeError):  # glibc only
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def main() -> None:
    """The child's entry point; its one argument is the log directory (where its lock lives)."""
    child.setup()
    with contextlib.suppress(BrokenPipeError):  # the server went away while we answered
        _serve(Path(sys.argv[1]), sys.stdin.buffer, sys.stdout.buffer)

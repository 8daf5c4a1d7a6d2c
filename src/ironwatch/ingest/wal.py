"""The write-ahead log: where an accepted batch becomes durable before it is acknowledged.

Batches from every connection are appended by one writer thread that writes whatever is waiting
in one synchronous write (group commit), so concurrent requests share the cost of making data
durable. Segments are opened with ``O_DSYNC``: a write returns only once its data (and the file size)
are on stable storage, as ``fdatasync`` after it would ensure, but in one system call, so the writer
thread needs the GIL once less per group. The log is cut into segments; a closed segment is handed
to the flusher, which turns it into Parquet files and then deletes it.

A record on disk is ``MAGIC | u32 length | u32 crc32 | payload``. Replay stops at the first torn or
corrupt record: only the tail after the last completed write can be torn, and nothing there was
acknowledged.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path

from ironwatch.errors import StorageError
from ironwatch.lake.root import fsync_dir

log = logging.getLogger(__name__)

MAGIC = b"IWR1"
_HEAD = struct.Struct("<4sII")


@dataclasses.dataclass(frozen=True)
class Segment:
    """A closed log file, numbered in the order it was written."""

    seq: int
    path: Path
    size_bytes: int


def frame(payload: bytes) -> bytes:
    """Wrap a payload as one log record."""
    return _HEAD.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def read_records(path: Path, size: int | None = None) -> Iterator[bytes]:
    """Payloads of a segment in order, stopping at a torn or corrupt tail.

    With ``size`` (what the writer counted as written), bytes past it are not read: the records of a
    write that failed, whose batches were answered with an error, when cutting them off failed too.
    """
    with open(path, "rb") as fh:
        data = fh.read() if size is None else fh.read(size)
    pos = 0
    while pos + _HEAD.size <= len(data):
        magic, length, crc = _HEAD.unpack_from(data, pos)
        start, end = pos + _HEAD.size, pos + _HEAD.size + length
        if magic != MAGIC or end > len(data) or zlib.crc32(data[start:end]) != crc:
            break
        yield data[start:end]
        pos = end
    if pos != len(data):
        log.warning(
            "wal: %s has %d bytes of torn tail after the last whole record", path.name, len(data) - pos
        )


def write_durably(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that after a crash it holds either the old or the new bytes."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def segment_seq(path: Path) -> int:
    return int(path.stem)


class Log:
    """An append-only, group-committed log in ``directory``."""

    def __init__(
        self,
        directory: Path,
        *,
        segment_max_bytes: int,
        on_closed: Callable[[Segment], None],
        first_seq: int,
    ) -> None:
        self.directory = directory
        self.segment_max_bytes = segment_max_bytes
        self._on_closed = on_closed
        self._cond = threading.Condition()
        self._pending: list[tuple[bytes, Future[None]]] = []
        self._pending_bytes = 0
        self._rotate_requested = False
        self._stopping = False
        self._seq = first_seq
        self._size = 0
        self._first_write_at: float | None = None
        self._fd: int | None = self._open(self._seq)
        self._thread = threading.Thread(target=self._run, name="wal-writer", daemon=True)
        self._thread.start()

    def _open(self, seq: int) -> int:
        path = self.directory / f"{seq:012d}.wal"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_DSYNC, 0o644)
            try:
                fsync_dir(self.directory)
            except OSError:
                os.close(fd)
                raise
        except OSError as exc:
            raise StorageError(f"cannot open write-ahead log {path}: {exc}") from exc
        return fd

    @property
    def is_open(self) -> bool:
        """Whether a segment is open for the next record (not while a failed open waits for a retry)."""
        return self._fd is not None

    @property
    def pending_bytes(self) -> int:
        """Bytes waiting to be written: the depth of the queue in front of the disk."""
        return self._pending_bytes

    @property
    def current_age_s(self) -> float:
        """Seconds since the first record of the current segment was written (0 when empty)."""
        first = self._first_write_at
        return 0.0 if first is None else time.monotonic() - first

    @property
    def current_size(self) -> int:
        return self._size

    def append(self, record: bytes, on_done: Callable[[Future[None]], None] | None = None) -> Future[None]:
        """Queue a framed record; the future completes once it is on disk.

        ``on_done`` runs on the writer's thread when it completes, before the writer can close the
        segment that holds the record.
        """
        fut: Future[None] = Future()
        if on_done is not None:
            fut.add_done_callback(on_done)
        with self._cond:
            if self._stopping:
                raise StorageError("the write-ahead log is closed")
            self._pending.append((record, fut))
            self._pending_bytes += len(record)
            self._cond.notify()
        return fut

    def rotate(self) -> None:
        """Close the current segment (if it holds anything) and hand it to the flusher."""
        with self._cond:
            self._rotate_requested = True
            self._cond.notify()

    def close(self) -> None:
        """Write what is queued, close the last segment and stop the writer thread."""
        with self._cond:
            self._stopping = True
            self._rotate_requested = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._rotate_requested:
                    self._cond.wait()
                batch, self._pending = self._pending, []
                self._pending_bytes = 0
                rotate, self._rotate_requested = self._rotate_requested, False
                stopping = self._stopping
            try:
                if batch:
                    self._write(batch)
                if (rotate or self._size >= self.segment_max_bytes) and self._size > 0:
                    self._close_segment(reopen=not stopping)
            except Exception as exc:  # a bug: answer what is waiting, keep the writer alive
                log.exception("wal: the writer failed; %d records answered with an error", len(batch))
                error = StorageError(f"the write-ahead log failed: {exc}")
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(error)
            if stopping:
                with self._cond:
                    if self._pending:
                        continue
                if self._fd is not None:  # the last segment is empty: nothing to keep
                    os.close(self._fd)
                    (self.directory / f"{self._seq:012d}.wal").unlink(missing_ok=True)
                    self._fd = None
                return

    def _write(self, batch: list[tuple[bytes, Future[None]]]) -> None:
        if self._fd is None:  # the last open failed (no file descriptor or space left): try again
            try:
                self._fd = self._open(self._seq)
            except StorageError as exc:
                for _, fut in batch:
                    fut.set_exception(exc)
                return
        data = b"".join(record for record, _ in batch)
        try:
            view = memoryview(data)
            while view:  # O_DSYNC: each write returns once it is durable
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            error = StorageError(f"cannot write the write-ahead log: {exc}")
            for _, fut in batch:
                fut.set_exception(error)
            # A half-written record must not sit in front of later ones: cut it off.
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                log.exception("wal: cannot truncate after a failed write; starting a new segment")
                self._close_segment(reopen=True)
            return
        if self._size == 0:
            self._first_write_at = time.monotonic()
        self._size += len(data)
        for _, fut in batch:
            fut.set_result(None)

    def _close_segment(self, *, reopen: bool) -> None:
        """Close the current segment and hand it on; then open the next one, or leave that to the
        next write when it cannot be opened now (its records are answered with the error meanwhile).
        """
        assert self._fd is not None
        fd, self._fd = self._fd, None
        segment = Segment(self._seq, self.directory / f"{self._seq:012d}.wal", self._size)
        self._seq += 1
        self._size = 0
        self._first_write_at = None
        try:
            os.close(fd)  # O_DSYNC: what is in it is durable already
        except OSError:
            log.exception("wal: closing segment %d failed; its records were written durably", segment.seq)
        self._on_closed(segment)
        if reopen:
            try:
                self._fd = self._open(self._seq)
            except StorageError:
                log.exception("wal: cannot open the next segment; trying again with the next record")

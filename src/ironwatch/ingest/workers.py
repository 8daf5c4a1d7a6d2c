"""Ingest workers: processes that decode and check batch envelopes outside the server's interpreter.

Decoding JSON into Arrow columns and checking every reading is most of the CPU an ingested reading
costs, and it holds Python's global lock. In the server's own process it competes with the event
loop, the MQTT client and the write-ahead log for that one lock. A worker does it in its own
process, so ingest uses a second core.

A worker is stateless: given one tenant's envelopes (already unzipped) and the server's clock, it
decodes and checks them and answers with a *head* per envelope (gateway, site, batch, counts and
errors) and one write-ahead log record payload that holds them all (:func:`prepare`). Everything
that needs the server's state stays in the server: authorising the gateway, the batch ledger,
writing the log, acknowledging. Batches the server does not take (duplicates, another gateway's
site) are cut out of the record, and an envelope the worker refused is decoded in the server, which
names what is wrong; so the answers are exactly those of a server without workers.

If a worker dies, hangs or answers nonsense, the server works in process for that group and starts
a new worker; nothing acknowledged depends on a worker, because nothing is acknowledged before the
server's own log write.

Protocol over the worker's stdin and stdout, each message framed as ``u32 length | message``: a
request is ``u32 header length | header JSON | the bodies one after another``, the answer ``u32
header length | header JSON | payload``. A worker exits at the end of its input, so it goes with a
server killed with ``kill -9``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import queue
import select
import subprocess
import sys
import threading
import time
from typing import IO, Any

import orjson

from ironwatch.ingest import child
from ironwatch.ingest import record as records
from ironwatch.ingest.decode import decode_many
from ironwatch.ingest.validate import NO_QUARANTINE, check_many, good_group
from ironwatch.model import warm_up_arrow

log = logging.getLogger(__name__)

_CHILD = "from ironwatch.ingest.workers import main; main()"
#: How long a group waits for an idle worker before the server decodes it itself.
IDLE_WAIT_S = 1.0
#: How long a worker may take to answer (a group of 2 MiB takes milliseconds) before it is replaced.
ANSWER_TIMEOUT_S = 30.0
#: An answer announcing more than this is nonsense (a group is at most a few MiB).
MAX_ANSWER_BYTES = 256 << 20
#: Pipe buffer asked for each way (Linux allows up to /proc/sys/fs/pipe-max-size, 1 MiB by default).
PIPE_BYTES = 1 << 20
#: Least time between two starts of a worker, so one that dies at once is not restarted in a loop.
RESPAWN_PAUSE_S = 1.0


@dataclasses.dataclass(frozen=True)
class Limits:
    """The ingest settings a worker applies (passed to it as JSON)."""

    max_readings: int
    max_future_s: float
    max_errors: int


@dataclasses.dataclass(frozen=True)
class Head:
    """What a worker found in one envelope."""

    gateway: str
    site: str
    batch: int
    accepted: int
    rejected: int
    errors: list[dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A group of envelopes made ready for the log.

    ``heads[i]`` is ``None`` for an envelope the worker refused (the server decodes it itself to
    learn why); ``payload`` is one log record with a part per envelope that has a head, in order.
    """

    heads: list[Head | None]
    payload: bytes


def prepare(tenant: str, transport: str, bodies: list[bytes], *, now_us: int, limits: Limits) -> Prepared:
    """Decode and check one tenant's envelopes; the pure step a worker runs."""
    taken = good_group(
        bodies, now_us=now_us, max_future_s=limits.max_future_s, max_readings=limits.max_readings
    )
    if taken is not None:  # every reading good: checked in one pass
        group, good = taken
        whose = list(zip(group.gateway, group.site, group.batch, group.counts.tolist(), strict=True))
        heads: list[Head | None] = [Head(g, s, b, n, 0, []) for g, s, b, n in whose]
        parts = [records.Part(g, s, b, n) for g, s, b, n in whose]
        rec = records.Record(tenant, transport, now_us, parts, good, NO_QUARANTINE)
        return Prepared(heads, records.encode(rec))
    decoded = decode_many(bodies, max_readings=limits.max_readings)
    usable = [(n, d) for n, d in enumerate(decoded) if not isinstance(d, Exception)]
    checked = check_many(
        [d for _, d in usable],
        now_us=now_us,
        max_future_s=limits.max_future_s,
        max_errors=limits.max_errors,
        received_at_us=now_us,
        transport=transport,
    )
    heads = [None] * len(bodies)
    parts = []
    for (n, d), one in zip(usable, checked.items, strict=True):
        heads[n] = Head(d.gateway, d.site, d.batch, one.accepted, one.rejected, one.errors)
        parts.append(records.Part(d.gateway, d.site, d.batch, one.accepted))
    rec = records.Record(tenant, transport, now_us, parts, checked.good, checked.quarantine)
    return Prepared(heads, records.encode(rec))


# the wire -------------------------------------------------------------------------------------
def _pack(header: dict[str, Any], *chunks: bytes) -> bytes:
    head = orjson.dumps(header)
    return b"".join((child.LEN.pack(len(head)), head, *chunks))


def _unpack(message: bytes) -> tuple[dict[str, Any], memoryview]:
    (n,) = child.LEN.unpack_from(message, 0)
    header = orjson.loads(message[child.LEN.size : child.LEN.size + n])
    return header, memoryview(message)[child.LEN.size + n :]


def _serve(requests: IO[bytes], answers: IO[bytes], limits: Limits) -> None:
    """A worker's life: answer requests until the server closes its end."""
    while (message := child.receive(requests)) is not None:
        header, rest = _unpack(message)
        bodies, pos = [], 0
        for size in header["sizes"]:
            bodies.append(bytes(rest[pos : pos + size]))
            pos += size
        try:
            tenant, transport, now_us = header["tenant"], header["transport"], header["now_us"]
            done = prepare(tenant, transport, bodies, now_us=now_us, limits=limits)
        except Exception as exc:  # a bug: the server decodes this group itself
            log.exception("ingest worker: cannot prepare %d envelopes", len(bodies))
            child.send(answers, _pack({"error": repr(exc)}))
            continue
        heads = [None if h is None else dataclasses.astuple(h) for h in done.heads]
        child.send(answers, _pack({"heads": heads}, done.payload))


def main() -> None:
    """A worker process's entry point; its one argument is its :class:`Limits` as JSON."""
    child.setup()
    warm_up_arrow()
    limits = Limits(**orjson.loads(sys.argv[1]))
    with contextlib.suppress(BrokenPipeError):  # the server went away while we answered
        _serve(sys.stdin.buffer, sys.stdout.buffer, limits)


def _write_all(fd: int, data: bytes, deadline: float) -> None:
    """Write all of ``data`` to a non-blocking pipe, or raise :class:`TimeoutError` at ``deadline``."""
    view = memoryview(data)
    while view:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([], [fd], [], left)[1]:
            raise TimeoutError("the worker does not take its request")
        with contextlib.suppress(BlockingIOError):
            view = view[os.write(fd, view) :]


def _read_exactly(fd: int, size: int, deadline: float) -> bytes:
    """Read ``size`` bytes from a non-blocking pipe, or raise at its end or at ``deadline``."""
    out = bytearray()
    while len(out) < size:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError("the worker does not answer")
        try:
            chunk = os.read(fd, size - len(out))
        except BlockingIOError:
            continue
        if not chunk:
            raise EOFError("the worker closed its output")
        out += chunk
    return bytes(out)


class _Worker:
    """One worker process and its pipes (non-blocking here, so a hung worker cannot hang the server)."""

    def __init__(self, limits: Limits) -> None:
        self.proc = child.spawn(_CHILD, orjson.dumps(dataclasses.asdict(limits)).decode())
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._out, self._in = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        self._lock = threading.Lock()
        self._closed = False
        for fd in (self._out, self._in):
            os.set_blocking(fd, False)
            # Room for a whole group each way, so a request goes out in one write instead of a
            # select and a write per 4 KiB the worker drains (7% of the throughput with 64 KiB pipes).
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)

    @property
    def name(self) -> str:
        return f"pid {self.proc.pid}"

    def ask(self, request: bytes) -> tuple[dict[str, Any], memoryview]:
        """Send one request and read its answer, all within :data:`ANSWER_TIMEOUT_S`."""
        with self._lock:  # the pipes' descriptors stay open (and are not reused) meanwhile
            if self._closed:
                raise EOFError("the worker is closed")
            deadline = time.monotonic() + ANSWER_TIMEOUT_S
            _write_all(self._out, child.LEN.pack(len(request)), deadline)
            _write_all(self._out, request, deadline)
            (size,) = child.LEN.unpack(_read_exactly(self._in, child.LEN.size, deadline))
            if size > MAX_ANSWER_BYTES:
                raise ValueError(f"the worker announces an answer of {size} bytes")
            return _unpack(_read_exactly(self._in, size, deadline))

    def close(self) -> None:
        """Let the process finish and exit (it stops at the end of its input); kill it if it does not."""
        with self._lock:
            self._closed = True
            try:
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout is not None:
                with contextlib.suppress(OSError):
                    self.proc.stdout.close()


class WorkerPool:
    """``count`` worker processes; :meth:`prepare` uses an idle one, or answers ``None`` if it cannot."""

    def __init__(self, count: int, limits: Limits) -> None:
        self.count = count
        self._limits = limits
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._all: list[_Worker] = []
        self._closed = False
        self._last_spawn = -RESPAWN_PAUSE_S

    def start(self) -> None:
        for _ in range(self.count):
            self._add(respawn=False)

    def _add(self, *, respawn: bool = True) -> None:
        with self._lock:
            if self._closed:
                return
            if respawn:
                self._last_spawn = time.monotonic()
            try:
                worker = _Worker(self._limits)
            except Exception:
                log.exception("ingest worker: cannot start one; decoding in the server meanwhile")
                return
            self._all.append(worker)
        self._idle.put(worker)

    def _replenish(self) -> None:
        """Start workers that died: the first at once, then at most one each :data:`RESPAWN_PAUSE_S`
        (a worker that dies at once must not be restarted in a tight loop)."""
        with self._lock:
            missing = len(self._all) < self.count and not self._closed
            due = time.monotonic() - self._last_spawn >= RESPAWN_PAUSE_S
        if missing and due:
            self._add()

    def _drop(self, worker: _Worker) -> None:
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)
        worker.proc.kill()  # it may hang rather than be gone (its ask has returned: the lock is free)
        worker.close()

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (for tests and diagnostics)."""
        with self._lock:
            return [w.proc.pid for w in self._all]

    def prepare(self, tenant: str, transport: str, bodies: list[bytes], now_us: int) -> Prepared | None:
        """:func:`prepare` in a worker; ``None`` when no worker could (the caller works in process)."""
        self._replenish()
        with self._lock:
            if not self._all:  # none alive: do not wait for one
                return None
        try:
            worker = self._idle.get(timeout=IDLE_WAIT_S)
        except queue.Empty:  # every worker is busy with another group
            return None
        request = _pack(
            {"tenant": tenant, "transport": transport, "now_us": now_us, "sizes": [len(b) for b in bodies]},
            *bodies,
        )
        try:
            header, payload = worker.ask(request)
            if "error" in header:  # a bug in the worker's decoding: it is alive and well otherwise
                self._idle.put(worker)
                log.error("ingest worker could not prepare %d envelopes: %s", len(bodies), header["error"])
                return None
            heads = [None if h is None else Head(*h) for h in header["heads"]]
            if len(heads) != len(bodies):
                raise ValueError(f"{len(heads)} heads for {len(bodies)} envelopes")
        except Exception as exc:  # gone, hung or talking nonsense: replaced
            log.error("ingest worker %s failed (%s); starting a new one", worker.name, exc)
            self._drop(worker)
            self._replenish()
            return None
        self._idle.put(worker)
        return Prepared(heads, bytes(payload))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers, self._all = self._all, []
        for worker in workers:
            worker.close()

"""The ingest pipeline every front door shares: authorise, validate, deduplicate, make durable, answer.

``Pipeline.ingest`` (asyncio, for HTTP) and ``Pipeline.ingest_many`` (threads, for MQTT) run the
same steps; HTTP requests that arrive together are admitted together, as MQTT groups are. A batch is
acknowledged only after its record is in the write-ahead log and fsynced; the flusher writes it to
the lake later, and recovery after a crash replays what was not flushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ironwatch import lake, live
from ironwatch.config import Settings
from ironwatch.errors import Conflict, Forbidden, IronwatchError, Unavailable
from ironwatch.ingest import record as records
from ironwatch.ingest.decode import Decoded, Group, decode_many
from ironwatch.ingest.flusher import Flusher, InProcessWriter, SegmentWriter, load_checkpoint
from ironwatch.ingest.health import Tracker
from ironwatch.ingest.lakewriter import ProcessWriter
from ironwatch.ingest.ledger import Key, Ledger
from ironwatch.ingest.metrics import Metrics
from ironwatch.ingest.validate import NO_QUARANTINE, WAL_SCHEMA, check_many, good_group, whole_message
from ironwatch.ingest.wal import Log, Segment, frame, read_records, segment_seq, write_durably
from ironwatch.ingest.workers import Head, Limits, Prepared, WorkerPool
from ironwatch.model import QUARANTINE_SCHEMA, Principal, Role, empty_table, utc_now_us, warm_up_arrow
from ironwatch.store import Store

log = logging.getLogger(__name__)

INGEST_ROLES = frozenset({Role.GATEWAY, Role.ADMIN})
#: The fewest batches of one tenant that go to an ingest worker together. Fewer are decoded here: a
#: worker's round trip costs more than it saves on a lone HTTP request or a quiet MQTT stream (bench
#: ingest over HTTP with 4 clients: 696k readings/s in process, 599k through two workers), while
#: the groups of a busy MQTT stream gain from the second core.
WORKER_MIN_GROUP = 4
#: At most this many HTTP batches, or this many bytes of them (a lone batch of any size passes), are
#: admitted as one group: what one turn of the event loop read is split beyond that, so a burst of
#: large requests is not one huge log record.
HTTP_GROUP_MAX_BATCHES = 512
HTTP_GROUP_MAX_BYTES = 4 << 20


@dataclasses.dataclass(frozen=True)
class Outcome:
    """The answer to one batch."""

    accepted: int
    rejected: int
    duplicate: bool
    errors: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies the error list, ~40 us per batch on the hot path.
        return {
            "accepted": self.accepted,
            "rejected": self.rejected,
            "duplicate": self.duplicate,
            "errors": self.errors,
        }


@dataclasses.dataclass(frozen=True)
class _Call:
    """One call of :meth:`Pipeline.ingest_many`: its batches, how to answer them, what was refused."""

    items: Sequence[tuple[Principal, bytes]]
    transport: str
    on_done: Callable[[int, Outcome | BaseException], None]
    may_register: bool
    started: float
    refused: list[Exception | None]
    #: Per batch: answered, or claimed for a write that will answer it (so it is not refused too).
    taken: list[bool]


@dataclasses.dataclass(frozen=True)
class _Waiting:
    """An HTTP batch waiting for its event loop's next turn, and the future of its answer."""

    principal: Principal
    body: bytes
    answer: asyncio.Future[Outcome]


def _trimmed(rec: records.Record, heads: list[Head], keep: list[bool]) -> records.Record:
    """``rec`` with only the batches (parts, good readings, quarantined rows) that ``keep`` says.

    The good readings and the quarantined rows of a worker's record are each in the order of its
    parts, ``accepted`` and ``rejected`` rows per part, so both are cut by the heads' counts.
    """
    good, bad, parts = [], [], []
    good_at = bad_at = 0
    for part, head, kept in zip(rec.parts, heads, keep, strict=True):
        if kept:
            parts.append(part)
            good.append(rec.good.slice(good_at, head.accepted))
            bad.append(rec.quarantine.slice(bad_at, head.rejected))
        good_at += head.accepted
        bad_at += head.rejected
    return dataclasses.replace(
        rec,
        parts=parts,
        good=pa.concat_tables(good) if good else rec.good.slice(0, 0),
        quarantine=pa.concat_tables(bad) if bad else rec.quarantine.slice(0, 0),
    )


def _record_of(prepared: Prepared, tenant: str) -> records.Record | None:
    """The record an ingest worker prepared, if it holds exactly the batches its heads name."""
    try:
        rec = records.decode(prepared.payload)
    except Exception:
        log.exception("ingest worker: its record does not read back; decoding in the server")
        return None
    heads = [h for h in prepared.heads if h is not None]
    expected = [(h.gateway, h.site, h.batch, h.accepted) for h in heads]
    found = [(p.gateway, p.site, p.batch, p.rows) for p in rec.parts]
    if (
        rec.tenant != tenant
        or rec.good.schema != WAL_SCHEMA
        or (rec.quarantine.num_rows and rec.quarantine.schema != QUARANTINE_SCHEMA)
        or found != expected
        or rec.good.num_rows != sum(h.accepted for h in heads)
        or rec.quarantine.num_rows != sum(h.rejected for h in heads)
    ):
        log.error("ingest worker: its record does not match its answer; decoding in the server")
        return None
    return rec


class Pipeline:
    """Owns the write-ahead log, the batch ledger and the flusher of one server."""

    def __init__(
        self, settings: Settings, store: Store, metrics: Metrics, bus: live.Bus | None = None
    ) -> None:
        self.settings = settings
        #: Acknowledged readings are published here (recent buffer, live streams).
        self.bus = bus if bus is not None else live.Bus(live.Recent())
        self.store = store
        self.metrics = metrics
        self.state_dir: Path = settings.data_dir / "wal"
        self.ledger = Ledger()
        #: Gateway and sensor health, fed with every durable batch and heartbeat.
        self.health = Tracker(settings, store, self.ledger)
        self._roots: dict[str, lake.Root] = {}
        self._gateways: dict[tuple[str, str], str] = {}
        self._known_sensors: dict[tuple[str, str], set[str]] = {}
        self._lock = threading.Lock()
        self._log: Log | None = None
        self._flusher: Flusher | None = None
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock_fd: int | None = None
        self._compactor: lake.Compactor | None = None
        #: Processes that decode and check batches (``None``: all of it happens in this process).
        self._workers: WorkerPool | None = None
        # HTTP batches waiting for their event loop's next turn, to be admitted as one group (by
        # loop and transport: only that loop's thread touches its list).
        self._gathered: dict[tuple[asyncio.AbstractEventLoop, str], list[_Waiting]] = {}

    # life cycle --------------------------------------------------------------------------------
    @property
    def writer_id(self) -> str:
        """A name unique to this data directory, so several writers never pick the same file name."""
        path = self.state_dir / "writer-id"
        name = path.read_text().strip() if path.exists() else ""
        if not name:  # new, or left empty by a crash before this was written durably
            name = f"w{secrets.token_hex(4)}"
            write_durably(path, f"{name}\n".encode())
        return name

    def start(self) -> None:
        """Recover what the log holds, then open it for new batches."""
        warm_up_arrow()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        checkpoint = load_checkpoint(self.state_dir)
        self.ledger.load(checkpoint["ledger"])
        self.health.load()
        self._flusher = Flusher(
            state_dir=self.state_dir,
            writer_id=self.writer_id,
            writer=self._segment_writer(),
            ledger=self.ledger,
            discover=self._discover,
            on_written=self._on_written,
            on_flushed=self.bus.recent.segment_flushed,
        )
        last_seq = int(checkpoint["flushed_seq"])
        recovered = 0
        for path in sorted(self.state_dir.glob("*.wal"), key=segment_seq):
            seq = segment_seq(path)
            last_seq = max(last_seq, seq)
            if seq <= checkpoint["flushed_seq"]:
                path.unlink()  # flushed before the crash; only the deletion was lost
                continue
            for payload in read_records(path):
                rec = records.decode(payload)
                for part, good in rec.batches():
                    self.ledger.mark((rec.tenant, part.gateway, part.batch))
                    self.health.replay(
                        rec.tenant, part.gateway, part.batch, part.site, good, rec.received_at_us
                    )
                recovered += 1
            self._flusher.submit(Segment(seq, path, path.stat().st_size))
        if recovered:
            log.warning("recovered %d records from the write-ahead log", recovered)
        self._flusher.start()
        self.health.start()
        self._log = Log(
            self.state_dir,
            segment_max_bytes=self.settings.lake.segment_max_bytes,
            on_closed=self._segment_closed,
            first_seq=last_seq + 1,
        )
        self.metrics.watch_queue(
            lambda: (
                (self._log.pending_bytes if self._log else 0)
                + (self._flusher.pending_bytes if self._flusher else 0)
            ),
            lambda: self._flusher.pending_segments if self._flusher else 0,
        )
        self._ticker = threading.Thread(target=self._tick, name="wal-ticker", daemon=True)
        self._ticker.start()
        ingest = self.settings.ingest
        if int(ingest.workers) > 0:
            limits = Limits(int(ingest.max_readings), float(ingest.max_future_s), int(ingest.max_errors))
            self._workers = WorkerPool(int(ingest.workers), limits)
            self._workers.start()
        if self.settings.lake.compaction:
            self._compactor = lake.Compactor(
                lambda: [self.root_of(t.name) for t in self.store.tenants()],
                lake.compaction.Policy.from_settings(self.settings.lake),
                data_dir=self.settings.data_dir,
                interval_s=float(self.settings.lake.compaction_interval_s),
            )
            self._compactor.start()

    def _segment_writer(self) -> SegmentWriter:
        level = int(self.settings.lake.compression_level)
        in_process = InProcessWriter(self.root_of, level)
        if not self.settings.lake.flush_process:
            return in_process
        writer = ProcessWriter(self.state_dir, self._root_urls, level, fallback=in_process)
        writer.start()
        return writer

    def _root_urls(self) -> dict[str, str]:
        return {tenant.name: tenant.root_url for tenant in self.store.tenants()}

    def _tick(self) -> None:
        interval = float(self.settings.lake.flush_interval_s)
        while not self._stop.wait(min(interval, 1.0) / 2):
            log_ = self._log
            if log_ is not None and log_.current_size > 0 and log_.current_age_s >= interval:
                log_.rotate()

    def stop(self) -> None:
        """Stop accepting, write the last segment to the lake and close."""
        self._stop.set()
        if self._compactor is not None:
            self._compactor.stop()
        if self._ticker is not None:
            self._ticker.join()
        if self._log is not None:
            self._log.close()
        if self._flusher is not None:
            self._flusher.stop()
        self.health.stop()
        if self._workers is not None:
            self._workers.close()
            self._workers = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the lock
            self._lock_fd = None

    def _take_lock(self) -> None:
        """One server per data directory: two writers on one log would corrupt it."""
        fd = os.open(self.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Conflict(
                f"another ironwatch server is already using {self.state_dir.parent}; "
                "give each server its own --data-dir"
            ) from None
        self._lock_fd = fd

    def flush(self, timeout_s: float = 60.0) -> bool:
        """Make everything acknowledged so far visible in the lake (used by tests and benchmarks)."""
        if self._log is None or self._flusher is None:
            return True
        self._log.rotate()
        deadline = time.monotonic() + timeout_s
        while self._log.current_size > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        return self._flusher.wait_idle(max(0.0, deadline - time.monotonic()))

    @property
    def workers(self) -> int:
        """How many ingest worker processes decode and check batches."""
        return self._workers.count if self._workers is not None else 0

    @property
    def is_ready(self) -> bool:
        return self._log is not None and self._log.is_open and not self._stop.is_set()

    @property
    def flush_error(self) -> str | None:
        return self._flusher.last_error if self._flusher else None

    # lookups -----------------------------------------------------------------------------------
    def root_of(self, tenant: str) -> lake.Root:
        """The storage root of a tenant (opened once)."""
        with self._lock:
            root = self._roots.get(tenant)
        if root is None:
            root = lake.open_root(self.store.tenant(tenant).root_url)
            with self._lock:
                self._roots[tenant] = root
        return root

    def _check_gateway(self, tenant: str, gateway: str, site: str, *, may_register: bool) -> None:
        known = self._gateways.get((tenant, gateway))
        if known is None:
            found = self.store.gateway(tenant, gateway)
            if found is None:
                if not may_register:
                    raise Forbidden(
                        f"gateway {gateway} is not registered in tenant {tenant}; "
                        f"register it with 'ironwatch gateways add' or send one batch over HTTP",
                        {"gateway": gateway},
                    )
                found = self.store.add_gateway(tenant, gateway, site, registered_by="first-contact")
            known = found.site
            self._gateways[(tenant, gateway)] = known
        if known != site:
            raise Conflict(
                f"gateway {gateway} is registered to site {known}, not {site}",
                {"field": "site", "gateway": gateway, "registered_site": known},
            )

    def _discover(self, tenant: str, site: str, sensors: list[str], gateway: str | None) -> None:
        known = self._known_sensors.setdefault((tenant, site), set())
        new = [s for s in sensors if s not in known]
        if new:
            self.store.discover_sensors(tenant, site, new, gateway)
            known.update(new)

    def _segment_closed(self, segment: Segment) -> None:
        self.bus.recent.segment_closed(segment.seq)
        assert self._flusher is not None
        self._flusher.submit(segment)

    def _on_written(self, files: int, size_bytes: int) -> None:
        self.metrics.lake_files_written.inc(files)
        self.metrics.lake_bytes_flushed.inc(size_bytes)

    # the pipeline ------------------------------------------------------------------------------
    def _authorise(self, principal: Principal, gateway: str, site: str, *, may_register: bool) -> None:
        """Check that ``principal`` may send a batch of this gateway and site."""
        if not principal.may_write_site(site):
            raise Forbidden(f"this key may not write site {site}", {"field": "site"})
        if not principal.may_use_gateway(gateway):
            raise Forbidden(f"this key may not send for gateway {gateway}", {"field": "gateway"})
        self._check_gateway(principal.tenant, gateway, site, may_register=may_register)

    def _append(
        self, payload: bytes, on_written: Callable[[Future[None]], None] | None = None
    ) -> Future[None]:
        if self._log is None or self._stop.is_set():
            raise Unavailable("the server is not accepting readings right now")
        return self._log.append(frame(payload), on_written)

    def _publish(self, tenant: str, site: str, good: pa.Table) -> None:
        """Hand durable readings to the live bus, before they are acknowledged (so series show them)."""
        try:
            self.bus.publish(tenant, site, good)
        except Exception:  # the batches are durable: their acknowledgement must not fail for this
            log.exception("live bus: cannot publish %d readings of site %s", good.num_rows, site)

    def _duplicate(self, transport: str) -> Outcome:
        self.metrics.readings_duplicate.labels(transport).inc()
        self.metrics.batches.labels(transport, "duplicate").inc()
        return Outcome(0, 0, True, [])

    async def ingest(self, principal: Principal, body: bytes, transport: str = "http") -> Outcome:
        """Store one batch envelope for ``principal``'s tenant; answer once it is durable.

        The batch is admitted on the event loop's next turn, together with every other batch that
        arrived in the meantime (under load, the requests whose bodies were read in one turn), so
        concurrent requests share one decoding pass, one log record and one fsync as an MQTT group
        does. Each is still checked, deduplicated and answered on its own; a lone request waits for
        nothing but that turn.
        """
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Outcome] = loop.create_future()
        waiting = self._gathered.get((loop, transport))
        if waiting is None:
            # A loop closed before its turn came left its batches unanswered (nothing was stored or
            # acknowledged): forget them rather than keep the loop and the bodies alive.
            for key in [key for key in list(self._gathered) if key[0].is_closed()]:
                self._gathered.pop(key, None)
            waiting = self._gathered[(loop, transport)] = []
            loop.call_soon(self._admit_gathered, loop, transport)
        waiting.append(_Waiting(principal, body, answer))
        # A client that goes away must not cancel the write: the batch may already be durable.
        return await asyncio.shield(answer)

    def _admit_gathered(self, loop: asyncio.AbstractEventLoop, transport: str) -> None:
        """Admit the batches gathered on ``loop`` in groups; runs on the loop's thread.

        Never through an ingest worker: waiting for one would stop the event loop, and with it
        every other request.
        """
        waiting = self._gathered.pop((loop, transport), [])
        group: list[_Waiting] = []
        size = 0
        for one in waiting:
            if group and (
                len(group) >= HTTP_GROUP_MAX_BATCHES or size + len(one.body) > HTTP_GROUP_MAX_BYTES
            ):
                self._admit_waiting(loop, transport, group)
                group, size = [], 0
            group.append(one)
            size += len(one.body)
        if group:
            self._admit_waiting(loop, transport, group)

    def _admit_waiting(self, loop: asyncio.AbstractEventLoop, transport: str, group: list[_Waiting]) -> None:
        loop_thread = threading.get_ident()

        def settle(i: int, outcome: Outcome | BaseException) -> None:
            answer = group[i].answer
            if answer.done():  # only after a bug answered it already (see the except below)
                return
            if isinstance(outcome, BaseException):
                answer.set_exception(outcome)
            else:
                answer.set_result(outcome)

        def on_done(i: int, outcome: Outcome | BaseException) -> None:
            # Duplicates are answered at once, on this thread; new batches on the log's thread.
            if threading.get_ident() == loop_thread:
                settle(i, outcome)
            elif not loop.is_closed():  # else no one waits any more (as asyncio.wrap_future does)
                with contextlib.suppress(RuntimeError):  # closed meanwhile
                    loop.call_soon_threadsafe(settle, i, outcome)

        try:
            refusals = self.ingest_many(
                [(one.principal, one.body) for one in group], transport, on_done, may_register=True
            )
        except Exception as exc:  # a bug: the requests not answered yet get the 500, none hangs
            log.exception("ingest: a group of %d batches could not be admitted", len(group))
            refusals = [exc] * len(group)
        for i, refused in enumerate(refusals):
            if refused is not None:
                settle(i, refused)

    def ingest_many(
        self,
        items: Sequence[tuple[Principal, bytes]],
        transport: str,
        on_done: Callable[[int, Outcome | BaseException], None],
        *,
        may_register: bool = False,
        may_offload: bool = False,
    ) -> list[Exception | None]:
        """Admit several batches together; per batch, why it was refused, or ``None`` if admitted.

        Every admitted batch ``i`` is answered once with ``on_done(i, outcome)`` when it is durable
        (or found a duplicate, perhaps before this returns), or ``on_done(i, error)`` if it could not
        be made durable. The batches of one tenant are checked in one pass and written as one log
        record, so a stream of small MQTT messages costs one record and one fsync per group instead
        of per message; each batch is still deduplicated, counted and answered on its own. With
        ``may_offload`` (a thread that may wait), an ingest worker does the checking when there are
        any.
        """
        n = len(items)
        call = _Call(items, transport, on_done, may_register, time.perf_counter(), [None] * n, [False] * n)
        self.metrics.group_batches.labels(transport).observe(n)
        by_tenant: dict[str, list[int]] = {}
        for i, (principal, _) in enumerate(items):
            if principal.role in INGEST_ROLES:
                by_tenant.setdefault(principal.tenant, []).append(i)
            else:
                call.refused[i] = Forbidden(f"the {principal.role.value} role may not send readings")
        for tenant, indexes in by_tenant.items():
            try:
                if may_offload and self._workers is not None and len(indexes) >= WORKER_MIN_GROUP:
                    indexes = self._admit_prepared(tenant, indexes, call)
                if indexes:
                    self._admit_here(tenant, indexes, call)
            except Exception as exc:  # a bug: it costs this tenant's batches not yet taken, no others
                log.exception("ingest: %d batches of tenant %s could not be admitted", len(indexes), tenant)
                for i in by_tenant[tenant]:
                    if call.refused[i] is None and not call.taken[i]:
                        call.refused[i] = exc
        return call.refused

    def _reserve(self, call: _Call, i: int, gateway: str, site: str, batch: int) -> Key | None:
        """Authorise batch ``i`` and claim it in the ledger; its key if it is new and must be written.

        A refused batch gets its reason in ``call.refused``; a duplicate is answered here, and a
        batch that is being written by another request is answered when that write ends.
        """
        principal = call.items[i][0]
        try:
            self._authorise(principal, gateway, site, may_register=call.may_register)
        except Exception as exc:
            call.refused[i] = exc
            return None
        key = (principal.tenant, gateway, batch)
        state, pending = self.ledger.reserve(key)
        if state == "duplicate":
            outcome = self._duplicate(call.transport)
            call.taken[i] = True
            call.on_done(i, outcome)
            self.health.contact(principal.tenant, gateway, site)
            return None
        if state == "in_flight":
            assert pending is not None
            pending.add_done_callback(partial(self._after_other, call.on_done, i, call.transport))
            call.taken[i] = True
            return None
        call.taken[i] = True  # claimed: the caller writes it, or releases and answers it (_fail)
        return key

    def _admit_here(self, tenant: str, indexes: list[int], call: _Call) -> None:
        """Decode and check one tenant's batches in this process, and write the new ones."""
        bodies = [call.items[i][1] for i in indexes]
        max_readings = int(self.settings.ingest.max_readings)
        now = utc_now_us()
        max_future_s = float(self.settings.ingest.max_future_s)
        taken = good_group(bodies, now_us=now, max_future_s=max_future_s, max_readings=max_readings)
        if taken is not None:
            self.metrics.arrow_groups.labels(call.transport).inc()
            self._admit_group(tenant, indexes, *taken, now, call)
            return
        decoded_all = decode_many(bodies, max_readings=max_readings)
        fresh: list[tuple[int, Key, Decoded]] = []
        try:
            for i, decoded in zip(indexes, decoded_all, strict=True):
                if isinstance(decoded, Exception):
                    if isinstance(decoded, IronwatchError):
                        self.metrics.batches.labels(call.transport, "invalid").inc()
                    call.refused[i] = decoded
                    continue
                key = self._reserve(call, i, decoded.gateway, decoded.site, decoded.batch)
                if key is not None:
                    fresh.append((i, key, decoded))
        except BaseException as exc:  # the claims made so far must not outlive this call
            self._fail([(i, key) for i, key, _ in fresh], exc, call)
            raise
        if fresh:
            self._write_group(tenant, fresh, call)

    def _admit_group(
        self, tenant: str, indexes: list[int], group: Group, good: pa.Table, now: int, call: _Call
    ) -> None:
        """Write the new batches of a group whose readings are all good (decoded and checked together)."""
        fresh: list[tuple[int, Key]] = []
        keep = np.zeros(len(indexes), dtype=bool)
        try:
            for n, i in enumerate(indexes):
                key = self._reserve(call, i, group.gateway[n], group.site[n], group.batch[n])
                if key is not None:
                    fresh.append((i, key))
                    keep[n] = True
        except BaseException as exc:  # the claims made so far must not outlive this call
            self._fail(fresh, exc, call)
            raise
        if not fresh:
            return
        try:
            counts = group.counts
            if not keep.all():  # duplicates, or another gateway's site: their readings are not written
                good = good.filter(pa.array(np.repeat(keep, counts)))
            parts = [
                records.Part(group.gateway[n], group.site[n], group.batch[n], int(counts[n]))
                for n in np.flatnonzero(keep)
            ]
            rec = records.Record(tenant, call.transport, now, parts, good, NO_QUARANTINE)
            payload = records.encode(rec)
        except BaseException as exc:
            self._fail(fresh, exc, call)
            if not isinstance(exc, Exception):
                raise
            return
        outcomes = [Outcome(part.rows, 0, False, []) for part in parts]
        self._write(tenant, fresh, payload, parts, good, outcomes, call)

    def _admit_prepared(self, tenant: str, indexes: list[int], call: _Call) -> list[int]:
        """Let an ingest worker decode and check one tenant's batches; what is left to admit here.

        When every batch is new and allowed, the worker's record is written as it is; otherwise it is
        cut down to the new ones (a backlog resent after an outage holds many batches already
        stored). The envelopes the worker refused are left to :meth:`_admit_here`, which finds out
        why.
        """
        assert self._workers is not None
        bodies = [call.items[i][1] for i in indexes]
        prepared = self._workers.prepare(tenant, call.transport, bodies, utc_now_us())
        rec = _record_of(prepared, tenant) if prepared is not None else None
        if prepared is None or rec is None:
            self.metrics.worker_groups.labels("unavailable").inc()
            return indexes
        left: list[int] = []
        fresh: list[tuple[int, Key, Head]] = []
        keep: list[bool] = []  # per part of the worker's record: is its batch new here
        try:
            for i, head in zip(indexes, prepared.heads, strict=True):
                if head is None:
                    left.append(i)
                    continue
                key = self._reserve(call, i, head.gateway, head.site, head.batch)
                keep.append(key is not None)
                if key is not None:
                    fresh.append((i, key, head))
        except BaseException as exc:  # the claims made so far must not outlive this call
            self._fail([(i, key) for i, key, _ in fresh], exc, call)
            raise
        group = [(i, key) for i, key, _ in fresh]
        outcomes = [Outcome(h.accepted, h.rejected, False, h.errors) for _, _, h in fresh]
        if fresh and all(keep):
            self.metrics.worker_groups.labels("prepared").inc()
            self._write(tenant, group, prepared.payload, rec.parts, rec.good, outcomes, call)
            return left
        self.metrics.worker_groups.labels("trimmed").inc()
        if fresh:
            try:
                payload = records.encode(_trimmed(rec, [h for h in prepared.heads if h is not None], keep))
                # Read back, so what is kept (the live buffer) holds the new batches' readings only,
                # not views into the whole group's.
                trimmed = records.decode(payload)
            except BaseException as exc:  # the claims must not outlive this call
                self._fail(group, exc, call)
                if not isinstance(exc, Exception):
                    raise
                return left
            self._write(tenant, group, payload, trimmed.parts, trimmed.good, outcomes, call)
        return left

    def _after_other(
        self,
        on_done: Callable[[int, Outcome | BaseException], None],
        i: int,
        transport: str,
        other: Future[None],
    ) -> None:
        """Answer a batch that arrived while the same batch was being written: a duplicate, or its error."""
        error = other.exception()
        on_done(i, error if error is not None else self._duplicate(transport))

    def _write_group(self, tenant: str, group: list[tuple[int, Key, Decoded]], call: _Call) -> None:
        """Check one tenant's new batches, append them as one log record, answer each once durable."""
        try:
            ingest = self.settings.ingest
            now = utc_now_us()
            checked = check_many(
                [decoded for _, _, decoded in group],
                now_us=now,
                max_future_s=float(ingest.max_future_s),
                max_errors=int(ingest.max_errors),
                received_at_us=now,
                transport=call.transport,
            )
            parts = [
                records.Part(decoded.gateway, decoded.site, decoded.batch, one.accepted)
                for (_, _, decoded), one in zip(group, checked.items, strict=True)
            ]
            rec = records.Record(tenant, call.transport, now, parts, checked.good, checked.quarantine)
            payload = records.encode(rec)
        except BaseException as exc:
            self._fail([(i, key) for i, key, _ in group], exc, call)
            if not isinstance(exc, Exception):
                raise
            return
        outcomes = [Outcome(one.accepted, one.rejected, False, one.errors) for one in checked.items]
        self._write(tenant, [(i, key) for i, key, _ in group], payload, parts, checked.good, outcomes, call)

    def _fail(self, group: list[tuple[int, Key]], error: BaseException, call: _Call) -> None:
        """Release the claims of batches that will not be written; answer each with ``error``."""
        for _, key in group:
            self.ledger.release(key, error)
        if not isinstance(error, Exception):
            return
        for i, _ in group:
            try:
                call.on_done(i, error)
            except Exception:  # one answer that cannot be given must not keep the others back
                log.exception("ingest: batch %d of a group could not be answered", i)

    def _write(
        self,
        tenant: str,
        group: list[tuple[int, Key]],
        payload: bytes,
        parts: list[records.Part],
        good: pa.Table,
        outcomes: list[Outcome],
        call: _Call,
    ) -> None:
        """Append one record of new batches; once it is durable, commit, publish and answer each."""

        def finish(f: Future[None]) -> None:
            error = f.exception()
            if error is not None:
                self._fail(group, error, call)
                return
            self.ledger.commit_many([key for _, key in group])
            sites = {part.site for part in parts}
            if len(sites) == 1:
                runs = [(part.gateway, part.batch, part.rows) for part in parts]
                self.health.batches(tenant, parts[0].site, runs, good)
                self._publish(tenant, parts[0].site, good)
            else:
                offset = 0
                for (_, key), part in zip(group, parts, strict=True):
                    own = good.slice(offset, part.rows)
                    offset += part.rows
                    self.health.batch(*key, part.site, own)
                    self._publish(tenant, part.site, own)
            self._count(outcomes, call.transport, call.started)
            for (i, _), outcome in zip(group, outcomes, strict=True):
                call.on_done(i, outcome)

        try:
            # Given to the log with the record, so the keys are committed on the log's thread before
            # it can close the segment: a checkpoint taken once the segment is flushed holds them.
            self._append(payload, on_written=finish)
        except BaseException as exc:
            self._fail(group, exc, call)
            if not isinstance(exc, Exception):
                raise

    def _count(self, outcomes: list[Outcome], transport: str, started: float) -> None:
        accepted = sum(one.accepted for one in outcomes)
        rejected = sum(one.rejected for one in outcomes)
        self.metrics.readings_accepted.labels(transport).inc(accepted)
        if rejected:
            self.metrics.readings_rejected.labels(transport).inc(rejected)
        self.metrics.batches.labels(transport, "stored").inc(len(outcomes))
        seconds = time.perf_counter() - started
        observe = self.metrics.ack_seconds.labels(transport).observe
        for _ in outcomes:
            observe(seconds)

    def heartbeat(self, tenant: str, beat: dict[str, Any], *, may_register: bool = True) -> int | None:
        """Keep a checked heartbeat as the gateway's latest state; returns the highest batch number of
        the gateway held or begun to be written (None: none), which a new outbox numbers its batches after."""
        self._check_gateway(tenant, beat["gateway"], beat["site"], may_register=may_register)
        self.store.record_heartbeat(tenant, beat["gateway"], beat)
        self.health.heartbeat(tenant, beat)
        return self.ledger.last(tenant, beat["gateway"])

    def quarantine_message(
        self, tenant: str, payload: bytes, reason: str, transport: str, topic: str | None = None
    ) -> Future[None]:
        """Keep a message that could not be decoded, with the reason; durable once the future completes."""
        now = utc_now_us()
        table = whole_message(payload, reason, received_at_us=now, transport=transport, topic=topic)
        rec = records.Record(tenant, transport, now, [], empty_table(WAL_SCHEMA), table)
        self.metrics.messages_quarantined.labels(transport).inc()
        return self._append(records.encode(rec))

"""The gateway's store-and-forward buffer: a durable SQLite (WAL) queue of readings and batches.

Readings enter as *pending* chunks (one per source read, Arrow IPC, fsynced) and count as sampled
only once they are committed. Pending readings are then cut into *batches*: each batch gets the
next sequence number of the gateway and its ready-to-send envelope (gzip-compressed columnar JSON)
in the same transaction, so a batch number, once given, always means the same readings, and a
batch re-sent after a restart is a duplicate the server recognises. Batches leave in sequence
order; an acknowledged batch is deleted.

The buffer is bounded in bytes. When new readings would pass the limit, the oldest batches are
dropped and their readings counted in ``dropped``. A dropped batch keeps its number as an empty
*tombstone*, sent like any batch, so the server's sequence has no gap that will never close; the
loss itself is reported by the ``dropped`` count in heartbeats and metrics.

A new outbox's batch numbers are *provisional* until the server has said which numbers of this
gateway it already holds (a gateway rebuilt or given a new disk under a known id): before its first
send, :meth:`Outbox.fix_numbering` moves every batch past the server's last one, re-encoding the
envelopes, so its readings are not taken for duplicates of the old ones. Nothing has been sent by
then, so a number still always means the same readings to the server.

Counters live in the same database as the data they count and change in the same transactions, so
they are exact across restarts and ``kill -9``: the lake ends up holding ``sampled - dropped``
readings, minus what was dead-lettered.

Two connections: the sampler's commits are fully synchronous (a sampled reading survives a power
cut); the uplink's commits (acknowledgements) are not, because losing one only means re-sending a
batch the server will answer as a duplicate.
"""

from __future__ import annotations

import dataclasses
import gzip
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from ironwatch.errors import ConfigError, IronwatchError
from ironwatch.gateway.source import SAMPLE_SCHEMA

COUNTERS = ("sampled", "acknowledged", "dropped", "dead_lettered")
_IPC_OPTIONS = ipc.IpcWriteOptions(compression="zstd")
_GZIP_LEVEL = 5
#: Batches re-encoded per transaction while a new outbox moves its numbers (~0.1 s of work).
_MOVE_CHUNK = 32
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pending (
    id INTEGER PRIMARY KEY, readings INTEGER NOT NULL, first_ts_ms INTEGER, sampled_at_ms INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY, readings INTEGER NOT NULL, first_ts_ms INTEGER, size_bytes INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, is_tombstone INTEGER NOT NULL DEFAULT 0, payload BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS batches_with_readings ON batches (seq) WHERE is_tombstone = 0;
"""


class OutboxError(IronwatchError):
    """The outbox file cannot be used (another gateway's file, a broken database)."""

    code = "outbox"


@dataclasses.dataclass(frozen=True)
class Batch:
    """One formed batch, ready to send: ``payload`` is the gzip-encoded envelope."""

    seq: int
    readings: int
    first_ts_ms: int | None
    attempts: int
    is_tombstone: bool
    payload: bytes


@dataclasses.dataclass(frozen=True)
class Counts:
    """What the outbox has seen, in readings (``batches`` is how many batches wait to be sent)."""

    sampled: int
    sent: int
    acknowledged: int
    buffered: int
    dropped: int
    dead_lettered: int
    batches: int
    buffer_bytes: int
    oldest_buffered_ms: int | None
    last_batch: int

    def to_dict(self) -> dict[str, Any]:
        """The counts as a JSON-ready dict."""
        return dataclasses.asdict(self)


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


def encode_sample(table: pa.Table) -> bytes:
    """Arrow IPC bytes of one chunk of readings."""
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, SAMPLE_SCHEMA, options=_IPC_OPTIONS) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def decode_sample(data: bytes) -> pa.Table:
    """The readings of :func:`encode_sample` bytes."""
    return ipc.open_stream(data).read_all()


def envelope(gateway: str, site: str, seq: int, table: pa.Table) -> bytes:
    """The gzip-encoded columnar batch envelope of ARCHITECTURE.md for ``table``'s readings."""
    doc = {
        "gateway": gateway,
        "site": site,
        "batch": seq,
        "columns": {
            "ts": table.column("ts_ms").to_numpy(),
            "sensor": table.column("sensor").to_pylist(),
            "metric": table.column("metric").to_pylist(),
            "value": table.column("value").to_numpy(),
        },
    }
    return _gzip_json(doc)


def renumbered(payload: bytes, seq: int) -> bytes:
    """A gzip-encoded envelope with its batch number changed to ``seq``."""
    doc = orjson.loads(gzip.decompress(payload))
    doc["batch"] = seq
    return _gzip_json(doc)


def _gzip_json(doc: dict[str, Any]) -> bytes:
    return gzip.compress(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), _GZIP_LEVEL, mtime=0)


class Outbox:
    """The durable queue of one gateway; safe to use from the sampler and uplink threads at once."""

    def __init__(self, path: Path, *, gateway: str, site: str, max_bytes: int) -> None:
        self.path = path
        self.gateway = gateway
        self.site = site
        self.max_bytes = max_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._size_bytes, self._pending_readings = 0, 0
        self._pending_since_ms: int | None = None
        #: What :func:`_numbering` says of the file, as of the last committed transaction.
        self._numbering_state = "fixed"
        try:
            self._writer = _connect(path, "FULL")
            self._writer.executescript(_SCHEMA)
            self._acker = _connect(path, "NORMAL")
            self._claim_identity()
            self._pending_readings, self._pending_since_ms = self._writer.execute(
                "SELECT coalesce(sum(readings), 0), min(sampled_at_ms) FROM pending"
            ).fetchone()
            self._size_bytes = self._stored_bytes()
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox {path}: {exc}") from exc

    def _claim_identity(self) -> None:
        # Batch numbers belong to one gateway: the file of another one would send its numbers
        # under this gateway's name, and the server would take them as duplicates.
        with self._transaction(self._writer) as conn:
            rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if not rows:
                conn.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [("gateway", self.gateway), ("site", self.site), ("numbering", "provisional")],
                )
                conn.executemany("INSERT INTO counters VALUES (?, 0)", [(name,) for name in COUNTERS])
                conn.execute("INSERT INTO counters VALUES ('next_seq', 1)")
            elif (rows.get("gateway"), rows.get("site")) != (self.gateway, self.site):
                raise OutboxError(
                    f"outbox {self.path} belongs to gateway {rows.get('gateway')} of site "
                    f"{rows.get('site')}, not {self.gateway} of {self.site}: give this gateway its own "
                    "buffer.path (its batch numbers are the other gateway's, and its readings would be "
                    "sent under the wrong name)"
                )
            # Outboxes made before numbers could be provisional have sent theirs already.
            self._numbering_state = "provisional" if not rows else str(rows.get("numbering", "fixed"))

    def _transaction(self, conn: sqlite3.Connection) -> _Transaction:
        return _Transaction(conn, self)

    def _stored_bytes(self) -> int:
        row = self._writer.execute(
            "SELECT (SELECT coalesce(sum(size_bytes), 0) FROM pending)"
            " + (SELECT coalesce(sum(size_bytes), 0) FROM batches)"
        ).fetchone()
        return int(row[0])

    # -- sampling ----------------------------------------------------------------------------------

    def add(self, table: pa.Table, now_ms: int | None = None, *, note: tuple[str, str] | None = None) -> int:
        """Store readings durably; they count as sampled when this returns. Returns how many.

        ``note`` is a (key, value) saved in the same transaction (a backfill's progress), so it
        can never disagree with the readings stored.
        """
        n = int(table.num_rows)
        if n == 0:
            return 0
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        data = encode_sample(table.select(SAMPLE_SCHEMA.names).cast(SAMPLE_SCHEMA))
        first_ts = pc.min(table.column("ts_ms")).as_py()
        with self._transaction(self._writer) as conn:
            self._make_room(conn, len(data))
            conn.execute(
                "INSERT INTO pending (readings, first_ts_ms, sampled_at_ms, size_bytes, data)"
                " VALUES (?, ?, ?, ?, ?)",
                (n, first_ts, now_ms, len(data), data),
            )
            _bump(conn, "sampled", n)
            if note is not None:
                conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", note)
            self._size_bytes += len(data)
            self._pending_readings += n
            if self._pending_since_ms is None:
                self._pending_since_ms = now_ms
        return n

    def form_batches(self, max_readings: int, max_age_s: float, now_ms: int | None = None) -> int:
        """Cut pending readings into batches of ``max_readings``; a smaller rest waits ``max_age_s``.

        Returns how many batches were formed.
        """
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        if self._pending_readings == 0:
            return 0
        is_due = self._pending_since_ms is not None and now_ms - self._pending_since_ms >= max_age_s * 1000
        if self._pending_readings < max_readings and not is_due:
            return 0
        with self._transaction(self._writer) as conn:
            rows = conn.execute(
                "SELECT id, data, sampled_at_ms, size_bytes FROM pending ORDER BY id"
            ).fetchall()
            size_bytes = self._size_bytes - sum(r[3] for r in rows)
            table = pa.concat_tables([decode_sample(r[1]) for r in rows])
            table = table.sort_by([("ts_ms", "ascending")])
            seq = _counter(conn, "next_seq")
            formed, start = 0, 0
            while table.num_rows - start >= max_readings or (is_due and start < table.num_rows):
                part = table.slice(start, max_readings)
                size_bytes += self._insert_batch(conn, seq + formed, part)
                start += part.num_rows
                formed += 1
            conn.execute("DELETE FROM pending")
            rest = table.slice(start)
            if rest.num_rows:
                data = encode_sample(rest)
                since = min(r[2] for r in rows)
                conn.execute(
                    "INSERT INTO pending (readings, first_ts_ms, sampled_at_ms, size_bytes, data)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (rest.num_rows, pc.min(rest.column("ts_ms")).as_py(), since, len(data), data),
                )
                size_bytes += len(data)
            _bump(conn, "next_seq", formed)
            # Inside the transaction, under the lock: what another thread's failed transaction puts
            # back is then never older than this.
            self._size_bytes = size_bytes
            self._pending_readings = rest.num_rows
            self._pending_since_ms = since if rest.num_rows else None
        return formed

    def _insert_batch(self, conn: sqlite3.Connection, seq: int, table: pa.Table) -> int:
        payload = envelope(self.gateway, self.site, seq, table)
        first = pc.min(table.column("ts_ms")).as_py()
        conn.execute(
            "INSERT INTO batches (seq, readings, first_ts_ms, size_bytes, payload) VALUES (?, ?, ?, ?, ?)",
            (seq, table.num_rows, first, len(payload), payload),
        )
        return len(payload)

    def _make_room(self, conn: sqlite3.Connection, incoming_bytes: int) -> None:
        # Called inside the sampler's transaction: drop the oldest batches until the new chunk fits.
        # A tombstone keeps the dropped batch's number so that the server's sequence stays whole.
        if self._size_bytes + incoming_bytes <= self.max_bytes:
            return
        while self._size_bytes + incoming_bytes > self.max_bytes:
            row = conn.execute(
                "SELECT seq, readings, size_bytes FROM batches WHERE is_tombstone = 0 ORDER BY seq LIMIT 1"
            ).fetchone()
            if row is None:
                break
            seq, readings, size = row
            tomb = envelope(self.gateway, self.site, seq, SAMPLE_SCHEMA.empty_table())
            conn.execute(
                "UPDATE batches SET readings = 0, first_ts_ms = NULL, size_bytes = ?, is_tombstone = 1,"
                " payload = ? WHERE seq = ?",
                (len(tomb), tomb, seq),
            )
            _bump(conn, "dropped", readings)
            self._size_bytes += len(tomb) - size
        if self._size_bytes + incoming_bytes > self.max_bytes:
            # Only pending readings are left: drop the oldest chunks of them.
            for chunk_id, readings, size in conn.execute(
                "SELECT id, readings, size_bytes FROM pending ORDER BY id"
            ).fetchall():
                if self._size_bytes + incoming_bytes <= self.max_bytes:
                    break
                conn.execute("DELETE FROM pending WHERE id = ?", (chunk_id,))
                _bump(conn, "dropped", readings)
                self._size_bytes -= size
                self._pending_readings -= readings

    # -- sending -----------------------------------------------------------------------------------

    @property
    def numbering_is_provisional(self) -> bool:
        """True while this new outbox's numbers are not settled: it has not yet heard which batch
        numbers the server holds, or it is still moving its batches past them."""
        return self._numbering_state != "fixed"

    @property
    def numbering_is_moving(self) -> bool:
        """True when the move past the server's numbers was decided but not finished (a restart
        in between): :meth:`fix_numbering` finishes it whatever the server says now."""
        return self._numbering_state.startswith("moving:")

    def fix_numbering(self, server_last: int | None) -> int:
        """Number the batches after ``server_last``, the highest batch of this gateway the server
        holds (None: it holds none), and keep the numbers from now on; returns how far they moved.

        Only a provisional outbox moves its numbers, and only while none of its batches was sent.
        New numbers are given at once (later batches get theirs); the stored envelopes are then
        re-encoded a few batches per transaction, so sampling waits for a moment at most, and a
        restart in between finishes the same move.
        """
        shift = self._plan_move(server_last)
        while self._move_some():
            pass
        return shift

    def _plan_move(self, server_last: int | None) -> int:
        # The state is read from the file inside each transaction: it is the truth, also for two
        # threads at once and after a crash; the attribute follows it (put back on a rollback).
        with self._transaction(self._writer) as conn:
            state = _numbering(conn)
            move = _move_of(state)
            shift = move[0] if move is not None else 0
            if state == "provisional":
                if server_last is not None:
                    first, attempted = conn.execute(
                        "SELECT min(seq), coalesce(max(attempts), 0) FROM batches"
                    ).fetchone()
                    first = _counter(conn, "next_seq") if first is None else first
                    shift = max(0, server_last + 1 - first) if not attempted else 0
                if shift:
                    below = _counter(conn, "next_seq")  # batches below it carry the old numbers
                    _bump(conn, "next_seq", shift)
                    state = f"moving:{shift}:{below}"
                else:
                    state = "fixed"
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('numbering', ?)", (state,))
            self._numbering_state = state
        return shift

    def _move_some(self) -> bool:
        """Move the next few batches; False once every batch carries its new number."""
        with self._transaction(self._writer) as conn:
            state = _numbering(conn)
            move = _move_of(state)
            if move is not None:
                shift, below = move
                # From the highest old number down, so a moved batch never meets one not yet moved.
                rows = conn.execute(
                    "SELECT seq, payload FROM batches WHERE seq < ? ORDER BY seq DESC LIMIT ?",
                    (below, _MOVE_CHUNK),
                ).fetchall()
                for seq, payload in rows:
                    moved = renumbered(bytes(payload), seq + shift)
                    conn.execute(
                        "UPDATE batches SET seq = ?, payload = ?, size_bytes = ? WHERE seq = ?",
                        (seq + shift, moved, len(moved), seq),
                    )
                    self._size_bytes += len(moved) - len(payload)  # put back if this rolls back
                state = f"moving:{shift}:{rows[-1][0]}" if len(rows) == _MOVE_CHUNK else "fixed"
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('numbering', ?)", (state,))
            self._numbering_state = state
        return state.startswith("moving:")

    def next_batches(self, limit: int = 1, after_seq: int = 0) -> list[Batch]:
        """The oldest batches waiting to be sent (after ``after_seq``), in sequence order."""
        with self._lock:  # a connection serves one thread at a time (see counts)
            rows = self._acker.execute(
                "SELECT seq, readings, first_ts_ms, attempts, is_tombstone, payload FROM batches"
                " WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [Batch(r[0], r[1], r[2], r[3], bool(r[4]), bytes(r[5])) for r in rows]

    def mark_attempted(self, batch: Batch) -> None:
        """Record that a batch was sent without an answer (it counts as sent from now on)."""
        with self._transaction(self._acker) as conn:
            conn.execute("UPDATE batches SET attempts = attempts + 1 WHERE seq = ?", (batch.seq,))

    def acknowledge(self, batches: list[Batch]) -> None:
        """The server holds these batches durably: forget them."""
        self._finish(batches, "acknowledged")

    def dead_letter(self, batches: list[Batch]) -> None:
        """The server refused these batches for good (their answers are in the dead-letter file)."""
        self._finish(batches, "dead_lettered")

    def _finish(self, batches: list[Batch], counter: str) -> None:
        if not batches:
            return
        with self._transaction(self._acker) as conn:
            for batch in batches:
                row = conn.execute(
                    "SELECT size_bytes, is_tombstone FROM batches WHERE seq = ?", (batch.seq,)
                ).fetchone()
                if row is None:
                    continue
                conn.execute("DELETE FROM batches WHERE seq = ?", (batch.seq,))
                _bump(conn, counter, batch.readings)
                if row[1] and not batch.is_tombstone:
                    # The buffer dropped this batch while its full payload was on its way: the
                    # server has the readings after all, so they are not dropped.
                    _bump(conn, "dropped", -batch.readings)
                self._size_bytes -= int(row[0])

    def note(self, key: str) -> str | None:
        """A value saved with :meth:`add` or :meth:`set_note`."""
        with self._lock:
            row = self._acker.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_note(self, key: str, value: str) -> None:
        """Save a value durably."""
        with self._transaction(self._writer) as conn:
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- reading the state -------------------------------------------------------------------------

    def counts(self) -> Counts:
        """Exact counts from the database (also while another process runs the gateway)."""
        try:
            # The heartbeat, status and metrics threads read while the sender uses the same
            # connection: sharing one between threads at once breaks its statements ("another row
            # available") and can start a write on a stale snapshot ("database is locked").
            with self._lock:
                return self._counts()
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox {self.path}: {exc}") from exc

    def _counts(self) -> Counts:
        conn = self._acker
        counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
        batches, batched, attempted, batch_bytes, oldest_batch = conn.execute(
            "SELECT count(*), coalesce(sum(readings), 0),"
            " coalesce(sum(CASE WHEN attempts > 0 THEN readings ELSE 0 END), 0),"
            " coalesce(sum(size_bytes), 0), min(first_ts_ms) FROM batches"
        ).fetchone()
        pending, pending_bytes, oldest_pending = conn.execute(
            "SELECT coalesce(sum(readings), 0), coalesce(sum(size_bytes), 0), min(first_ts_ms) FROM pending"
        ).fetchone()
        oldest = [t for t in (oldest_batch, oldest_pending) if t is not None]
        return Counts(
            sampled=counters["sampled"],
            sent=counters["acknowledged"] + counters["dead_lettered"] + attempted,
            acknowledged=counters["acknowledged"],
            buffered=batched + pending,
            dropped=counters["dropped"],
            dead_lettered=counters["dead_lettered"],
            batches=batches,
            buffer_bytes=batch_bytes + pending_bytes,
            oldest_buffered_ms=min(oldest) if oldest else None,
            last_batch=counters["next_seq"] - 1,
        )

    @property
    def size_bytes(self) -> int:
        """Bytes of readings and batches held now."""
        return self._size_bytes

    def close(self) -> None:
        """Close both connections."""
        self._writer.close()
        self._acker.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK``) under the outbox's lock. What the outbox
    keeps in memory about the file (its size, the pending readings, the numbering's state) is put
    back when the transaction does not commit, so it never disagrees with the file (a full disk)."""

    def __init__(self, conn: sqlite3.Connection, outbox: Outbox) -> None:
        self.conn = conn
        self.outbox = outbox
        self.saved: tuple[int, int, int | None, str] = (0, 0, None, "")

    def __enter__(self) -> sqlite3.Connection:
        self.outbox._lock.acquire()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.outbox._lock.release()
            raise
        box = self.outbox
        self.saved = (box._size_bytes, box._pending_readings, box._pending_since_ms, box._numbering_state)
        return self.conn

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        try:
            if kind is None:
                try:
                    self.conn.execute("COMMIT")
                    return
                except BaseException:
                    self._undo()
                    raise
            self._undo()
        finally:
            self.outbox._lock.release()

    def _undo(self) -> None:
        box = self.outbox
        box._size_bytes, box._pending_readings, box._pending_since_ms, box._numbering_state = self.saved
        if self.conn.in_transaction:  # a failed COMMIT may have ended it already
            self.conn.execute("ROLLBACK")


def _bump(conn: sqlite3.Connection, name: str, by: int) -> None:
    conn.execute("UPDATE counters SET value = value + ? WHERE name = ?", (by, name))


def _move_of(state: str) -> tuple[int, int] | None:
    """``(shift, below)`` of a ``moving:{shift}:{below}`` numbering state; None for any other."""
    if not state.startswith("moving:"):
        return None
    shift, below = state.split(":")[1:]
    return int(shift), int(below)


def _numbering(conn: sqlite3.Connection) -> str:
    """``provisional``, ``moving:{shift}:{below}`` or ``fixed`` (outboxes older than the field)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'numbering'").fetchone()
    return "fixed" if row is None else str(row[0])


def _counter(conn: sqlite3.Connection, name: str) -> int:
    row = conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
    return int(row[0])


def identity(path: Path) -> tuple[str, str]:
    """The ``(gateway, site)`` an existing outbox belongs to, read without changing the file."""
    if not path.is_file():
        raise OutboxError(f"outbox {path} does not exist")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
        try:
            rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise OutboxError(f"{path} is not a gateway outbox: {exc}") from exc
    if not rows.get("gateway") or not rows.get("site"):
        raise OutboxError(f"{path} is not a gateway outbox: it names no gateway")
    return str(rows["gateway"]), str(rows["site"])


def open_outbox(path: Path, *, gateway: str, site: str, max_bytes: int) -> Outbox:
    """Open (or create) the outbox at ``path``; ``max_bytes`` must leave room for a few batches."""
    if max_bytes < 1 << 20:
        raise ConfigError("buffer.max_bytes", f"{max_bytes} is too small (at least 1048576)")
    return Outbox(path, gateway=gateway, site=site, max_bytes=max_bytes)

"""The compaction journal: which raw files (and their rollup partials) readers may see.

Compacting an hour replaces many raw files by one. Storage roots have no transactions and, on object
stores, no rename, so the switch is made visible through a small journal entry per compaction in
``compaction/{site}/{date}-{HH}-{id}.{state}.json`` that lists the old file names and the new one:

- ``pending``: the new file is being written and checked; readers ignore it.
- ``committed``: the new file is complete and verified; readers ignore the old files, which are
  moved to ``retired/`` once no query that listed them before the commit can still be reading them.
- ``retired``: the old files are gone from ``readings/``; the entry stays while they are kept in
  ``retired/{id}/`` and is removed with them.
- ``aborted``: the compaction was rolled back; the new file was deleted while the entry was pending.

A state change writes the entry under its new name before removing the old one, and every name is
kept until the retention period is over, so two listings of the journal with the same names prove
that no switch happened in between. :func:`visible_files` lists a folder between two such listings,
which makes the switch atomic for every reader that lists files through it: it sees either all old
files or the new one, never both and never neither.
"""

from __future__ import annotations

import builtins
import dataclasses
import re
from typing import Any

import orjson

from ironwatch.errors import NotFound, StorageError
from ironwatch.lake.root import Root

FOLDER = "compaction"
STATES = ("pending", "committed", "retired", "aborted")
_NAME = re.compile(r"(\d{4}-\d\d-\d\d)-(\d\d)-([0-9a-f]+)\.(pending|committed|retired|aborted)\.json$")
#: Attempts at a listing that no journal change overlaps before giving up.
SNAPSHOT_ATTEMPTS = 20


@dataclasses.dataclass(frozen=True)
class Entry:
    """One compaction of the raw files of ``site``, ``date`` (YYYY-MM-DD) and ``hour`` (0-23)."""

    id: str
    site: str
    date: str
    hour: int
    old: tuple[str, ...]
    new: str
    rows: int = 0
    checksum: str = ""
    created_us: int = 0
    committed_us: int = 0
    retired_us: int = 0

    @property
    def folder(self) -> str:
        """The partition path below a kind's prefix: ``site=S/date=D/hour=HH``."""
        return f"site={self.site}/date={self.date}/hour={self.hour:02d}"

    def path(self, state: str) -> str:
        """Where this entry is kept in ``state``."""
        return f"{FOLDER}/{self.site}/{self.date}-{self.hour:02d}-{self.id}.{state}.json"

    def to_json(self) -> bytes:
        return orjson.dumps({**dataclasses.asdict(self), "old": list(self.old)})

    @classmethod
    def from_json(cls, data: bytes) -> Entry:
        doc: dict[str, Any] = orjson.loads(data)
        return cls(**{**doc, "old": tuple(doc["old"])})


def key_of(path: str) -> tuple[str, str, int, str] | None:
    """``(site, date, hour, name)`` of a raw or partial file path, ``None`` for any other path."""
    parts = path.split("/")
    if len(parts) < 4 or not parts[-1].endswith(".parquet"):
        return None
    found = dict(p.split("=", 1) for p in parts[1:-1] if "=" in p)
    try:
        return found["site"], found["date"], int(found["hour"]), parts[-1][: -len(".parquet")]
    except (KeyError, ValueError):
        return None


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The journal's states at one moment: ``{id: state}`` and the entries that hide files."""

    states: dict[str, str]
    names: tuple[str, ...]

    def entries(self, root: Root, *states: str) -> builtins.list[tuple[str, Entry]]:
        """The entries in one of ``states`` (read from the root), with their state."""
        out = []
        for path in self.names:
            match = _NAME.search(path)
            if match and match[4] in states and self.states.get(match[3]) == match[4]:
                out.append((match[4], Entry.from_json(root.read(path))))
        return out


def snapshot(root: Root) -> Snapshot:
    """The current journal; an id written under two names (a state change under way) counts once."""
    names = tuple(root.list(FOLDER))
    states: dict[str, str] = {}
    for path in names:
        match = _NAME.search(path)
        if match:
            ident, state = match[3], match[4]
            if ident not in states or STATES.index(state) > STATES.index(states[ident]):
                states[ident] = state
    return Snapshot(states, names)


def write(root: Root, entry: Entry, state: str, before: str | None = None) -> None:
    """Record ``entry`` in ``state``; the entry's name for state ``before`` is removed afterwards."""
    root.write(entry.path(state), entry.to_json())
    if before is not None:
        root.delete(entry.path(before))


def remove(root: Root, entry: Entry) -> None:
    """Forget an entry in every state (at the end of the retention period)."""
    for state in STATES:
        root.delete(entry.path(state))


def hidden(root: Root, snap: Snapshot) -> set[tuple[str, str, int, str]]:
    """Keys of the files readers must not see: new files of pending entries, old files of committed ones."""
    out: set[tuple[str, str, int, str]] = set()
    for state, entry in snap.entries(root, "pending", "committed"):
        names = (entry.new,) if state == "pending" else entry.old
        out.update((entry.site, entry.date, entry.hour, name) for name in names)
    return out


def visible_files(root: Root, prefix: str) -> list[str]:
    """The Parquet files under ``prefix`` a reader may see now (raw, rollup or any other folder).

    Every reader that lists lake folders itself goes through here, so that a compaction switches
    what it sees from the old files to the new one in one step.
    """
    for _ in range(SNAPSHOT_ATTEMPTS):
        before = snapshot(root)
        files = [p for p in root.list(prefix) if p.endswith(".parquet")]
        after = snapshot(root)
        if before.names != after.names:
            continue
        if not after.states:
            return files
        try:
            hide = hidden(root, after)
        except NotFound:
            continue  # an entry moved on to its next state since the listing
        return [p for p in files if key_of(p) not in hide]
    raise StorageError(f"the compaction journal of {root.url} kept changing while listing {prefix}")


def compacted_names(root: Root, site: str, date: str, hour: int) -> set[str]:
    """Names of raw files of one hour that a committed or retired compaction has replaced.

    The flusher checks this before writing a raw file again after a crash, so that a log segment
    replayed after its readings were compacted does not bring them back a second time.
    """
    for _ in range(SNAPSHOT_ATTEMPTS):
        out: set[str] = set()
        try:
            for path in root.list(f"{FOLDER}/{site}"):
                match = _NAME.search(path)
                if (
                    match
                    and match[1] == date
                    and int(match[2]) == hour
                    and match[4] in ("committed", "retired")
                ):
                    out.update(Entry.from_json(root.read(path)).old)
        except NotFound:
            continue  # moved on to its next state since the listing; list again
        return out
    raise StorageError(f"the compaction journal of {root.url} kept changing while reading it")

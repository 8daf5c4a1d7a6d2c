"""Running compaction: one lock per data directory, and the server's background thread.

The server compacts in a thread of its own at low CPU priority, one site-hour at a time; ``ironwatch
compact`` runs the same passes on demand. Both take an exclusive lock on ``compaction.lock`` in the
data directory, so two compactions never work on the same lake at once, and a pending journal entry
found while holding the lock is known to be left over from a crash.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ironwatch.errors import Conflict, InvalidInput, IronwatchError
from ironwatch.lake import compaction
from ironwatch.lake.root import Root
from ironwatch.model import utc_now_us

log = logging.getLogger(__name__)


def lock_path(data_dir: Path) -> Path:
    """The compaction lock of a data directory."""
    return data_dir / "compaction.lock"


def scratch_dir(data_dir: Path) -> Path:
    """Where compactions spill sorted runs (removed after each compaction)."""
    return data_dir / "tmp"


@contextlib.contextmanager
def locked(path: Path, *, wait: bool) -> Iterator[None]:
    """Hold the compaction lock of a data directory; :class:`Conflict` if busy and not ``wait``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise Conflict(f"a compaction is already running on {path.parent}") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


def pause_at(step: str) -> compaction.Pause:
    """A pause hook that stops the process at ``step`` until it is killed (for crash tests).

    It prints ``compaction paused at STEP`` on stderr first, so a test knows when to kill.
    """
    if step not in compaction.STEPS:
        raise InvalidInput("--pause-at", f"{step!r} is not one of {', '.join(compaction.STEPS)}")

    def pause(reached: str) -> None:
        if reached == step:
            print(f"compaction paused at {step}", file=sys.stderr, flush=True)
            while True:
                time.sleep(3600)

    return pause


class Compactor:
    """A background thread that compacts closed hours of every tenant root, one hour per step."""

    def __init__(
        self,
        roots: Callable[[], list[Root]],
        policy: compaction.Policy,
        *,
        data_dir: Path,
        interval_s: float = 60.0,
        clock: Callable[[], int] = utc_now_us,
    ) -> None:
        self._roots = roots
        self.policy = policy
        self.scratch = scratch_dir(data_dir)
        self.lock_path = lock_path(data_dir)
        self.interval_s = interval_s
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lake-compactor", daemon=True)
        self._failed: set[tuple[str, compaction.Hour]] = set()
        self._seen: dict[str, dict[compaction.Hour, tuple[list[str], int]]] = {}
        self.last_error: str | None = None
        self.hours_compacted = 0

    def start(self) -> None:
        """Start the thread; the first pass runs after one interval, when start-up work is done."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the step under way (a compaction is never left half done on purpose)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            # A niceness of its own: ingest and queries come first on a busy machine (Linux threads).
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        while not self._stop.wait(self.interval_s):
            while not self._stop.is_set() and self.step():
                pass

    def step(self) -> bool:
        """Tidy every root and compact at most one hour; whether an hour was compacted."""
        try:
            roots = self._roots()
        except IronwatchError as exc:
            self.last_error = f"listing tenants: {exc}"
            log.error("compactor: %s", self.last_error)
            return False
        for root in roots:
            if self._stop.is_set():
                return False
            try:
                with locked(self.lock_path, wait=False):
                    if self._step_root(root):
                        return True
            except Conflict:
                return False  # ironwatch compact is running; it does this work
            except (IronwatchError, OSError) as exc:
                self.last_error = f"compacting {root.url}: {exc}"
                log.error("compactor: %s", self.last_error)
        return False

    def _step_root(self, root: Root) -> bool:
        now = self._clock()
        compaction.tidy(root, self.policy, now_us=now)
        due = compaction.hours_to_compact(root, now, self.policy)
        # When each hour's files were first seen as they are: while a backlog still flows into an
        # hour, compacting it would rewrite the whole hour again and again, so wait one interval.
        before = self._seen.get(root.url, {})
        seen = {h: before[h] if h in before and before[h][0] == n else (n, now) for h, n in due.items()}
        self._seen[root.url] = seen
        for hour in due:
            if (root.url, hour) in self._failed or now - seen[hour][1] < self.interval_s * 1_000_000:
                continue
            try:
                entry = compaction.compact_hour(
                    root, hour, self.policy, self.scratch, now_us=now, stopping=self._stop.is_set
                )
            except compaction.VerificationFailed:
                self._failed.add((root.url, hour))  # rolled back; not again until the server restarts
                raise
            except compaction.Interrupted:
                return False
            if entry is not None:
                self.hours_compacted += 1
                return True
        return False

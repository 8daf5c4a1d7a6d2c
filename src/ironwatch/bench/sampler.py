"""Memory and CPU of a server's process tree, sampled in a background thread."""

from __future__ import annotations

import threading
import time

import psutil


def _pss_bytes(proc: psutil.Process) -> int:
    # smaps_rollup is cheap to read; psutil's memory_full_info walks every mapping.
    try:
        with open(f"/proc/{proc.pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def role(proc: psutil.Process, root: psutil.Process) -> str:
    """What a process of the tree is: the server, its lake writer, an ingest worker, or other."""
    if proc.pid == root.pid:
        return "server"
    try:
        line = " ".join(proc.cmdline())
    except psutil.Error:
        return "other"
    for module, name in (("ingest.lakewriter", "lake_writer"), ("ingest.workers", "ingest_worker")):
        if module in line:
            return name
    return "other"


class TreeSampler:
    """Peak RSS (and PSS) of a process and its descendants, every ``every_s`` seconds.

    ``peak_rss_by_role`` holds the peak of each kind of process on its own (the tree's peak is of
    the sum at one moment, so it is at most the sum of these).

    The sampler shares the machine with what it measures, so the costly parts are done less often:
    finding the tree's processes reads every process's ``/proc`` entry, and PSS makes the kernel walk
    each process's page tables (together ~7% of a core at 10 samples a second). Both are done every
    ``slow_every_s``; RSS, which costs one small read per process, at every sample.
    """

    def __init__(self, pid: int, every_s: float = 0.1, slow_every_s: float = 1.0) -> None:
        self.root = psutil.Process(pid)
        self.every_s = every_s
        self.slow_every_s = slow_every_s
        self._procs: list[psutil.Process] = []
        self._slow_at = -1.0
        self.peak_rss_bytes = 0
        self.peak_pss_bytes = 0
        self.peak_rss_by_role: dict[str, int] = {}
        self._roles: dict[int, str] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)

    def tree(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def sample(self) -> None:
        now = time.monotonic()
        slow = now - self._slow_at >= self.slow_every_s
        if slow:
            self._slow_at = now
            self._procs = self.tree()
        rss = pss = 0
        by_role: dict[str, int] = {}
        for proc in self._procs:
            try:
                one = proc.memory_info().rss
            except psutil.Error:
                continue
            rss += one
            if slow:
                pss += _pss_bytes(proc)
            name = self._roles.get(proc.pid)
            if name is None:
                name = self._roles[proc.pid] = role(proc, self.root)
            by_role[name] = by_role.get(name, 0) + one
        for name, one in by_role.items():
            self.peak_rss_by_role[name] = max(self.peak_rss_by_role.get(name, 0), one)
        self.peak_rss_bytes = max(self.peak_rss_bytes, rss)
        if slow:
            self.peak_pss_bytes = max(self.peak_pss_bytes, pss)
        self.samples += 1

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the tree has used so far, reaped children included."""
        total = 0.0
        for proc in self.tree():
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system + t.children_user + t.children_system
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every_s)

    def start(self) -> TreeSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

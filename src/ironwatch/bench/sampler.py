"""Memory and CPU of a server's process tree, sampled in a background thread."""

from __future__ import annotations

import threading

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


class TreeSampler:
    """Peak RSS (and PSS) of a process and its descendants, every ``every_s`` seconds."""

    def __init__(self, pid: int, every_s: float = 0.1) -> None:
        self.root = psutil.Process(pid)
        self.every_s = every_s
        self.peak_rss_bytes = 0
        self.peak_pss_bytes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)

    def tree(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def sample(self) -> None:
        rss = pss = 0
        for proc in self.tree():
            try:
                rss += proc.memory_info().rss
            except psutil.Error:
                continue
            pss += _pss_bytes(proc)
        self.peak_rss_bytes = max(self.peak_rss_bytes, rss)
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

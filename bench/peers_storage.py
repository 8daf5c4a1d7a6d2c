"""Bytes per reading of compacted raw files on the peers' workload (``../shared/bench/peers``).

    .venv/bin/python bench/peers_storage.py --minutes 60 --json

Generates ``--minutes`` of the peers' workload (550 sensors x 17 metrics at 1 Hz, its own values
function: sine plus noise rounded to 3 decimals) as its two client processes send it (two gateways,
time-major batches of 1000 readings), writes it to a temporary lake through the flusher's own writer
in segments of ``--flush-s`` seconds (raw files and rollup partials, as a server flushing every 10 s
would), then compacts it with ``ironwatch.lake.compaction`` and reports raw and compacted bytes per
reading, the compaction time and its peak memory. Every reading is checked to be there once.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from ironwatch import lake
from ironwatch.lake import compaction
from ironwatch.model import TS_TYPE

PEERS = Path(__file__).resolve().parents[2] / "shared" / "bench" / "peers" / "workload.py"


def peers_workload() -> object:
    spec = importlib.util.spec_from_file_location("peers_workload", PEERS)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {PEERS}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["peers_workload"] = module
    spec.loader.exec_module(module)
    return module


def segments(pw: object, minutes: int, flush_s: int) -> Iterator[pa.Table]:
    """The readings as the server would flush them: ``flush_s`` seconds of both gateways each."""
    wl = pw.Workload(readings=pw.N_SERIES * minutes * 60, start_ms=1_764_000_000_000 // 3_600_000 * 3_600_000)
    received = {}
    rng = np.random.default_rng(1124)  # network and server latency: random, to the microsecond
    metrics = np.array(pw.METRICS, dtype=object)
    for first in range(0, minutes * 60, flush_s):
        steps = np.arange(first, min(first + flush_s, minutes * 60), dtype=np.int64)
        step = np.repeat(steps, pw.N_SERIES)
        series = np.tile(np.arange(pw.N_SERIES, dtype=np.int64), len(steps))
        sensor = series // pw.N_METRICS
        gateway = (sensor >= 275).astype(np.int64)
        # Each client sends its half time-major in batches of 1000; a batch is received 20-80 ms
        # after its last reading was taken.
        width = 275 * pw.N_METRICS  # each client's share of one step
        position = step * width + (sensor - 275 * gateway) * pw.N_METRICS + series % pw.N_METRICS
        batch = position // 1000 + 1
        for g in (0, 1):
            for b in np.unique(batch[gateway == g]).tolist():
                if (g, b) not in received:
                    last_step = (b * 1000 - 1) // width
                    latency_us = int(rng.integers(20_000, 80_000))
                    received[(g, b)] = wl.start_ms * 1000 + last_step * 1_000_000 + latency_us
        recv = np.array([received[(g, b)] for g, b in zip(gateway.tolist(), batch.tolist(), strict=True)])
        yield (
            pa.table(
                {
                    "site": pa.array(np.full(len(step), "hall-a", dtype=object), pa.string()),
                    "ts": pa.array(wl.ts_ms(step) * 1000).cast(TS_TYPE),
                    "sensor": pa.array(np.array(pw.SENSORS, dtype=object)[sensor], pa.string()),
                    "metric": pa.array(metrics[series % pw.N_METRICS], pa.string()),
                    "value": pa.array(wl.values(step, series)),
                    "gateway": pa.array(np.array(["gw-0", "gw-1"], dtype=object)[gateway], pa.string()),
                    "batch": pa.array(batch),
                    "received_at": pa.array(recv).cast(TS_TYPE),
                }
            )
        )


def peak_rss_mib(stop: threading.Event, peak: list[float]) -> None:
    while not stop.wait(0.05):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    peak[0] = max(peak[0], int(line.split()[1]) / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--flush-s", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    pw = peers_workload()
    folder = Path(tempfile.mkdtemp(prefix="ironwatch-peers-storage-"))
    try:
        root = lake.open_root(str(folder / "lake"))
        print(f"[peers-storage] generating and flushing {args.minutes} min", file=sys.stderr, flush=True)
        readings = 0
        for seq, table in enumerate(segments(pw, args.minutes, args.flush_s)):
            lake.write_readings(root, table, f"w1-{seq:012d}")
            readings += table.num_rows

        def size() -> int:
            return sum((folder / "lake" / p).stat().st_size for p in lake.visible_files(root, "readings"))

        raw = size()
        stop, peak = threading.Event(), [0.0]
        sampler = threading.Thread(target=peak_rss_mib, args=(stop, peak), daemon=True)
        sampler.start()
        started = time.monotonic()
        report = compaction.run(root, compaction.Policy(grace_s=0), folder / "tmp", now_us=2**62)
        spent = time.monotonic() - started
        stop.set()
        stored = lake.query.run(root, "SELECT count(*) FROM readings").column(0)[0].as_py()
        if stored != readings:
            raise SystemExit(f"stored {stored} readings, not {readings}")
        result = {
            "readings": readings,
            "raw_files": report["files"],
            "raw_bytes_per_reading": round(raw / readings, 3),
            "compacted_files": len(lake.visible_files(root, "readings")),
            "compacted_bytes_per_reading": round(size() / readings, 3),
            "compaction_s": round(spent, 1),
            "compaction_peak_rss_anon_mib": round(peak[0]),
            "target_bytes_per_reading": 7.0,
        }
        print(json.dumps(result) if args.json else "\n".join(f"{k:>30}  {v}" for k, v in result.items()))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

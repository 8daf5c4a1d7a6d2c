"""What the health tracker costs per batch: the enqueue on the ingest path and the fold on its thread.

Run with ``-s`` to see the figures. The bounds are loose (a loaded machine must not fail them); they
catch a change that puts a Python loop per reading back, not a few percent.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from ironwatch import config
from ironwatch.ingest import Tracker
from ironwatch.ingest.ledger import Ledger
from ironwatch.store import Store

READINGS = 1000
BATCHES = 600
PER_FOLD = 50  # batches the tracker's thread folds at once at 500 batches/s (every 0.1 s)


def _batches(sensors_per_batch: int, metrics: int, now_us: int) -> list[pa.Table]:
    """Batches like the benchmark site's: 550 sensors, a block of sensors x metrics per batch."""
    out = []
    for b in range(BATCHES):
        first = b * sensors_per_batch
        sensor = [f"s-{(first + i // metrics) % 550:04d}" for i in range(READINGS)]
        step = np.arange(READINGS) // (sensors_per_batch * metrics)
        ts = now_us - 1_000_000 + step * 1_000_000
        table = {"ts": ts, "sensor": sensor, "metric": ["m"] * READINGS, "value": np.ones(READINGS)}
        out.append(pa.table(table))
    return out


def test_per_batch_cost_of_the_health_hook(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'ironwatch.db'}")
    store.create_tenant("acme", (tmp_path / "lake").as_uri())
    settings = config.load({}, env={})
    now_us = time.time_ns() // 1000
    try:
        for sensors, metrics in ((59, 17), (1000, 1)):
            data = _batches(sensors, metrics, now_us)
            tracker = Tracker(settings, store, Ledger())
            enqueue_s = fold_s = 0.0
            for start in range(0, BATCHES, PER_FOLD):
                t0 = time.perf_counter()
                for n in range(start, start + PER_FOLD):
                    tracker.batch("acme", "gw-1", n + 1, "hall-a", data[n])
                t1 = time.perf_counter()
                tracker.catch_up()
                enqueue_s += t1 - t0
                fold_s += time.perf_counter() - t1
            t0 = time.perf_counter()
            tracker.persist()
            persist_s = time.perf_counter() - t0
            enqueue_us, fold_us = enqueue_s / BATCHES * 1e6, fold_s / BATCHES * 1e6
            print(
                f"\n{sensors} sensors x {metrics} metrics per {READINGS}-reading batch: "
                f"enqueue {enqueue_us:.2f} us, fold {fold_us:.1f} us ({fold_us * 1000 / READINGS:.0f} ns "
                f"a reading); saving {len(tracker.sensors('acme'))} sensors {persist_s * 1000:.0f} ms"
            )
            assert sum(s.readings for s in tracker.sensors("acme")) == BATCHES * READINGS
            assert enqueue_us < 20, "the ingest path only queues the batch"
            assert fold_us < 1000, "folding is vectorised: no Python loop per reading"
    finally:
        store.close()

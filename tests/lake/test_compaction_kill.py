"""``kill -9`` of a real ``ironwatch compact`` at every step, then a restart: every reading exactly once.

The hidden flag ``--pause-at STEP`` makes the subprocess stop at a named step of the compaction and
say so on stderr; the test then kills it for real (SIGKILL), checks what SQL sees, and runs the
compaction again to its end. The heavy form kills at random moments instead, many times over.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from lakefiles import ALL_READINGS, assert_rollups_match_raw, readings, sql, write

from conftest import Lab
from ironwatch import lake
from ironwatch.lake import Root, compaction, journal

HEAVY = os.environ.get("IRONWATCH_HEAVY") == "1"


def compact(lab: Lab, *args: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "IRONWATCH_STORE__URL": lab.store_url,
        "IRONWATCH_LAKE__COMPACTION_GRACE_S": "0",
        "IRONWATCH_LAKE__COMPACTION_CHUNK_ROWS": "2000",  # spill to disk, several chunks per hour
        "IRONWATCH_LAKE__COMPACTION_ROW_GROUP_ROWS": "1500",
    }
    command = [sys.executable, "-m", "ironwatch.cli", "compact", "--tenant", "acme"]
    return subprocess.Popen(
        [*command, "--data-dir", str(lab.data_dir), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def fill(lab: Lab, seed: int, n: int = 6000) -> Root:
    lab.tenant("acme", "admin")
    root = lake.open_root(str(lab.data_dir / "lake" / "acme"))
    rng = np.random.default_rng(seed)
    sensors = [f"s-{i:03d}" for i in range(40)]
    write(
        root, [readings(rng, n // 6, sites=("hall-a", "hall-b"), sensors=sensors, batch=b) for b in range(6)]
    )
    return root


def finish(lab: Lab) -> None:
    proc = compact(lab)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err


def hours_left(root: Root) -> int:
    return len(compaction.hours_to_compact(root, 2**62, compaction.Policy(close_after_s=0)))


@pytest.mark.parametrize("step", compaction.STEPS)
def test_killed_at_each_step_then_restarted_keeps_every_reading_once(lab: Lab, step: str) -> None:
    root = fill(lab, seed=compaction.STEPS.index(step))
    before = sql(root, ALL_READINGS)
    proc = compact(lab, "--pause-at", step)
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.strip() == f"compaction paused at {step}":
            break
    else:
        pytest.fail(f"compact ended without reaching {step}: {proc.wait()}")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    assert proc.stdout is not None
    proc.stdout.close()
    assert sql(root, ALL_READINGS) == before  # old or new, never both, never neither
    assert sum(r[0] for r in sql(root, "SELECT count FROM rollup_1m")) == len(before)
    state = {"committed": "committed", "retiring": "committed", "retired": "retired"}.get(step, "pending")
    assert [p.rsplit(".", 2)[1] for p in root.list(journal.FOLDER)] == [state]
    finish(lab)
    assert sql(root, ALL_READINGS) == before
    assert_rollups_match_raw(root)
    assert hours_left(root) == 0
    assert {p.rsplit(".", 2)[1] for p in root.list(journal.FOLDER)} <= {"retired", "aborted"}


@pytest.mark.heavy
def test_killed_at_random_moments_many_times(lab: Lab) -> None:
    """Short by default (3 kills); IRONWATCH_HEAVY=1 kills 25 times in a bigger lake."""
    root = fill(lab, seed=99, n=120_000 if HEAVY else 12_000)
    before = sql(root, ALL_READINGS)
    rng = random.Random(7)
    for _ in range(25 if HEAVY else 3):
        proc = compact(lab, "--hours", "1")
        time.sleep(rng.uniform(0.3, 2.5))  # a random moment of a real run, not a named step
        proc.kill()
        proc.communicate(timeout=30)
        assert sql(root, ALL_READINGS) == before
    finish(lab)
    assert sql(root, ALL_READINGS) == before and hours_left(root) == 0
    assert_rollups_match_raw(root)

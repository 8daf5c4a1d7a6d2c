"""A three-hour outage seen by the rollups, on a real server: late, shuffled and repeated batches.

The gateway sends as usual, then its link is down for three hours; when it comes back, the backlog
arrives out of order (batches shuffled, readings shuffled within each, some batches sent twice).
The rollups of the outage window must then equal aggregates computed from the raw readings, and a
rebuild of the rollups from raw (``ironwatch rollups rebuild``) must answer to the bit what the
incrementally kept rollups answered. The health half of the same story is in tests/web/test_health.py.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from lakefiles import ALL_READINGS, HOURS, MINUTES, assert_rollups_match_raw, sql

from conftest import Lab, wait_until
from ironwatch import lake

HEAVY = os.environ.get("IRONWATCH_HEAVY") == "1"
SENSORS = [f"s-{i:03d}" for i in range(60 if HEAVY else 12)]
METRICS = ["rpm", "temperature_c", "vibration_mm_s"]
STEP_S = 2 if HEAVY else 15


def batches(start: datetime, end: datetime, first: int, rng: random.Random) -> list[dict[str, object]]:
    """Envelopes of 1000 readings (columnar), every series every STEP_S seconds of [start, end)."""
    rows = []
    moment = start
    while moment < end:
        rows += [(moment, s, m) for s in SENSORS for m in METRICS]
        moment += timedelta(seconds=STEP_S)
    out = []
    for n, i in enumerate(range(0, len(rows), 1000)):
        part = rows[i : i + 1000]
        out.append(
            {
                "gateway": "gw-1",
                "batch": first + n,
                "site": "hall-a",
                "columns": {
                    "ts": [int(t.timestamp() * 1000) for t, _, _ in part],
                    "sensor": [s for _, s, _ in part],
                    "metric": [m for _, _, m in part],
                    "value": [round(rng.gauss(50, 15), 3) for _ in part],
                },
            }
        )
    return out


def shuffled(doc: dict[str, object], rng: random.Random) -> dict[str, object]:
    columns: dict[str, list[object]] = doc["columns"]  # type: ignore[assignment]
    order = list(range(len(columns["ts"])))
    rng.shuffle(order)
    return {**doc, "columns": {k: [v[i] for i in order] for k, v in columns.items()}}


@pytest.mark.heavy
def test_rollups_of_a_three_hour_outage_equal_raw_and_a_rebuild(lab: Lab) -> None:
    """12 sensors every 15 s by default; IRONWATCH_HEAVY=1: 60 sensors every 2 s (1.2M readings)."""
    acme = lab.tenant("acme", "gateway", "analyst")
    server = lab.server(IRONWATCH_LAKE__COMPACTION="false")
    rng = random.Random(3)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    outage = (now - timedelta(hours=3, minutes=20), now - timedelta(minutes=20))
    before = batches(outage[0] - timedelta(minutes=30), outage[0], 1, rng)
    backlog = batches(*outage, len(before) + 1, rng)
    after = batches(outage[1], now, len(before) + len(backlog) + 1, rng)
    sent = sum(len(b["columns"]["ts"]) for b in before + backlog + after)  # type: ignore[index]
    with server.client(acme.keys["gateway"]) as gw:

        def post(doc: dict[str, object], duplicate: bool = False) -> None:
            r = gw.post("/api/v1/ingest", json=doc)
            assert r.status_code == 200 and r.json()["duplicate"] is duplicate, r.text

        for doc in before + after:  # on time before and after the outage
            post(doc)
        late = [shuffled(doc, rng) for doc in backlog]
        rng.shuffle(late)
        for doc in late:  # the backlog, out of order
            post(doc)
        for doc in rng.sample(late, 5) + rng.sample(before, 2):  # re-sent after lost acks
            post(doc, duplicate=True)
    root = lake.open_root(str(lab.data_dir / "lake" / "acme"))

    def stored() -> int:
        return int(sql(root, "SELECT count(*) FROM readings")[0][0])

    wait_until(lambda: stored() == sent, what="every reading in the lake")
    window = (
        f"SELECT count(*), sum(count) FROM rollup_1m WHERE minute >= TIMESTAMPTZ '{outage[0].isoformat()}' "
        f"AND minute < TIMESTAMPTZ '{outage[1].isoformat()}'"
    )
    in_window = sum(len(b["columns"]["ts"]) for b in backlog)  # type: ignore[index]
    assert sql(root, window)[0] == (180 * len(SENSORS) * len(METRICS), in_window)
    assert_rollups_match_raw(root)  # complete and exact for the outage window and around it
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {acme.keys['analyst']}"}) as c:
        r = c.post("/api/v1/query", json={"sql": "SELECT sum(count) FROM rollup_1h"})
        assert r.status_code == 200 and r.json()["rows"] == [[sent]], r.text
    server.stop()

    incremental = [sql(root, q) for q in (MINUTES, HOURS, ALL_READINGS)]
    command = [sys.executable, "-m", "ironwatch.cli", "rollups", "rebuild", "--tenant", "acme"]
    rebuilt = subprocess.run(
        [*command, "--data-dir", str(lab.data_dir)],
        capture_output=True,
        text=True,
        env={**os.environ, "IRONWATCH_STORE__URL": lab.store_url},
        timeout=120,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "raw files (100%)" in rebuilt.stderr
    assert [sql(root, q) for q in (MINUTES, HOURS, ALL_READINGS)] == incremental

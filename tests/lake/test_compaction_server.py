"""The server compacts closed hours by itself, and a kill -9 in the middle loses or doubles nothing."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from lakefiles import assert_rollups_match_raw, sql

from conftest import Lab, Server, wait_until
from ironwatch import lake
from ironwatch.lake import Root, journal

FAST = {
    "IRONWATCH_LAKE__COMPACTION_INTERVAL_S": "0.2",
    "IRONWATCH_LAKE__COMPACTION_GRACE_S": "0",
    "IRONWATCH_LAKE__COMPACTION_CHUNK_ROWS": "3000",
}


Row = tuple[str, int, float, int]


def send(server: Server, key: str, first: int, count: int, start: datetime, rng: random.Random) -> list[Row]:
    """``count`` batches of 500 readings at random moments of the two hours from ``start``."""
    sent: list[Row] = []
    with server.client(key) as gw:
        for batch in range(first, first + count):
            ts = [int((start.timestamp() + rng.uniform(0, 7200)) * 1000) for _ in range(500)]
            doc = {
                "gateway": "gw-1",
                "batch": batch,
                "site": "hall-a",
                "columns": {
                    "ts": ts,
                    "sensor": [f"s-{rng.randrange(30)}" for _ in ts],
                    "metric": [rng.choice(["rpm", "temperature_c"]) for _ in ts],
                    "value": [round(rng.uniform(0, 100), 3) for _ in ts],
                },
            }
            r = gw.post("/api/v1/ingest", json=doc)
            assert r.status_code == 200 and r.json()["accepted"] == 500, r.text
            columns = doc["columns"]
            sent += [
                (f"{s}/{m}", t, v, batch)
                for s, m, t, v in zip(
                    columns["sensor"], columns["metric"], columns["ts"], columns["value"], strict=True
                )
            ]
    return sent


STORED = "SELECT sensor || '/' || metric, epoch_ms(ts), value, batch FROM readings ORDER BY ALL"


def compacted(root: Root, sent: int) -> bool:
    names = [journal.key_of(p) for p in lake.visible_files(root, "readings")]
    states = {p.rsplit(".", 2)[1] for p in root.list(journal.FOLDER)}
    return (
        bool(names)
        and all(k is not None and k[3].startswith("c-") for k in names)
        and len(names) == len({k[:3] for k in names if k})
        and states <= {"retired", "aborted"}
        and sql(root, "SELECT count(*) FROM readings")[0][0] == sent
    )


def test_the_server_compacts_closed_hours_and_survives_kill_9_midway(lab: Lab) -> None:
    acme = lab.tenant("acme", "gateway")
    root = lake.open_root(str(lab.data_dir / "lake" / "acme"))
    start = (datetime.now(UTC) - timedelta(hours=6)).replace(minute=0, second=0, microsecond=0)
    rng = random.Random(5)
    server = lab.server(**FAST)
    sent = send(server, acme.keys["gateway"], 1, 8, start, rng)
    wait_until(lambda: compacted(root, len(sent)), 60, what="both hours compacted")
    assert sql(root, STORED) == sorted(sent)
    assert root.list("retired")  # the flushed files, kept for lake.retired_keep_s
    assert_rollups_match_raw(root)

    # Late readings for the same hours, then kill -9 while the server compacts them again.
    known = set(root.list(journal.FOLDER))
    sent += send(server, acme.keys["gateway"], 100, 6, start, rng)
    # Kill at the first sign of a new compaction: usually while it is pending, sometimes just after.
    wait_until(lambda: set(root.list(journal.FOLDER)) - known, 30, 0.002, what="a compaction to start")
    server.kill()
    server.start()
    wait_until(lambda: compacted(root, len(sent)), 60, what="compacted again after the restart")
    assert sql(root, STORED) == sorted(sent)  # every reading exactly once
    assert_rollups_match_raw(root)

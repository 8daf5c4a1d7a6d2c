"""The health tracker and its reports, on a real SQLite store with an injectable clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from ironwatch import config
from ironwatch.errors import InvalidInput, NotFound
from ironwatch.ingest import health_report
from ironwatch.ingest.health import Tracker
from ironwatch.ingest.ledger import Ledger
from ironwatch.store import Store, set_declared_rate

S = 1_000_000  # one second in µs
T0 = 1_790_000_000 * S
ENV = {
    "IRONWATCH_HEALTH__HEARTBEAT_INTERVAL_S": "10",
    "IRONWATCH_HEALTH__OFFLINE_AFTER_HEARTBEATS": "3",
    "IRONWATCH_HEALTH__SILENT_AFTER_S": "60",
    "IRONWATCH_HEALTH__RATE_WINDOW_S": "600",
    "IRONWATCH_HEALTH__DEFAULT_RATE_PER_MIN": "60",
}


class Clock:
    def __init__(self) -> None:
        self.now_us = T0

    def __call__(self) -> int:
        return self.now_us

    def advance(self, seconds: float) -> None:
        self.now_us += int(seconds * S)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'ironwatch.db'}")
    for tenant in ("acme", "other"):
        s.create_tenant(tenant, f"file:///srv/{tenant}")
    s.add_gateway("acme", "gw-1", "hall-a")
    s.add_gateway("acme", "gw-2", "hall-a")
    s.add_gateway("other", "gw-1", "hall-z")
    yield s
    s.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def tracker_of(store: Store, clock: Clock, ledger: Ledger | None = None) -> Tracker:
    return Tracker(config.load({}, env=ENV), store, ledger, clock=clock)


def readings(sensor_ts: dict[str, list[int]]) -> pa.Table:
    sensors = [s for s, stamps in sensor_ts.items() for _ in stamps]
    ts = [t for stamps in sensor_ts.values() for t in stamps]
    return pa.table(
        {
            "ts": pa.array(ts, pa.int64()),
            "sensor": pa.array(sensors),
            "metric": pa.array(["rpm"] * len(ts)),
            "value": pa.array(np.ones(len(ts))),
        }
    )


def every(seconds: float, count: int, end_us: int) -> list[int]:
    """``count`` timestamps ``seconds`` apart, the last one at ``end_us``."""
    return [end_us - int(i * seconds * S) for i in range(count)][::-1]


def by_sensor(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["sensor"]: d for d in docs}


def test_rate_against_the_declared_rate(store: Store, clock: Clock) -> None:
    tracker = tracker_of(store, clock)
    now = clock()
    # 1 Hz for ten minutes (the declared default 60/min), 0.2 Hz, and 1 Hz for the last two minutes only.
    table = readings(
        {
            "s-fast": every(1, 600, now),
            "s-slow": every(5, 120, now),
            "s-new": every(1, 120, now),
        }
    )
    for n, part in enumerate(table.to_batches(max_chunksize=400), start=1):
        tracker.batch("acme", "gw-1", n, "hall-a", pa.Table.from_batches([part]))
    tracker.heartbeat("acme", {"gateway": "gw-1", "site": "hall-a", "ts": now // 1000})
    docs = by_sensor(health_report.sensors(store, tracker, "acme"))
    assert docs["s-fast"]["status"] == "ok"
    assert docs["s-fast"]["rate_per_min"] == pytest.approx(60, rel=0.12)
    assert docs["s-slow"]["status"] == "stale"
    assert docs["s-slow"]["rate_per_min"] == pytest.approx(12, rel=0.12)
    # A sensor watched for two minutes is judged on those two minutes, not on ten.
    assert docs["s-new"]["status"] == "ok"
    assert docs["s-new"]["rate_per_min"] == pytest.approx(60, rel=0.5)
    assert docs["s-fast"]["declared_rate_per_min"] == 60.0
    assert docs["s-fast"]["readings"] == 600

    # A rate declared for the sensor itself replaces the default.
    store.discover_sensors("acme", "hall-a", ["s-slow"], "gw-1")
    set_declared_rate(store, "acme", "hall-a", "s-slow", 12.0)
    slow = by_sensor(health_report.sensors(store, tracker, "acme"))["s-slow"]
    assert (slow["status"], slow["declared_rate_per_min"], slow["registration"]) == ("ok", 12.0, "discovered")
    assert [d["sensor"] for d in health_report.sensors(store, tracker, "acme", status="ok")] == [
        "s-fast",
        "s-new",
        "s-slow",
    ]


def test_late_readings_count_in_totals_not_in_the_rate(store: Store, clock: Clock) -> None:
    tracker = tracker_of(store, clock)
    now = clock()
    tracker.batch("acme", "gw-1", 1, "hall-a", readings({"s-1": every(1, 60, now)}))
    three_hours_ago = now - 3 * 3600 * S
    tracker.batch("acme", "gw-1", 2, "hall-a", readings({"s-1": every(1, 600, three_hours_ago)}))
    (state,) = tracker.sensors("acme")
    assert state.readings == 660
    assert state.last_ts_us == now, "a late batch never moves the last reading back"
    assert state.first_ts_us == three_hours_ago - 599 * S
    assert state.rate_per_min == pytest.approx(6.0, rel=0.12), "60 readings over the ten-minute window"


def test_link_down_is_told_apart_from_a_silent_sensor(store: Store, clock: Clock) -> None:
    tracker = tracker_of(store, clock)
    now = clock()
    tracker.batch("acme", "gw-1", 1, "hall-a", readings({"a-1": every(1, 60, now), "a-2": every(1, 60, now)}))
    tracker.batch("acme", "gw-2", 1, "hall-a", readings({"b-1": every(1, 60, now)}))
    clock.advance(45)
    # gw-1 keeps talking, with only a-1's readings; gw-2 says nothing more.
    tracker.batch("acme", "gw-1", 2, "hall-a", readings({"a-1": every(1, 45, clock())}))
    clock.advance(25)  # a-2 quiet for 70 s > silent_after_s; gw-2 quiet for 70 s > 3 x 10 s
    tracker.heartbeat("acme", {"gateway": "gw-1", "site": "hall-a", "ts": clock() // 1000, "last_batch": 2})
    docs = by_sensor(health_report.sensors(store, tracker, "acme"))
    assert {s: d["status"] for s, d in docs.items()} == {"a-1": "ok", "a-2": "silent", "b-1": "link_down"}
    assert docs["b-1"]["gateway_status"] == "offline"
    gateways = {g["gateway"]: g for g in health_report.gateways(store, tracker, "acme")}
    assert gateways["gw-1"]["status"] == "online" and gateways["gw-2"]["status"] == "offline"
    assert gateways["gw-1"]["sensor_counts"]["silent"] == 1
    assert gateways["gw-2"]["sensor_counts"]["link_down"] == 1
    assert [g["gateway"] for g in health_report.gateways(store, tracker, "acme", status="offline")] == [
        "gw-2"
    ]
    assert [d["sensor"] for d in health_report.sensors(store, tracker, "acme", status="silent")] == ["a-2"]

    # The gateway's own heartbeat says a-2 read something 5 s ago: its data is on the way, not lost.
    tracker.heartbeat(
        "acme",
        {
            "gateway": "gw-1",
            "site": "hall-a",
            "ts": clock() // 1000,
            "buffer_depth": 40,
            "sensors": {"a-2": {"last_ts": (clock() - 5 * S) // 1000, "status": "ok"}},
        },
    )
    a2 = by_sensor(health_report.sensors(store, tracker, "acme"))["a-2"]
    assert a2["status"] == "delayed" and a2["reported"]["status"] == "ok"


def test_missing_batches_include_what_the_gateway_has_not_delivered(store: Store, clock: Clock) -> None:
    ledger = Ledger()
    tracker = tracker_of(store, clock, ledger)
    for batch in (1, 2, 3, 7, 9):
        ledger.commit(("acme", "gw-1", batch))
        tracker.batch("acme", "gw-1", batch, "hall-a", readings({"s-1": [clock()]}))
    tracker.heartbeat("acme", {"gateway": "gw-1", "site": "hall-a", "ts": clock() // 1000, "last_batch": 12})
    doc = health_report.gateway(store, tracker, "acme", "gw-1")
    assert doc["received_batches"] == [[1, 3], [7, 7], [9, 9]]
    assert doc["missing_batches"] == [[4, 6], [8, 8], [10, 12]]
    assert doc["missing_batch_count"] == 7
    assert doc["backlog"]["undelivered_batches"] == [10, 12]
    assert doc["last_batch"] == 9
    assert [s["sensor"] for s in doc["sensors"]] == ["s-1"]
    for batch in (4, 5, 6, 8, 10, 11, 12):
        ledger.commit(("acme", "gw-1", batch))
    doc = health_report.gateway(store, tracker, "acme", "gw-1")
    assert (doc["missing_batches"], doc["missing_batch_count"], doc["backlog"]["undelivered_batches"]) == (
        [],
        0,
        None,
    )
    with pytest.raises(NotFound):
        health_report.gateway(store, tracker, "other", "gw-2")
    with pytest.raises(InvalidInput):
        health_report.sensors(store, tracker, "acme", status="dead")


def test_saved_state_survives_and_replayed_batches_count_once(store: Store, clock: Clock) -> None:
    tracker = tracker_of(store, clock)
    now = clock()
    first = readings({"s-1": every(1, 120, now), "s-2": every(2, 60, now)})
    tracker.batch("acme", "gw-1", 1, "hall-a", first)
    tracker.heartbeat("acme", {"gateway": "gw-1", "site": "hall-a", "ts": now // 1000, "buffer_depth": 0})
    store.record_heartbeat("acme", "gw-1", {"gateway": "gw-1", "site": "hall-a", "ts": now // 1000})
    tracker.persist()
    before = {s.sensor: s for s in tracker.sensors("acme")}

    again = tracker_of(store, clock)
    again.load()
    assert {s.sensor: s for s in again.sensors("acme")} == before
    assert again.gateways("acme")["gw-1"].observed.ranges() == [[1, 1]]
    # After kill -9, the log replays batch 1 (saved already) and batch 2 (never saved).
    again.replay("acme", "gw-1", 1, "hall-a", first, now)
    again.replay("acme", "gw-1", 2, "hall-a", readings({"s-1": [now + S]}), now + S)
    after = {s.sensor: s for s in again.sensors("acme")}
    assert after["s-1"].readings == 121 and after["s-2"].readings == 60
    assert after["s-1"].last_ts_us == now + S


def test_sql_tables_hold_one_tenant(store: Store, clock: Clock) -> None:
    tracker = tracker_of(store, clock)
    tracker.batch("acme", "gw-1", 1, "hall-a", readings({"a-1": [clock()]}))
    tracker.batch("other", "gw-1", 1, "hall-z", readings({"z-1": [clock()]}))
    tables = health_report.sql_tables(store, "acme", tracker)
    assert tables["sensors"].schema == health_report.SENSORS_SCHEMA
    assert tables["gateways"].schema == health_report.GATEWAYS_SCHEMA
    assert tables["sensors"].column("sensor").to_pylist() == ["a-1"]
    assert sorted(tables["gateways"].column("gateway").to_pylist()) == ["gw-1", "gw-2"]
    other = health_report.sql_tables(store, "other", tracker)
    assert other["sensors"].column("sensor").to_pylist() == ["z-1"]
    assert other["gateways"].column("site").to_pylist() == ["hall-z"]

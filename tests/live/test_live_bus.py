"""The live bus, the recent buffer and the stream's minute rollups, on real Arrow tables."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pytest

from ironwatch import live

WAL_SCHEMA = pa.schema(
    [("ts", pa.int64()), ("sensor", pa.string()), ("metric", pa.string()), ("value", pa.float64())]
)
T0 = 1_795_514_400_000_000  # 2026-11-24T10:00:00Z in microseconds


def readings(
    n: int, *, sensors: int = 1, start_us: int = T0, step_us: int = 1_000_000, value: float = 0.0
) -> pa.Table:
    idx = np.arange(n)
    return pa.table(
        {
            "ts": pa.array(start_us + idx * step_us, pa.int64()),
            "sensor": pa.array([f"s-{i % sensors}" for i in range(n)]),
            "metric": pa.array(["temp"] * n),
            "value": pa.array(value + idx.astype(float)),
        },
        schema=WAL_SCHEMA,
    )


def test_without_listeners_a_batch_only_goes_to_the_recent_buffer() -> None:
    bus = live.Bus(live.Recent())
    bus.publish("acme", "hall-a", readings(5))
    assert bus.listeners == 0
    assert bus.recent.readings_held == 5
    assert bus.recent.points("acme", "hall-a", "s-0", "temp", T0, T0 + 10**9).num_rows == 5
    assert bus.recent.points("acme2", "hall-a", "s-0", "temp", T0, T0 + 10**9).num_rows == 0
    assert bus.recent.points("acme", "hall-b", "s-0", "temp", T0, T0 + 10**9).num_rows == 0


def test_listeners_get_only_their_tenant_site_sensor_and_metric() -> None:
    bus = live.Bus(live.Recent())
    site = bus.subscribe("acme", live.Filter("hall-a"))
    sensor = bus.subscribe("acme", live.Filter("hall-a", sensor="s-1"))
    metric = bus.subscribe("acme", live.Filter("hall-a", metric="rpm"))
    other_site = bus.subscribe("acme", live.Filter("hall-b"))
    other_tenant = bus.subscribe("acme2", live.Filter("hall-a"))
    bus.publish("acme", "hall-a", readings(10, sensors=3))
    assert bus.wait_idle()
    got, skipped = site.take()
    assert got is not None and got.num_rows == 10 and skipped == 0
    got, _ = sensor.take()
    assert got is not None and set(got["sensor"].to_pylist()) == {"s-1"} and got.num_rows == 3
    assert metric.take() == (None, 0)
    assert other_site.take() == (None, 0)
    assert other_tenant.take() == (None, 0)
    assert site.take() == (None, 0)  # taken once


def test_a_full_queue_skips_readings_and_says_how_many() -> None:
    bus = live.Bus(live.Recent(), max_readings=10, drop_after_s=60)
    sub = bus.subscribe("acme", live.Filter("hall-a"))
    for _ in range(3):
        bus.publish("acme", "hall-a", readings(5))
        assert bus.wait_idle()
    got, skipped = sub.take()
    assert got is not None and got.num_rows == 10
    assert skipped == 5
    assert bus.skipped == 5
    bus.publish("acme", "hall-a", readings(5))
    assert bus.wait_idle()
    got, skipped = sub.take()
    assert got is not None and got.num_rows == 5 and skipped == 0
    bus.close()


def test_a_listener_that_stays_full_is_dropped() -> None:
    bus = live.Bus(live.Recent(), max_readings=5, drop_after_s=0.0)
    sub = bus.subscribe("acme", live.Filter("hall-a"))
    bus.publish("acme", "hall-a", readings(5))
    assert bus.wait_idle()
    bus.publish("acme", "hall-a", readings(5))  # full: skipped, and full for >= 0 s
    assert bus.wait_idle()
    assert sub.is_closed
    assert bus.listeners == 0
    assert bus.dropped == 1
    bus.unsubscribe(sub)  # twice is harmless
    assert bus.listeners == 0


def test_recent_forgets_a_chunk_once_its_segment_is_in_the_lake() -> None:
    recent = live.Recent()
    recent.add("acme", "hall-a", readings(3))
    recent.segment_closed(7)
    recent.add("acme", "hall-a", readings(4, start_us=T0 + 10**8))  # in segment 8
    recent.segment_flushed(6)  # recovered at start: nothing of it was published
    assert recent.readings_held == 7
    recent.segment_flushed(7)
    assert recent.readings_held == 4
    assert recent.points("acme", "hall-a", "s-0", "temp", T0, T0 + 10**9)["ts"].to_pylist()[0] == T0 + 10**8
    recent.segment_closed(8)
    recent.segment_flushed(8)
    assert recent.readings_held == 0


def test_recent_is_bounded_and_counts_what_it_let_go() -> None:
    recent = live.Recent(max_readings=10)
    for i in range(5):
        recent.add("acme", "hall-a", readings(4, start_us=T0 + i * 10**7))
    assert recent.readings_held <= 10
    assert recent.evicted_early == 20 - recent.readings_held


def test_points_filter_by_time_half_open() -> None:
    recent = live.Recent()
    recent.add("acme", "hall-a", readings(10))
    got = recent.points("acme", "hall-a", "s-0", "temp", T0 + 2_000_000, T0 + 5_000_000)
    assert got["ts"].to_pylist() == [T0 + 2_000_000, T0 + 3_000_000, T0 + 4_000_000]


def test_minute_rollups_equal_a_direct_computation_whatever_the_arrival_order() -> None:
    rng = np.random.default_rng(7)
    n = 3000
    ts = T0 + rng.integers(0, 3 * 60_000_000, n)
    table = pa.table(
        {
            "ts": pa.array(ts, pa.int64()),
            "sensor": pa.array(rng.choice(["a", "b", "c"], n)),
            "metric": pa.array(rng.choice(["rpm", "temp"], n)),
            "value": pa.array(rng.normal(50, 10, n)),
        }
    )
    rollups = live.MinuteRollups()
    last: dict[tuple[str, str, int], dict[str, float]] = {}
    for chunk in np.array_split(rng.permutation(n), 17):
        changed = rollups.update(table.take(pa.array(chunk)), keep_from_us=0)
        for row in changed.to_pylist():
            last[(row["sensor"], row["metric"], row["minute"])] = row
    frame = table.to_pandas()
    frame["minute"] = frame["ts"] // 60_000_000 * 60_000_000
    for (sensor, metric, minute), group in frame.groupby(["sensor", "metric", "minute"]):
        row = last[(sensor, metric, minute)]
        assert row["count"] == len(group)
        assert row["sum"] / row["count"] == pytest.approx(group["value"].mean(), rel=1e-12)
        assert row["min"] == group["value"].min() and row["max"] == group["value"].max()
        assert row["last"] == group.sort_values("ts")["value"].iloc[-1]
    assert len(last) == frame.groupby(["sensor", "metric", "minute"]).ngroups


def test_minute_rollups_keep_only_recent_minutes() -> None:
    rollups = live.MinuteRollups()
    rollups.update(readings(180), keep_from_us=0)  # three minutes
    assert rollups.size == 3
    changed = rollups.update(readings(1, start_us=T0 + 170_000_000), keep_from_us=T0 + 120_000_000)
    assert changed["count"].to_pylist() == [61]
    assert rollups.size == 1


def _median_us(work: Callable[[], object], rounds: int = 400) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


def test_publishing_costs_next_to_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    """Ingest pays for the recent buffer and, with listeners, a backlog append; the bus's thread filters."""
    batch = readings(1000, sensors=50)
    bus = live.Bus(live.Recent())

    def publish() -> None:
        bus.publish("acme", "hall-a", batch)
        bus.recent.segment_closed(1)
        bus.recent.segment_flushed(1)

    subs = []

    def fan_out() -> None:
        bus.fan_out("acme", "hall-a", batch)
        for sub in subs:
            sub.take()

    alone = _median_us(publish)
    subs.append(bus.subscribe("acme", live.Filter("hall-a")))
    with_listener = _median_us(publish)
    assert bus.wait_idle()
    site = _median_us(fan_out)
    subs.extend(bus.subscribe("acme", live.Filter("hall-a", sensor=f"s-{i}")) for i in range(10))
    sensors = _median_us(fan_out)
    subs.extend(bus.subscribe("acme", live.Filter("hall-a", sensor=f"absent-{i}")) for i in range(100))
    absent = _median_us(fan_out)
    bus.close()
    with capsys.disabled():
        print(
            f"\npublish a 1000-reading batch (ingest path): {alone:.1f} us with no listener, "
            f"{with_listener:.1f} us with listeners; fan-out (bus thread): {site:.1f} us to a site "
            f"listener, {sensors:.1f} us with 10 sensor listeners more, {absent:.1f} us with 100 more "
            "listeners of sensors the batch lacks"
        )
    # Generous bounds for a shared 2-core machine; the figures above are what to look at.
    assert alone < 50
    assert with_listener < 100
    assert sensors < 3000

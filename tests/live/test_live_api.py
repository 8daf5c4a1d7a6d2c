"""GET /api/v1/series and GET /api/v1/live against a real server over real HTTP.

Two tenants, ``acme`` and ``acme2``, send the same site, sensor and metric names; acme's values are
below 1000 and acme2's from 1000 up, so any row of one in the other's answers would show.
"""

from __future__ import annotations

import math
import re
import socket
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from live_sse import Listener

from conftest import Lab, Server, Tenant, wait_until

NOW = datetime.now(UTC)
END = NOW.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
START = END - timedelta(hours=3)
STEP_S = 10
HISTORY = 3 * 3600 // STEP_S  # readings of s-1/temp per tenant
OFFSET = {"acme": 0.0, "acme2": 1000.0}
QUEUE_READINGS = 20_000
DROP_AFTER_S = 3


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def history_value(i: int, tenant: str) -> float:
    return OFFSET[tenant] + 20 + 10 * math.sin(i / 50) + (i % 7) * 0.125


def columns(sensor: str, ts_ms: list[int], values: list[float], metric: str = "temp") -> dict[str, Any]:
    n = len(ts_ms)
    return {"ts": ts_ms, "sensor": [sensor] * n, "metric": [metric] * n, "value": values}


@dataclass
class World:
    lab: Lab
    server: Server
    acme: Tenant
    acme2: Tenant
    batches: dict[str, int]

    def send(self, tenant: Tenant, cols: dict[str, Any], site: str = "hall-a") -> httpx.Response:
        self.batches[tenant.name] += 1
        body = {"gateway": "gw-1", "batch": self.batches[tenant.name], "site": site, "columns": cols}
        with self.server.client(tenant.keys["gateway"]) as gw:
            answer = gw.post("/api/v1/ingest", json=body)
        assert answer.status_code == 200 and answer.json()["accepted"] == len(cols["ts"]), answer.text
        return answer

    def series(self, key: str, **params: Any) -> httpx.Response:
        with self.server.client(key) as client:
            return client.get("/api/v1/series", params={"site": "hall-a", "metric": "temp", **params})

    def sql(self, tenant: Tenant, sql: str) -> list[list[Any]]:
        with self.server.client(tenant.keys["analyst"]) as client:
            answer = client.post("/api/v1/query", json={"sql": sql})
        assert answer.status_code == 200, answer.text
        return list(answer.json()["rows"])

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.server.url}/metrics").text
        found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        assert found, f"{name} not in /metrics"
        return float(found.group(1))

    def listen(self, tenant: Tenant, role: str = "viewer", **params: str) -> Listener:
        return Listener(self.server.url, tenant.keys[role], {"site": "hall-a", **params}).start()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    lab = Lab(tmp_path_factory.mktemp("live") / "data")
    acme, acme2 = lab.tenant("acme"), lab.tenant("acme2")
    server = lab.server(
        IRONWATCH_LIVE__HEARTBEAT_S="1",
        IRONWATCH_LIVE__QUEUE_READINGS=str(QUEUE_READINGS),
        IRONWATCH_LIVE__DROP_AFTER_S=str(DROP_AFTER_S),
    )
    world = World(lab, server, acme, acme2, {"acme": 0, "acme2": 0})
    try:
        ts = [ms(START) + i * STEP_S * 1000 for i in range(HISTORY)]
        for tenant in (acme, acme2):
            for part in range(0, HISTORY, 360):
                values = [history_value(i, tenant.name) for i in range(part, part + 360)]
                world.send(tenant, columns("s-1", ts[part : part + 360], values))
            wait_until(
                lambda t=tenant: (
                    world.sql(t, "SELECT count(*) FROM readings WHERE sensor = 's-1'") == [[HISTORY]]
                ),
                what=f"{tenant.name}'s history in the lake",
            )
        yield world
    finally:
        lab.close()


# --- series: resolution and numbers -------------------------------------------------------------


def expected(world: World, tenant: Tenant, resolution: str) -> dict[str, list[Any]]:
    """The series as SQL over the views computes it."""
    view, column = {"raw": ("readings", "ts"), "1m": ("rollup_1m", "minute"), "1h": ("rollup_1h", "hour")}[
        resolution
    ]
    values = "value, value, value, 1" if resolution == "raw" else "mean, min, max, count"
    sql = (
        f"SELECT epoch_ms({column}), {values} FROM {view} WHERE site = 'hall-a' AND sensor = 's-1' "
        f"AND metric = 'temp' AND {column} >= epoch_ms({ms(START)}) AND {column} < epoch_ms({ms(END)}) "
        f"ORDER BY {column}"
    )
    rows = world.sql(tenant, sql)
    return {name: [r[i] for r in rows] for i, name in enumerate(("ts", "mean", "min", "max", "count"))}


@pytest.mark.parametrize(
    ("max_points", "resolution", "points"),
    [
        (5000, "raw", HISTORY),
        (HISTORY, "raw", HISTORY),
        (HISTORY - 1, "1m", 180),
        (179, "1h", 3),
        (3, "1h", 3),
    ],
)
def test_resolution_follows_max_points_and_numbers_equal_sql(
    world: World, max_points: int, resolution: str, points: int
) -> None:
    for tenant in (world.acme, world.acme2):
        answer = world.series(
            tenant.keys["viewer"],
            sensor="s-1",
            start=START.isoformat(),
            end=END.isoformat(),
            max_points=max_points,
        )
        assert answer.status_code == 200, answer.text
        got = answer.json()
        assert got["resolution"] == resolution
        assert got["points"] == points == len(got["ts"])
        assert got["bucket_ms"] == {"raw": None, "1m": 60_000, "1h": 3_600_000}[resolution]
        want = expected(world, tenant, resolution)
        assert got["ts"] == want["ts"]
        assert got["count"] == want["count"]
        assert got["min"] == want["min"] and got["max"] == want["max"]
        assert got["mean"] == want["mean"]  # the views' compensated sums, to the last bit


def test_one_range_in_every_time_form_gives_one_answer(world: World) -> None:
    key = world.acme.keys["viewer"]
    forms = [
        (START.isoformat(), END.isoformat()),
        (START.astimezone(timezone_plus_one()).isoformat(), END.isoformat().replace("+00:00", "Z")),
        (str(ms(START)), str(ms(END))),
    ]
    answers = [world.series(key, sensor="s-1", start=s, end=e, max_points=200).json() for s, e in forms]
    assert answers[0]["resolution"] == "1m"
    assert answers[0] == answers[1] == answers[2]


def timezone_plus_one() -> Any:
    from datetime import timezone

    return timezone(timedelta(hours=1))


def test_forced_resolutions(world: World) -> None:
    key = world.acme.keys["viewer"]
    answer = world.series(key, sensor="s-1", start=START.isoformat(), end=END.isoformat(), resolution="1h")
    assert answer.json()["resolution"] == "1h" and answer.json()["count"] == [360, 360, 360]
    answer = world.series(key, sensor="s-1", start=START.isoformat(), end=END.isoformat(), resolution="raw")
    assert answer.status_code == 422 and "raw readings" in answer.json()["error"]["message"]


def test_unknown_site_sensor_or_metric_is_an_empty_series(world: World) -> None:
    key = world.acme.keys["viewer"]
    for params in (
        {"sensor": "nobody"},
        {"sensor": "s-1", "site": "nowhere"},
        {"sensor": "s-1", "metric": "x"},
    ):
        answer = world.series(key, start="-2d", **params)
        assert answer.status_code == 200, answer.text
        assert answer.json()["points"] == 0 and answer.json()["ts"] == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"sensor": "s-1", "start": "-1h", "end": "-2h"}, "end"),
        ({"sensor": "s-1", "start": "last week"}, "start"),
        ({"sensor": "s-1", "max_points": "100000"}, "max_points"),
        ({"sensor": "s 1"}, "sensor"),
        ({}, "sensor"),
        ({"sensor": "s-1", "start": "-3d", "resolution": "raw"}, "start"),
    ],
)
def test_wrong_parameters_are_422_in_the_error_shape(
    world: World, params: dict[str, str], field: str
) -> None:
    answer = world.series(world.acme.keys["viewer"], **params)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid" and error["details"]["field"] == field
    assert error["message"].startswith(f"{field}: ")


# --- roles --------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["viewer", "mechanic", "analyst", "admin"])
def test_readers_may_use_both_routes(world: World, role: str) -> None:
    answer = world.series(world.acme.keys[role], sensor="s-1", start=START.isoformat(), end=END.isoformat())
    assert answer.status_code == 200 and answer.json()["points"] > 0
    listener = world.listen(world.acme, role)
    listener.stop()
    assert listener.error is None


def test_gateways_and_strangers_may_not(world: World) -> None:
    for key, status in ((world.acme.keys["gateway"], 403), (None, 401), ("iw_0_" + "x" * 32, 401)):
        with world.server.client(key) as client:
            series = client.get(
                "/api/v1/series", params={"site": "hall-a", "sensor": "s-1", "metric": "temp"}
            )
            live = client.get("/api/v1/live", params={"site": "hall-a"})
        for answer in (series, live):
            assert answer.status_code == status, answer.text
            assert answer.json()["error"]["code"] in {"forbidden", "unauthenticated"}


def test_a_key_limited_to_a_site_reads_only_that_site(world: World) -> None:
    _, key = world.lab.store.create_key("acme", "viewer", site="hall-b")
    wait_until(lambda: world.series(key, site="hall-b", sensor="s-1").status_code == 200, what="the new key")
    answer = world.series(key, sensor="s-1")
    assert answer.status_code == 403 and "hall-a" in answer.json()["error"]["message"]
    with world.server.client(key) as client:
        assert client.get("/api/v1/live", params={"site": "hall-a"}).status_code == 403


# --- freshness ----------------------------------------------------------------------------------


def now_ms() -> int:
    return ms(datetime.now(UTC))


def test_fresh_readings_are_in_series_and_live_within_2_s(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    key = world.acme.keys["viewer"]
    listener = world.listen(world.acme, sensor="fresh-1")
    series_s, live_s = [], []
    try:
        for i in range(10):
            world.send(world.acme, columns("fresh-1", [now_ms()], [float(i)]))
            acked = time.monotonic()

            def in_series(value: float = float(i)) -> bool:
                return value in world.series(key, sensor="fresh-1", start="-10m").json()["mean"]

            wait_until(in_series, timeout_s=5, interval_s=0.01, what="the reading in its series")
            series_s.append(time.monotonic() - acked)
            wait_until(lambda v=float(i): v in listener.values(), timeout_s=5, interval_s=0.01)
            event = next(e for e in listener.named("readings") if float(i) in e.data["value"])
            live_s.append(max(0.0, event.at - acked))
        rollups = listener.named("rollup")
        assert rollups and all(e.data["sensor"] == ["fresh-1"] for e in rollups)
        assert sum(max(e.data["count"]) for e in rollups[-1:]) >= 1
    finally:
        listener.stop()
    with capsys.disabled():
        print(
            f"\nfreshness after the ack: series max {max(series_s) * 1000:.0f} ms "
            f"(median {statistics.median(series_s) * 1000:.0f}), live max {max(live_s) * 1000:.0f} ms "
            f"(median {statistics.median(live_s) * 1000:.0f})"
        )
    assert max(series_s) < 2.0
    assert max(live_s) < 2.0


def test_a_reading_is_in_its_series_once_while_it_moves_to_the_lake(world: World) -> None:
    key = world.acme.keys["viewer"]
    stamp = now_ms()
    world.send(world.acme, columns("once-1", [stamp - 2000, stamp - 1000, stamp], [1.0, 2.0, 3.0]))
    seen = []

    def in_lake() -> bool:
        got = world.series(key, sensor="once-1", start="-10m").json()
        seen.append(got["mean"])
        return world.sql(world.acme, "SELECT count(*) FROM readings WHERE sensor = 'once-1'") == [[3]]

    wait_until(in_lake, interval_s=0.02, what="the readings in the lake")
    for _ in range(5):
        seen.append(world.series(key, sensor="once-1", start="-10m").json()["mean"])
    assert all(values == [1.0, 2.0, 3.0] for values in seen), seen


def test_fresh_readings_are_in_minute_and_hour_buckets_at_once(world: World) -> None:
    key = world.acme.keys["viewer"]
    stamp = now_ms() // 60_000 * 60_000  # the current minute's start: all three in one bucket
    world.send(world.acme, columns("tail-1", [stamp, stamp + 1, stamp + 2], [1.0, 2.0, 6.0]))
    for resolution, width_ms in (("1m", 60_000), ("1h", 3_600_000)):
        got = world.series(key, sensor="tail-1", start="-10m", resolution=resolution).json()
        assert got["resolution"] == resolution
        assert got["ts"] == [stamp // width_ms * width_ms]
        assert (got["count"], got["mean"], got["min"], got["max"]) == ([3], [3.0], [1.0], [6.0])


# --- isolation ----------------------------------------------------------------------------------


def test_two_tenants_never_see_each_others_rows(world: World) -> None:
    listeners = {t.name: world.listen(t) for t in (world.acme, world.acme2)}
    try:
        for i in range(5):
            for tenant in (world.acme, world.acme2):
                value = OFFSET[tenant.name] + i
                world.send(tenant, columns("s-1", [now_ms()], [value]))
        for tenant in (world.acme, world.acme2):
            wait_until(lambda t=tenant: len(listeners[t.name].values()) >= 5, what=f"{tenant.name}'s stream")
    finally:
        for listener in listeners.values():
            listener.stop()
    for tenant in (world.acme, world.acme2):
        low, high = OFFSET[tenant.name], OFFSET[tenant.name] + 1000
        assert all(low <= v < high for v in listeners[tenant.name].values())
        for e in listeners[tenant.name].named("rollup"):
            assert all(low <= v < high for v in e.data["min"] + e.data["max"] + e.data["last"])
        for params in (
            {"start": "-10m"},  # fresh: the recent buffer
            {"start": START.isoformat(), "end": END.isoformat(), "max_points": "5000"},  # raw from the lake
            {"start": START.isoformat(), "end": END.isoformat(), "max_points": "500"},  # 1m
            {"start": "-6h", "max_points": "10"},  # 1h, with the fresh tail
        ):
            got = world.series(tenant.keys["viewer"], sensor="s-1", **params).json()
            assert got["points"] > 0
            assert all(low <= v < high for v in got["min"] + got["max"]), (tenant.name, params)


# --- slow clients, disconnects, heartbeats ------------------------------------------------------


def acks(world: World, n: int, sensor: str) -> list[float]:
    out = []
    for _ in range(n):
        stamp = now_ms()
        started = time.monotonic()
        world.send(world.acme, columns(sensor, [stamp - 999 + i for i in range(1000)], [1.0] * 1000))
        out.append(time.monotonic() - started)
    return out


def test_a_slow_client_does_not_slow_ingest(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    wait_until(lambda: world.metric("ironwatch_live_listeners") == 0, what="no listener left")
    alone = acks(world, 40, "bulk-1")
    host, port = world.server.url.removeprefix("http://").split(":")
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect((host, int(port)))
    key = world.acme.keys["viewer"]
    request = f"GET /api/v1/live?site=hall-a HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\r\n"
    slow.sendall(request.encode())
    try:
        wait_until(lambda: world.metric("ironwatch_live_listeners") == 1, what="the slow listener")
        stalled = acks(world, 40, "bulk-2")
        # Keep sending until the listener skips readings, then until the bus lets it go.
        wait_until(
            lambda: acks(world, 1, "bulk-3") and world.metric("ironwatch_live_skipped_readings_total") > 0
        )
        wait_until(
            lambda: acks(world, 1, "bulk-3") and world.metric("ironwatch_live_listeners") == 0, timeout_s=30
        )
        assert world.metric("ironwatch_live_dropped_listeners_total") >= 1
        slow.settimeout(10)
        received = b""
        while b"event: dropped" not in received:
            chunk = slow.recv(1 << 20)
            if not chunk:
                break
            received += chunk
    finally:
        slow.close()
    assert b"event: lagged" in received and b"event: dropped" in received
    with capsys.disabled():
        print(
            f"\ningest acks of 1000-reading batches: median {statistics.median(alone) * 1000:.1f} ms alone, "
            f"{statistics.median(stalled) * 1000:.1f} ms with a stalled site listener"
        )
    assert statistics.median(stalled) < 2 * statistics.median(alone) + 0.02


def test_a_closed_stream_unsubscribes_and_a_quiet_one_sends_heartbeats(world: World) -> None:
    listener = world.listen(world.acme, sensor="quiet")
    try:
        wait_until(lambda: listener.comments, timeout_s=5, what="a heartbeat")
        assert listener.comments[0] == ": heartbeat"
        assert world.metric("ironwatch_live_listeners") >= 1
        assert [e.name for e in listener.events] == ["hello"]
    finally:
        listener.stop()
    wait_until(lambda: world.metric("ironwatch_live_listeners") == 0, what="the listener to go")


def test_stopping_the_server_ends_its_streams_and_the_recent_buffer_answers_before_the_lake(
    tmp_path: Path,
) -> None:
    lab = Lab(tmp_path / "data")
    try:
        tenant = lab.tenant("slow-lake")
        server = lab.server(
            IRONWATCH_LAKE__FLUSH_INTERVAL_S="3600",
            IRONWATCH_LIVE__HEARTBEAT_S="1",
            IRONWATCH_LIVE__MAX_LISTENERS="1",
        )
        world = World(lab, server, tenant, tenant, {"slow-lake": 0})
        listener = world.listen(tenant)
        with server.client(tenant.keys["viewer"]) as client:
            one_more = client.get("/api/v1/live", params={"site": "hall-a"})
        assert one_more.status_code == 503 and one_more.json()["error"]["code"] == "unavailable"
        world.send(tenant, columns("s-9", [now_ms()], [42.0]))
        assert world.series(tenant.keys["viewer"], sensor="s-9", start="-5m").json()["mean"] == [42.0]
        assert world.sql(tenant, "SELECT count(*) FROM readings") == [[0]]  # not in the lake yet
        wait_until(lambda: listener.values() == [42.0], what="the reading on the stream")
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 15
        listener.stop()
        assert listener.named("bye")
        server.start()  # the graceful stop flushed: the reading comes from the lake now, once
        assert world.sql(tenant, "SELECT count(*) FROM readings") == [[1]]
        assert world.series(tenant.keys["viewer"], sensor="s-9", start="-5m").json()["mean"] == [42.0]
    finally:
        lab.close()

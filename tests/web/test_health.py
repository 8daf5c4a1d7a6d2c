"""Gateway and sensor health end to end: real servers, real HTTP, time-related settings set small.

An outage of three hours is simulated by readings stamped three hours ago, sent late and shuffled,
while the gateway's heartbeats report batches it has formed but not delivered yet.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from conftest import Lab, Server, Tenant, wait_until
from ironwatch.ingest.ledger import RangeSet
from ironwatch.store import load_health, set_declared_rate

FAST_LINK = {  # offline after 2 s without contact
    "IRONWATCH_HEALTH__HEARTBEAT_INTERVAL_S": "0.5",
    "IRONWATCH_HEALTH__OFFLINE_AFTER_HEARTBEATS": "4",
}


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def send(
    client: httpx.Client, gateway: str, batch: int, site: str, readings: dict[str, list[datetime]]
) -> None:
    """One batch in columnar form: ``{sensor: [ts, ...]}``."""
    ts = [ms(t) for stamps in readings.values() for t in stamps]
    sensors = [s for s, stamps in readings.items() for _ in stamps]
    doc = {
        "gateway": gateway,
        "batch": batch,
        "site": site,
        "columns": {"ts": ts, "sensor": sensors, "metric": ["rpm"] * len(ts), "value": [1.0] * len(ts)},
    }
    answer = client.post("/api/v1/ingest", json=doc)
    assert answer.status_code == 200 and not answer.json()["duplicate"], answer.text


def beat(client: httpx.Client, gateway: str, site: str, **fields: Any) -> None:
    doc = {"gateway": gateway, "site": site, "ts": datetime.now(UTC).isoformat(), **fields}
    answer = client.post("/api/v1/heartbeat", json=doc)
    assert answer.status_code == 200, answer.text


def get(server: Server, key: str, path: str) -> Any:
    with server.client(key) as client:
        answer = client.get(path)
        assert answer.status_code == 200, answer.text
        return answer.json()


def sql(server: Server, key: str, text: str) -> list[list[Any]]:
    with server.client(key) as client:
        answer = client.post("/api/v1/query", json={"sql": text})
        assert answer.status_code == 200, answer.text
        rows: list[list[Any]] = answer.json()["rows"]
        return rows


def statuses(server: Server, key: str, query: str = "") -> dict[str, str]:
    return {s["sensor"]: s["status"] for s in get(server, key, f"/api/v1/sensors{query}")["sensors"]}


def expected_missing(sent: set[int], reported_last: int) -> list[list[int]]:
    got = RangeSet()
    for n in sent:
        got.add(n)
    missing = got.gaps()
    if got.last is not None and reported_last > got.last:
        missing.append([got.last + 1, reported_last])
    return missing


def test_a_three_hour_outage_shows_its_gap_while_open_and_closes_it(lab: Lab) -> None:
    acme = lab.tenant("acme")
    server = lab.server(**FAST_LINK)
    viewer, analyst = acme.keys["viewer"], acme.keys["analyst"]
    sensors = ["s-1", "s-2", "s-3"]
    start = datetime.now(UTC)
    outage_start = start - timedelta(hours=3)
    backlog = range(6, 42)  # 36 batches of five minutes each: three hours buffered at the gateway
    gw = server.client(acme.keys["gateway"])

    # Before the outage the gateway sends as usual.
    for n in range(1, 6):
        send(gw, "gw-1", n, "hall-a", {s: [outage_start - timedelta(seconds=10 * (6 - n))] for s in sensors})
    beat(gw, "gw-1", "hall-a", buffer_depth=0, last_batch=5)
    doc = get(server, viewer, "/api/v1/gateways/gw-1")
    assert (doc["status"], doc["missing_batches"], doc["last_batch"]) == ("online", [], 5)

    # The link goes down: the gateway is offline and its sensors are link_down, not silent.
    wait_until(
        lambda: get(server, viewer, "/api/v1/gateways/gw-1")["status"] == "offline", 10, what="offline"
    )
    assert statuses(server, viewer) == dict.fromkeys(sensors, "link_down")

    # The link comes back: the heartbeat reports three hours of batches formed but not delivered.
    beat(
        gw,
        "gw-1",
        "hall-a",
        buffer_depth=36 * 30,
        last_batch=41,
        oldest_buffered_ts=outage_start.isoformat(),
        sensors={s: {"last_ts": ms(datetime.now(UTC)), "status": "ok"} for s in sensors},
    )
    doc = get(server, viewer, "/api/v1/gateways/gw-1")
    assert doc["status"] == "online"
    assert doc["missing_batches"] == [[6, 41]] and doc["missing_batch_count"] == 36
    assert doc["backlog"]["undelivered_batches"] == [6, 41]
    assert doc["backlog"]["oldest_buffered_ts"] == outage_start.isoformat()
    assert set(statuses(server, viewer).values()) <= {"ok", "delayed"}, "the link is back: no sensor is down"

    # The backlog arrives late and out of order; meanwhile the gateway forms two more batches.
    order = list(backlog)
    random.Random(3).shuffle(order)
    sent = set(range(1, 6))
    for i, n in enumerate(order[:18]):
        minute = outage_start + timedelta(minutes=5 * (n - 6))
        send(
            gw,
            "gw-1",
            n,
            "hall-a",
            {s: [minute + timedelta(seconds=30 * k) for k in range(10)] for s in sensors},
        )
        sent.add(n)
        if i == 8:
            beat(gw, "gw-1", "hall-a", buffer_depth=27 * 30, last_batch=43)
    doc = get(server, viewer, "/api/v1/gateways/gw-1")
    assert doc["missing_batches"] == expected_missing(sent, 43), "every hole and the tail still on its way"
    assert doc["missing_batch_count"] == 43 - len(sent)
    assert doc["backlog"]["reported_last_batch"] == 43
    assert sql(server, analyst, "SELECT missing_batch_count FROM gateways") == [[43 - len(sent)]]
    ranges = (
        "SELECT gateway, unnest(missing_batches, recursive := true) FROM gateways"  # as in docs/health.md
    )
    assert sql(server, analyst, ranges) == [["gw-1", lo, hi] for lo, hi in expected_missing(sent, 43)]
    silent_with_data = (  # as in docs/health.md: nothing is silent, the link is back
        "SELECT s.sensor, s.last_ts, count(r.value) AS readings_last_hour "
        "FROM sensors s LEFT JOIN readings r "
        "ON r.site = s.site AND r.sensor = s.sensor AND r.ts > now() - INTERVAL 1 HOUR "
        "WHERE s.site = 'hall-a' AND s.status = 'silent' GROUP BY ALL"
    )
    assert sql(server, analyst, silent_with_data) == []

    for n in order[18:]:
        minute = outage_start + timedelta(minutes=5 * (n - 6))
        send(
            gw,
            "gw-1",
            n,
            "hall-a",
            {s: [minute + timedelta(seconds=30 * k) for k in range(10)] for s in sensors},
        )
    now = datetime.now(UTC)
    send(gw, "gw-1", 43, "hall-a", {s: [now] for s in sensors})
    send(gw, "gw-1", 42, "hall-a", {s: [now - timedelta(seconds=1)] for s in sensors})
    beat(gw, "gw-1", "hall-a", buffer_depth=0, last_batch=43)
    gw.close()

    doc = get(server, viewer, "/api/v1/gateways/gw-1")
    assert doc["received_batches"] == [[1, 43]]
    assert (doc["missing_batches"], doc["missing_batch_count"]) == ([], 0), "the gap is closed"
    assert doc["backlog"]["undelivered_batches"] is None and doc["backlog"]["buffer_depth"] == 0
    assert doc["last_batch"] == 43
    by_sensor = {s["sensor"]: s for s in doc["sensors"]}
    assert set(by_sensor) == set(sensors)
    for s in by_sensor.values():
        assert s["readings"] == 5 + 36 * 10 + 2
        assert datetime.fromisoformat(s["last_ts"]) == now.replace(microsecond=now.microsecond // 1000 * 1000)
    assert sql(
        server, analyst, "SELECT missing_batch_count, len(missing_batches), last_batch FROM gateways"
    ) == [[0, 0, 43]]


def test_link_down_and_sensor_silent_are_told_apart(lab: Lab) -> None:
    acme = lab.tenant("acme")
    server = lab.server(
        **FAST_LINK,
        IRONWATCH_HEALTH__SILENT_AFTER_S="2",
        IRONWATCH_HEALTH__DEFAULT_RATE_PER_MIN="1",
    )
    viewer = acme.keys["viewer"]
    with server.client(acme.keys["gateway"]) as gw:
        now = datetime.now(UTC)
        send(gw, "gw-a", 1, "hall-a", {"a-1": [now], "a-2": [now]})
        send(gw, "gw-b", 1, "hall-a", {"b-1": [now]})
        batch = 1

        def gw_a_alive_a2_silent_gw_b_gone() -> bool:
            nonlocal batch
            batch += 1
            send(gw, "gw-a", batch, "hall-a", {"a-1": [datetime.now(UTC)]})
            beat(gw, "gw-a", "hall-a", last_batch=batch)
            return statuses(server, viewer) == {"a-1": "ok", "a-2": "silent", "b-1": "link_down"}

        wait_until(gw_a_alive_a2_silent_gw_b_gone, 20, interval_s=0.2, what="a-2 silent and b-1 link_down")
        assert statuses(server, viewer, "?status=silent") == {"a-2": "silent"}
        assert statuses(server, viewer, "?status=link_down") == {"b-1": "link_down"}
        assert statuses(server, viewer, "?status=ok&site=hall-a") == {"a-1": "ok"}
        assert statuses(server, viewer, "?site=hall-b") == {}
        offline = get(server, viewer, "/api/v1/gateways?status=offline")["gateways"]
        assert [g["gateway"] for g in offline] == ["gw-b"]
        assert offline[0]["sensor_counts"]["link_down"] == 1
        gw_b = get(server, viewer, "/api/v1/gateways/gw-b")
        assert gw_b["status"] == "offline" and [s["status"] for s in gw_b["sensors"]] == ["link_down"]

        # gw-b's link comes back but b-1 stays quiet: now it is the sensor that is silent.
        beat(gw, "gw-b", "hall-a", last_batch=1)
        assert statuses(server, viewer, "?gateway=gw-b") == {"b-1": "silent"}
        assert get(server, viewer, "/api/v1/gateways/gw-b")["status"] == "online"


def test_sensor_rate_against_its_declared_rate(lab: Lab) -> None:
    acme = lab.tenant("acme")
    server = lab.server(
        IRONWATCH_HEALTH__RATE_WINDOW_S="60",
        IRONWATCH_HEALTH__SILENT_AFTER_S="60",
        IRONWATCH_HEALTH__DEFAULT_RATE_PER_MIN="60",
    )
    viewer, analyst = acme.keys["viewer"], acme.keys["analyst"]
    now = datetime.now(UTC)
    with server.client(acme.keys["gateway"]) as gw:
        send(
            gw,
            "gw-1",
            1,
            "hall-a",
            {
                "r-fast": [now - timedelta(seconds=0.5 * i) for i in range(100)],  # 120 a minute
                "r-slow": [now - timedelta(seconds=5 * i) for i in range(10)],  # 12 a minute
            },
        )
    sensors = {s["sensor"]: s for s in get(server, viewer, "/api/v1/sensors")["sensors"]}
    fast, slow = sensors["r-fast"], sensors["r-slow"]
    assert fast["status"] == "ok" and slow["status"] == "stale"
    # Ten readings 5 s apart span 45 s, judged over 45-51 s: about 12 a minute, not exactly.
    assert 85 <= fast["rate_per_min"] <= 135 and 8 <= slow["rate_per_min"] <= 15
    assert fast["declared_rate_per_min"] == slow["declared_rate_per_min"] == 60.0
    assert statuses(server, viewer, "?status=stale") == {"r-slow": "stale"}

    # The registry declares r-slow's own rate (as the asset registry will): it is then ok.
    wait_until(lambda: statuses(server, viewer) and lab.store.sensors("acme"), what="discovery")
    set_declared_rate(lab.store, "acme", "hall-a", "r-slow", 12.0)
    slow = {s["sensor"]: s for s in get(server, viewer, "/api/v1/sensors")["sensors"]}["r-slow"]
    assert (slow["status"], slow["declared_rate_per_min"], slow["registration"]) == ("ok", 12.0, "discovered")
    rows = sql(server, analyst, "SELECT sensor, status, declared_rate_per_min FROM sensors ORDER BY sensor")
    assert rows == [["r-fast", "ok", 60.0], ["r-slow", "ok", 12.0]]


def _tenant_with_data(lab: Lab, name: str, gateway_sensors: dict[str, list[str]], server: Server) -> Tenant:
    tenant = lab.tenant(name)
    with server.client(tenant.keys["gateway"]) as gw:
        now = datetime.now(UTC)
        for gateway, sensors in gateway_sensors.items():
            send(gw, gateway, 1, f"site-{name}", {s: [now] for s in sensors})
            beat(gw, gateway, f"site-{name}", last_batch=3)
    return tenant


def test_tenants_never_see_each_others_gateways_or_sensors(lab: Lab) -> None:
    server = lab.server()
    # "acme" is a prefix of "acme2"; both have a gateway gw-1 and a sensor s-1.
    acme = _tenant_with_data(lab, "acme", {"gw-1": ["s-1", "a-only"], "gw-acme": ["a-2"]}, server)
    acme2 = _tenant_with_data(lab, "acme2", {"gw-1": ["s-1", "b-only"]}, server)
    for tenant, gateways, sensors in (
        (acme, {"gw-1", "gw-acme"}, {"s-1", "a-only", "a-2"}),
        (acme2, {"gw-1"}, {"s-1", "b-only"}),
    ):
        site = f"site-{tenant.name}"
        for role in ("viewer", "mechanic", "analyst", "admin"):
            key = tenant.keys[role]
            listed = get(server, key, "/api/v1/gateways")["gateways"]
            assert {g["gateway"] for g in listed} == gateways and {g["site"] for g in listed} == {site}
            assert get(server, key, "/api/v1/gateways/gw-1")["missing_batches"] == [[2, 3]]
            found = get(server, key, "/api/v1/sensors")["sensors"]
            assert {s["sensor"] for s in found} == sensors and {s["site"] for s in found} == {site}
        analyst = tenant.keys["analyst"]
        assert {r[0] for r in sql(server, analyst, "SELECT sensor FROM sensors")} == sensors
        assert {tuple(r) for r in sql(server, analyst, "SELECT gateway, site FROM gateways")} == {
            (g, site) for g in gateways
        }
        joined = sql(
            server,
            analyst,
            "SELECT s.sensor, count(*) FROM sensors s JOIN gateways g USING (gateway, site) GROUP BY 1",
        )
        assert {r[0] for r in joined} == sensors
        with server.client(analyst) as client:  # query jobs see the same views
            submitted = client.post("/api/v1/queries", json={"sql": "SELECT sensor FROM sensors ORDER BY 1"})
            assert submitted.status_code == 202, submitted.text
            path = f"/api/v1/queries/{submitted.json()['id']}"
            done = lambda job=path: client.get(job).json()["status"] == "succeeded"  # noqa: E731
            wait_until(done, what="the query job")
            assert client.get(f"{path}/result").text.split() == [
                '"sensor"',
                *(f'"{s}"' for s in sorted(sensors)),
            ]
    with server.client(acme2.keys["viewer"]) as other:
        missing = other.get("/api/v1/gateways/gw-acme")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        assert other.get("/api/v1/sensors", params={"site": "site-acme"}).json() == {"sensors": []}
    for path in ("/api/v1/gateways", "/api/v1/gateways/gw-1", "/api/v1/sensors"):
        with server.client(acme.keys["gateway"]) as gw:
            assert gw.get(path).status_code == 403, "gateway keys send, they do not read"
        with server.client() as anonymous:
            assert anonymous.get(path).status_code == 401
    with server.client(acme.keys["viewer"]) as viewer:
        bad = viewer.get("/api/v1/sensors", params={"status": "dead"})
        assert bad.status_code == 422 and bad.json()["error"]["details"]["field"] == "status"


def _health(server: Server, key: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    gateway = get(server, key, "/api/v1/gateways/gw-1")
    sensors = {s["sensor"]: s for s in gateway.pop("sensors")}
    gateway.pop("silent_for_s")
    for s in sensors.values():
        # Time passes, and a graceful stop writes the lake, which registers the sensors.
        for volatile in ("silent_for_s", "rate_per_min", "registration", "first_seen_at"):
            s.pop(volatile)
    return gateway, sensors


def test_health_survives_graceful_and_kill_9_restarts(lab: Lab) -> None:
    acme = lab.tenant("acme")
    env = {
        "IRONWATCH_LAKE__FLUSH_INTERVAL_S": "60",  # batches stay in the write-ahead log
        "IRONWATCH_HEALTH__PERSIST_INTERVAL_S": "0.3",
        "IRONWATCH_HEALTH__HEARTBEAT_INTERVAL_S": "30",
        # A sensor's rate is measured once a bucket of the rate window (60 s) has passed since its
        # first reading; at the default declared rate the few readings here would then make it
        # stale, and its status would depend on when the restarts happen to cross a bucket boundary.
        "IRONWATCH_HEALTH__DEFAULT_RATE_PER_MIN": "0.01",
    }
    server = lab.server(**env)
    viewer = acme.keys["viewer"]
    now = datetime.now(UTC)
    with server.client(acme.keys["gateway"]) as gw:
        for n in (1, 2, 3, 6):
            send(gw, "gw-1", n, "hall-a", {"s-1": [now - timedelta(seconds=10 - n)] * 3, "s-2": [now]})
        beat(gw, "gw-1", "hall-a", buffer_depth=20, last_batch=8, oldest_buffered_ts=ms(now))
    before, sensors_before = _health(server, viewer)
    assert before["missing_batches"] == [[4, 5], [7, 8]]

    server.stop()
    server.start()
    after, sensors_after = _health(server, viewer)
    assert after == before
    assert sensors_after == sensors_before

    # Batch 9 is counted and saved while still in the log; batch 10 perhaps not saved. Then kill -9:
    # the log replays both, and neither may count twice.
    with server.client(acme.keys["gateway"]) as gw:
        send(gw, "gw-1", 9, "hall-a", {"s-1": [now + timedelta(seconds=1)]})

        def saved(batch: int) -> bool:
            gateways, _ = load_health(lab.store)
            return any(batch in RangeSet(g.observed_batches) for g in gateways)

        wait_until(lambda: saved(9), what="batch 9 saved")
        send(gw, "gw-1", 10, "hall-a", {"s-2": [now + timedelta(seconds=2)]})
    server.kill()
    server.start()
    after, sensors_after = _health(server, viewer)
    assert after["missing_batches"] == [[4, 5], [7, 8]]
    assert after["received_batches"] == [[1, 3], [6, 6], [9, 10]]
    assert after["last_heartbeat"] == before["last_heartbeat"]
    assert after["last_seen_at"] >= before["last_seen_at"]
    assert sensors_after["s-1"]["readings"] == sensors_before["s-1"]["readings"] + 1
    assert sensors_after["s-2"]["readings"] == sensors_before["s-2"]["readings"] + 1
    assert datetime.fromisoformat(sensors_after["s-2"]["last_ts"]) > datetime.fromisoformat(
        sensors_before["s-2"]["last_ts"]
    )

    # With the server stopped, a local query reads the health as last saved.
    server.stop()
    command = [sys.executable, "-m", "ironwatch.cli", "query", "--data-dir", str(lab.data_dir)]
    sql_text = "SELECT gateway, missing_batch_count, (SELECT sum(readings) FROM sensors) FROM gateways"
    local = subprocess.run(
        [*command, "--tenant", "acme", "--format", "json", sql_text],
        capture_output=True,
        text=True,
        env={**os.environ, "IRONWATCH_STORE__URL": lab.store_url},
        check=False,
    )
    assert local.returncode == 0, local.stderr
    total = sensors_after["s-1"]["readings"] + sensors_after["s-2"]["readings"]
    assert json.loads(local.stdout)["rows"] == [["gw-1", 4, total]]

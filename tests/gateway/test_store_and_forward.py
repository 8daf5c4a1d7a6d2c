"""Store and forward, end to end: a real gateway process, a real server, outages, kill -9, a full buffer.

Every test ends the same way: the lake holds exactly the readings the gateway sampled minus those it
reports dropped, with no reading twice, checked with SQL against the counts the gateway prints on
its last line.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from gw import GatewayProcess, Proxy, duplicates, settle, simulator_config

from conftest import Broker, Lab, wait_until

GATEWAY = "gw-test"


Check = Callable[[dict[str, Any]], bool]


def _status_ok(gateway: GatewayProcess, check: Check) -> bool:
    try:
        return check(gateway.status())
    except subprocess.CalledProcessError:
        return False


def wait_for(gateway: GatewayProcess, check: Check, what: str, timeout_s: float = 60) -> None:
    """Poll ``gateway status`` until ``check`` holds for its counts."""
    wait_until(lambda: _status_ok(gateway, check), timeout_s, interval_s=0.3, what=what)


def assert_lake_matches(lab_client: object, counts: dict[str, int]) -> None:
    assert counts["buffered"] == 0, counts
    want = counts["sampled"] - counts["dropped"] - counts["dead_lettered"]
    assert counts["acknowledged"] == want, counts
    assert settle(lab_client, GATEWAY, want) == want, counts
    assert duplicates(lab_client, GATEWAY) == 0


def test_server_outage_loses_nothing_and_stores_nothing_twice(lab: Lab, tmp_path: Path) -> None:
    tenant = lab.tenant("acme")
    server = lab.server()
    gateway = GatewayProcess(
        simulator_config(tmp_path / "gw", server.url, key=tenant.keys["gateway"])
    ).start()
    try:
        wait_for(gateway, lambda s: s["acknowledged"] > 1000, "acknowledged > 1000")
        server.stop()
        at_cut = gateway.status()
        wait_for(
            gateway,
            lambda s: s["buffered"] > 2000 and s["sampled"] > at_cut["sampled"] + 2000,
            f"buffered > 2000 and sampled > {at_cut['sampled'] + 2000}",
        )
        server.start()
        wait_for(
            gateway,
            lambda s: s["acknowledged"] > at_cut["sampled"] + 2000,
            f"acknowledged > {at_cut['sampled'] + 2000}",
        )
        # The server saw the gateway's heartbeats again, with its per-sensor status.
        with server.client(tenant.keys["viewer"]) as viewer:
            doc = wait_until(
                lambda: viewer.get(f"/api/v1/gateways/{GATEWAY}").json().get("last_heartbeat"), 20
            )
        assert doc["gateway"] == GATEWAY and "buffer_depth" in doc and len(doc["sensors"]) == 20
        counts = gateway.stop()
    finally:
        gateway.kill()
    with server.client(tenant.keys["analyst"]) as analyst:
        assert_lake_matches(analyst, counts)
    assert counts["dropped"] == 0


def test_a_link_cut_mid_request_loses_nothing(lab: Lab, tmp_path: Path) -> None:
    tenant = lab.tenant("acme")
    server = lab.server()
    proxy = Proxy(server.port)
    gateway = GatewayProcess(simulator_config(tmp_path / "gw", proxy.url, key=tenant.keys["gateway"])).start()
    try:
        wait_for(gateway, lambda s: s["acknowledged"] > 1000, "acknowledged > 1000")
        proxy.cut()
        at_cut = gateway.status()
        wait_for(
            gateway,
            lambda s: s["sampled"] > at_cut["sampled"] + 3000,
            f"sampled > {at_cut['sampled'] + 3000}",
        )
        assert proxy.cuts > 0, "the gateway kept trying through the cut link"
        proxy.heal()
        wait_for(
            gateway,
            lambda s: s["acknowledged"] > at_cut["sampled"] + 3000,
            f"acknowledged > {at_cut['sampled'] + 3000}",
        )
        counts = gateway.stop()
    finally:
        gateway.kill()
        proxy.close()
    with server.client(tenant.keys["analyst"]) as analyst:
        assert_lake_matches(analyst, counts)


def test_kill_9_while_draining_then_restart(lab: Lab, tmp_path: Path) -> None:
    tenant = lab.tenant("acme")
    server = lab.server()
    server.stop()  # the link is down from the start: a backlog builds up
    # 300 sensors x 17 metrics at 10 Hz in batches of 200: a backlog of thousands of batches within
    # seconds, which takes long enough to drain to be killed in the middle of it.
    config = simulator_config(
        tmp_path / "gw",
        server.url,
        key=tenant.keys["gateway"],
        sensors=300,
        rate_per_min=600,
        batch_max_readings=200,
    )
    gateway = GatewayProcess(config).start()
    try:
        wait_for(gateway, lambda s: s["batches"] > 2500, "batches > 2500")
        gateway.kill()
        server.start()
        gateway.start()
        wait_for(gateway, lambda s: s["acknowledged"] > 0, "acknowledged > 0", timeout_s=30)
        gateway.kill()  # while it drains
        backlog = gateway.status()
        assert backlog["buffered"] > 0, "killed before the drain was done"
        # From here on the site samples a tenth as fast (5,100 readings/s instead of 51,000), so that
        # the drain is well ahead of sampling also on a slow, busy machine, and what was sampled
        # since the backlog drained fits in the gateway's few seconds of draining when it stops.
        text = config.read_text()
        assert "rate_per_min = 600\n" in text
        config.write_text(text.replace("rate_per_min = 600\n", "rate_per_min = 60\n"))
        gateway.start()
        wait_for(gateway, lambda s: s["acknowledged"] > backlog["sampled"], "the backlog drained", 120)
        counts = gateway.stop()
    finally:
        gateway.kill()
    with server.client(tenant.keys["analyst"]) as analyst:
        assert_lake_matches(analyst, counts)


def test_a_full_buffer_drops_the_oldest_and_counts_them_exactly(lab: Lab, tmp_path: Path) -> None:
    tenant = lab.tenant("acme")
    server = lab.server()
    server.stop()
    # 300 sensors x 17 metrics at 10 Hz fill a 1 MiB buffer within seconds.
    config = simulator_config(
        tmp_path / "gw",
        server.url,
        key=tenant.keys["gateway"],
        sensors=300,
        rate_per_min=600,
        max_bytes=1 << 20,
        batch_max_readings=5000,
    )
    gateway = GatewayProcess(config).start()
    try:
        wait_for(gateway, lambda s: s["dropped"] > 50000, "dropped > 50000")
        server.start()
        counts = gateway.stop(timeout_s=120)
        # Whatever the short stop drain did not send, a second run (with the server up) sends.
        if counts["buffered"]:
            gateway.start()
            wait_for(
                gateway,
                lambda s: s["acknowledged"] >= counts["sampled"] - counts["dropped"],
                f"acknowledged >= {counts['sampled'] - counts['dropped']}",
                timeout_s=120,
            )
            counts = gateway.stop(timeout_s=120)  # the counts add up over runs
    finally:
        gateway.kill()
    assert counts["dropped"] > 0
    with server.client(tenant.keys["analyst"]) as analyst:
        assert_lake_matches(analyst, counts)


def test_mqtt_uplink_through_a_broker_restarted_mid_stream(lab: Lab, tmp_path: Path, broker: Broker) -> None:
    tenant = lab.tenant("acme")
    lab.store.add_gateway("acme", GATEWAY, "hall-t")
    server = lab.server("--mqtt-url", broker.url)
    config = simulator_config(tmp_path / "gw", broker.url, tenant="acme")
    gateway = GatewayProcess(config).start()
    try:
        wait_for(gateway, lambda s: s["acknowledged"] > 1000, "acknowledged > 1000")
        broker.stop()
        at_cut = gateway.status()
        wait_for(
            gateway,
            lambda s: s["sampled"] > at_cut["sampled"] + 2000,
            f"sampled > {at_cut['sampled'] + 2000}",
        )
        broker.start()
        wait_for(
            gateway,
            lambda s: s["acknowledged"] > at_cut["sampled"] + 2000,
            f"acknowledged > {at_cut['sampled'] + 2000}",
            timeout_s=90,
        )
        counts = gateway.stop()
    finally:
        gateway.kill()
    with server.client(tenant.keys["analyst"]) as analyst:
        assert_lake_matches(analyst, counts)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ironwatch.cli", "gateway", *args], capture_output=True, text=True, timeout=60
    )


BAD_CONFIGS = [
    (
        '[[sources]]\ntype = "plc9000"\n',
        "error: setting sources[0].type: unknown source type 'plc9000' "
        "(expected one of simulator, modbus, opcua, replay)",
    ),
    (
        '[[sources]]\ntype = "modbus"\nhost = "127.0.0.1"\n'
        '[[sources.registers]]\naddress = 0\ntype = "float64"\nsensor = "s-1"\nmetric = "temperature_c"\n',
        "error: setting sources[0].registers[0].type: expected one of int16, uint16, int32, uint32, float32",
    ),
    ('[[sources]]\ntype = "simulator"\nsensors = "many"\n', "error: setting sources[0].sensors:"),
]


@pytest.mark.parametrize(("source", "line"), BAD_CONFIGS, ids=["unknown-type", "bad-register", "bad-option"])
def test_bad_configs_get_one_clear_line(tmp_path: Path, source: str, line: str) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'[gateway]\nid = "gw-1"\nsite = "hall-a"\n[uplink]\nurl = "http://127.0.0.1:9"\nkey = "k"\n{source}'
    )
    for args in (("check", "--config", str(path)), ("--config", str(path))):
        result = _cli(*args)
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith(line), result.stderr


def test_an_unreachable_uplink_is_one_clear_line(tmp_path: Path) -> None:
    from conftest import free_port

    port = free_port()
    path = simulator_config(tmp_path, f"http://127.0.0.1:{port}", key="iw_nothing")
    result = _cli("check", "--config", str(path))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[1] == "sources[0] simulator: ok"
    assert lines[2].startswith(
        f"uplink http://127.0.0.1:{port}: http://127.0.0.1:{port}: ConnectionRefusedError"
    )
    assert len(lines) == 3


def test_init_writes_a_config_that_check_accepts(lab: Lab, tmp_path: Path) -> None:
    tenant = lab.tenant("acme")
    server = lab.server()
    init = _cli(
        "init", "--site", "hall-a", "--gateway", "gw-1", "--uplink", server.url,
        "--key", tenant.keys["gateway"], "--simulator", "--sensors", "30",
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    path = tmp_path / "gateway.toml"
    path.write_text(init.stdout.replace("port = 9108", "port = 0"))
    check = _cli("check", "--config", str(path))
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.splitlines()[-1].endswith("ok (the server took a heartbeat and answered it)")


def test_check_over_mqtt_needs_the_servers_answer(lab: Lab, tmp_path: Path, broker: Broker) -> None:
    lab.tenant("acme")
    lab.store.add_gateway("acme", GATEWAY, "hall-t")
    server = lab.server("--mqtt-url", broker.url)
    config = simulator_config(tmp_path / "gw", broker.url, tenant="acme")
    gateway = GatewayProcess(config).start()  # check runs beside the gateway, under its own client id
    try:
        wait_for(gateway, lambda s: s["acknowledged"] > 0, "acknowledged > 0")
        check = _cli("check", "--config", str(config))
        assert gateway.status()["is_running"]
    finally:
        gateway.kill()
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.splitlines()[-1].endswith("ok (the server took a heartbeat and answered it)")
    server.stop()  # the broker still takes heartbeats for the server's session, but none is answered
    check = _cli("check", "--config", str(config))
    assert check.returncode == 1
    assert "no answer to the heartbeat on ironwatch/acme/hall-t/gw-test/answer within 3 s" in check.stdout


def test_a_gateway_polling_a_modbus_plc_that_goes_away_and_comes_back(lab: Lab, tmp_path: Path) -> None:
    from modbus_plc import ModbusPLC, encode

    from conftest import free_port

    tenant = lab.tenant("acme")
    server = lab.server()
    port = free_port()
    holding = {0: encode(41.5, "float32")[0], 1: encode(41.5, "float32")[1], 2: 1480}
    plc = ModbusPLC(port, holding, {}).start()
    folder = tmp_path / "gw"
    folder.mkdir()
    config = folder / "gateway.toml"
    config.write_text(
        f"""
[gateway]
id = "{GATEWAY}"
site = "hall-t"
heartbeat_interval_s = 0.5
[uplink]
url = "{server.url}"
key = "{tenant.keys["gateway"]}"
backoff_max_s = 0.5
[batch]
interval_s = 0.2
[metrics]
port = 0
[[sources]]
type = "modbus"
host = "127.0.0.1"
port = {port}
interval_s = 0.1
timeout_s = 0.5
[[sources.registers]]
address = 0
type = "float32"
sensor = "m-0001"
metric = "temperature_c"
[[sources.registers]]
address = 2
type = "uint16"
sensor = "m-0001"
metric = "rpm"
"""
    )
    gateway = GatewayProcess(config).start()
    viewer = server.client(tenant.keys["viewer"])

    def sensor_status() -> str | None:
        beat = viewer.get(f"/api/v1/gateways/{GATEWAY}").json().get("last_heartbeat") or {}
        return (beat.get("sensors") or {}).get("m-0001", {}).get("status")

    try:
        wait_for(gateway, lambda s: s["acknowledged"] >= 20, "20 readings from the PLC")
        assert wait_until(lambda: sensor_status() == "ok", 20, what="the sensor reported ok")
        plc.stop()
        wait_until(lambda: sensor_status() == "unreachable", 20, what="the heartbeat saying unreachable")
        during = gateway.status()["sampled"]
        plc.start()
        wait_for(gateway, lambda s: s["sampled"] >= during + 20, "readings again after the PLC came back")
        counts = gateway.stop()
    finally:
        gateway.kill()
        plc.close()
        viewer.close()
    with server.client(tenant.keys["analyst"]) as analyst:
        assert_lake_matches(analyst, counts)
        rows = analyst.post(
            "/api/v1/query",
            json={
                "sql": "SELECT metric, min(value), max(value) FROM readings GROUP BY metric ORDER BY metric"
            },
        ).json()["rows"]
    assert rows == [["rpm", 1480.0, 1480.0], ["temperature_c", 41.5, 41.5]]


def test_backfill_sends_history_once_even_across_restarts(lab: Lab, tmp_path: Path) -> None:
    tenant = lab.tenant("acme")
    server = lab.server()
    config = simulator_config(tmp_path / "gw", server.url, key=tenant.keys["gateway"], sensors=5)
    gateway = GatewayProcess(config, ["--backfill", "0.02"]).start()  # about half an hour of history
    try:
        # 5 sensors x 17 metrics at 60 per minute: 29 minutes of history are about 147,000 readings.
        wait_for(gateway, lambda s: s["sampled"] > 140_000, "the history in the outbox")
        gateway.kill()
        gateway.start()  # the same flag again: the outbox knows the backfill is done
        # The outbox is on disk, so its counts may already hold before the new process runs.
        wait_for(gateway, lambda s: s["is_running"] and s["buffered"] < 1000, "the backlog drained")
        counts = gateway.stop()
    finally:
        gateway.kill()
    assert counts["sampled"] < 160_000, "the history was sent once"
    with server.client(tenant.keys["analyst"]) as analyst:
        assert_lake_matches(analyst, counts)
        sql = f"SELECT epoch_ms(now()) - epoch_ms(min(ts)) FROM readings WHERE gateway = '{GATEWAY}'"
        age_ms = analyst.post("/api/v1/query", json={"sql": sql}).json()["rows"][0][0]
    assert 0.019 * 86_400_000 < age_ms < 0.025 * 86_400_000


def run_until_refused(config: Path) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Run a gateway with 86 s of history until a batch was refused and later ones delivered; its
    final counts and the dead-letter file's entries, which account for every refused reading."""
    import json

    gateway = GatewayProcess(config, ["--backfill", "0.001"]).start()
    try:
        wait_for(gateway, lambda s: s["dead_lettered"] > 0 and s["acknowledged"] > 500, "a refused batch")
        counts = gateway.stop()
    finally:
        gateway.kill()
    letters = [json.loads(line) for line in (config.parent / "outbox-dead.jsonl").read_text().splitlines()]
    assert sum(letter["readings"] for letter in letters) == counts["dead_lettered"]
    return counts, letters


def test_a_refused_batch_goes_to_the_dead_letter_file_and_the_gateway_goes_on(
    lab: Lab, tmp_path: Path
) -> None:
    import base64
    import gzip
    import json

    tenant = lab.tenant("acme")
    # Bodies over 30 kB are refused (413): the history batches of 2000 readings are, the live ones
    # of a few dozen readings are not.
    server = lab.server(IRONWATCH_SERVER__MAX_BODY_BYTES="30000")
    config = simulator_config(
        tmp_path / "gw", server.url, key=tenant.keys["gateway"], sensors=5, batch_max_readings=2000
    )
    counts, letters = run_until_refused(config)
    assert {letter["status"] for letter in letters} == {413}
    assert letters[0]["answer"]["error"]["code"] == "too_large"
    kept = json.loads(gzip.decompress(base64.b64decode(letters[0]["payload_gzip_base64"])))
    assert kept["batch"] == letters[0]["batch"] and len(kept["columns"]["ts"]) == letters[0]["readings"]
    with server.client(tenant.keys["analyst"]) as analyst:
        assert_lake_matches(analyst, counts)


def test_backfill_with_a_simulated_start_time_is_refused_in_one_line(tmp_path: Path) -> None:
    # History ends where live readings begin; a simulator started in the past would overlap it.
    path = simulator_config(
        tmp_path, "http://127.0.0.1:9", key="k", extra_source="start = 2026-01-05T06:00:00Z"
    )
    result = _cli("--config", str(path), "--backfill", "1")
    assert result.returncode == 1
    assert result.stderr == "error: setting --backfill: cannot be combined with a simulator's start option\n"


def test_a_batch_over_the_brokers_packet_limit_is_dead_lettered_and_the_gateway_goes_on(
    lab: Lab, tmp_path: Path, broker: Broker
) -> None:
    broker.stop()  # Mosquitto tells MQTT v5 clients its Maximum Packet Size when they connect
    broker.conf.write_text(broker.conf.read_text() + "max_packet_size 3000\n")
    broker.start()
    tenant = lab.tenant("acme")
    lab.store.add_gateway("acme", GATEWAY, "hall-t")
    server = lab.server("--mqtt-url", broker.url)
    # The history batches of 2000 readings are over 3 kB gzipped, the live ones of a few dozen (and
    # the heartbeats) are not. Not 5 kB: while the simulated lines stand still (at night and on
    # Sundays) their readings compress to ~4.5 kB per 2000, and no batch was refused.
    config = simulator_config(tmp_path / "gw", broker.url, tenant="acme", sensors=5, batch_max_readings=2000)
    counts, letters = run_until_refused(config)
    assert letters[0]["answer"]["error"]["code"] == "too_large"
    assert "takes packets of at most 3000 bytes" in letters[0]["answer"]["error"]["message"]
    with server.client(tenant.keys["analyst"]) as analyst:
        assert_lake_matches(analyst, counts)

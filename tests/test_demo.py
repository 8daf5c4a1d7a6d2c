"""The demo: the real `ironwatch demo` command, its synthetic site, and a feed that outlives a crash."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from conftest import Lab, Server, wait_until
from ironwatch.demo import METRICS, Feed, Link, Site

SENSORS = 60


class Demo:
    """``ironwatch demo`` in a subprocess, its stdout read line by line as it comes."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        env = {**os.environ, "IRONWATCH_LAKE__FLUSH_INTERVAL_S": "1"}
        command = [sys.executable, "-m", "ironwatch.cli", "demo", "--data-dir", str(data_dir), *args]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def value_after(self, prefix: str, timeout_s: float = 60) -> str:
        """The rest of the first stdout line that starts with ``prefix`` (after indentation)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for line in self.lines:
                if line.strip().startswith(prefix):
                    return line.strip()[len(prefix) :]
            try:
                got = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                got = None
            if got is None:
                raise AssertionError(f"no line starting with {prefix!r} in {self.lines} {self.stderr()}")
            self.lines.append(got)

    def wait(self, timeout_s: float = 60) -> int:
        code = self.proc.wait(timeout=timeout_s)
        self.value_after("demo stopped:", timeout_s=5)
        return code

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def sql(url: str, key: str, text: str) -> list[list[Any]]:
    answer = httpx.post(f"{url}/api/v1/query", json={"sql": text}, headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    rows: list[list[Any]] = answer.json()["rows"]
    return rows


def test_demo_feeds_a_site_and_stops_when_its_time_is_up(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo-data"
    demo = Demo(data_dir, "--port", "0", "--duration", "8", "--sensors", str(SENSORS))
    try:
        url = demo.value_after("export IRONWATCH_URL=")
        key = demo.value_after("export IRONWATCH_KEY=")
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")

        def every_series() -> bool:
            rows = sql(
                url, key, "SELECT count(DISTINCT sensor), count(DISTINCT (sensor, metric)) FROM readings"
            )
            return rows == [[SENSORS, SENSORS * len(METRICS)]]

        wait_until(every_series, 30, 0.2, "every sensor and metric in SQL")
        metrics = sql(url, key, "SELECT DISTINCT metric FROM readings ORDER BY metric")
        assert [m for (m,) in metrics] == sorted(METRICS)
        banner_ms = int(time.time() * 1000)  # the banner came after the backfill was acknowledged

        def backfilled_and_live() -> bool:
            first, last = sql(url, key, "SELECT epoch_ms(min(ts)), epoch_ms(max(ts)) FROM readings")[0]
            return bool(first <= banner_ms - 29 * 60 * 1000 and last > banner_ms)

        wait_until(backfilled_and_live, 20, 0.2, "half an hour of backfill, then live readings")
        assert demo.wait() == 0, demo.stderr()
    finally:
        demo.kill()

    # A second run continues the same data: new keys, the old ones revoked, batch numbers in sequence.
    again = Demo(data_dir, "--port", "0", "--duration", "2", "--sensors", str(SENSORS))
    try:
        url = again.value_after("export IRONWATCH_URL=")
        new_key = again.value_after("export IRONWATCH_KEY=")
        assert new_key != key
        refused = httpx.post(
            f"{url}/api/v1/query", json={"sql": "SELECT 1"}, headers={"Authorization": f"Bearer {key}"}
        )
        assert refused.status_code == 401
        assert again.wait() == 0, again.stderr()
    finally:
        again.kill()

    server = Server(data_dir).start()
    try:
        # the analyst key of the second run is revoked only by a third run, so it still reads
        with server.client(new_key) as client:
            gateways = client.get("/api/v1/gateways").json()["gateways"]
        assert [g["gateway"] for g in gateways] == ["gw-hall-a"]
        assert len(gateways[0]["received_batches"]) == 1, gateways  # one range: no gap, no repeat
        (total, distinct) = sql(
            server.url, new_key, "SELECT count(*), count(DISTINCT (sensor, metric, ts)) FROM readings"
        )[0]
        assert total == distinct
    finally:
        server.stop()


def test_site_values_are_plausible_and_vectorised() -> None:
    site = Site(50)
    ts = site.timestamps(1_795_500_000_000, 1_795_500_010_000)
    assert list(ts) == [1_795_500_000_000 + 1000 * i for i in range(1, 11)]
    window = site.window(ts)
    assert window.count == 10 * 50 * len(METRICS) == len(window.sensor) == len(window.metric)
    values = window.value.reshape(10, 50, len(METRICS))
    assert np.isfinite(values).all() and (values >= 0).all()

    def metric(name: str) -> np.ndarray:
        return values[:, :, METRICS.index(name)]

    assert 30 < metric("temperature_c").mean() < 80
    assert 1400 < metric("rpm").mean() < 1520
    assert metric("voltage_v").min() > 380 and metric("voltage_v").max() < 420
    assert (metric("humidity_pct") <= 100).all()
    power = np.sqrt(3) * metric("voltage_v") * metric("current_a") * 0.85 / 1000
    assert np.allclose(metric("power_kw"), power, atol=0.01)
    # The same seed gives the same machines; a later window continues the same curves.
    assert np.allclose(
        Site(50).window(ts).value.reshape(10, 50, -1).mean(axis=0), values.mean(axis=0), rtol=0.2
    )


def test_feed_survives_a_server_crash_without_gaps_or_repeats(lab: Lab) -> None:
    acme = lab.tenant("acme", "gateway", "analyst")
    server = lab.server()
    site = Site(5)
    stop = threading.Event()
    feed = Feed(
        Link(server.url, acme.keys["gateway"], timeout_s=10),
        site,
        site_id="hall-a",
        gateway="gw-1",
        first_batch=1,
        fed_until_ms=int(time.time() * 1000) - 60_000,
        interval_s=0.2,
        max_batch_readings=5 * site.readings_per_period,
    )
    thread = threading.Thread(target=feed.run, args=(stop,), kwargs={"heartbeat_s": 0.5})
    thread.start()
    try:
        wait_until(lambda: feed.batches_sent >= 14, what="the backfill and a few live batches")
        server.kill()
        wait_until(lambda: feed.retries >= 2, what="the feed to notice the crash")
        server.start()
        sent = feed.batches_sent
        wait_until(lambda: feed.batches_sent >= sent + 3, what="batches after the restart")
    finally:
        stop.set()
        thread.join(timeout=30)
        feed.link.close()
    assert not thread.is_alive()

    key = acme.keys["analyst"]
    with server.client(key) as client:
        gateways = client.get("/api/v1/gateways").json()["gateways"]
    assert gateways[0]["received_batches"] == [[1, feed.next_batch - 1]]
    assert gateways[0]["last_heartbeat"]["gateway"] == "gw-1"

    def all_stored() -> list[list[Any]]:
        rows = sql(server.url, key, "SELECT epoch_ms(max(ts)) FROM readings")
        return rows if rows[0][0] == feed.fed_until_ms else []

    wait_until(all_stored, what="every acknowledged reading in SQL")
    total, distinct, times, first, last = sql(
        server.url,
        key,
        "SELECT count(*), count(DISTINCT (sensor, metric, ts)), count(DISTINCT ts), "
        "epoch_ms(min(ts)), epoch_ms(max(ts)) FROM readings",
    )[0]
    assert total == distinct == times * site.readings_per_period
    assert (last - first) // site.period_ms + 1 == times  # every period from the first to the last

"""Readings for SQL tests: sent to a real server over HTTP, and waited for until SQL sees them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from conftest import Server, Tenant, wait_until

#: A fixed hour, so answers can be written down in tests.
BASE = datetime(2026, 11, 24, 10, tzinfo=UTC)


def readings(site: str, sensors: list[str], metrics: list[str], steps: int) -> list[dict[str, Any]]:
    """One reading per sensor, metric and second; ``value`` is ``step + 10 * sensor index``."""
    out = []
    for step in range(steps):
        ts = (BASE + timedelta(seconds=step)).isoformat()
        for i, sensor in enumerate(sensors):
            for metric in metrics:
                out.append({"ts": ts, "sensor": sensor, "metric": metric, "value": float(step + 10 * i)})
    return out


def send(server: Server, tenant: Tenant, site: str, rows: list[dict[str, Any]], batch: int = 1) -> None:
    """Ingest ``rows`` as one batch of gateway ``gw-{site}`` and wait until SQL counts them."""
    with server.client(tenant.keys["gateway"]) as gw:
        envelope = {"gateway": f"gw-{site}", "batch": batch, "site": site, "readings": rows}
        answer = gw.post("/api/v1/ingest", json=envelope)
        assert answer.status_code == 200 and answer.json()["accepted"] == len(rows), answer.text
    with server.client(tenant.keys["analyst"]) as analyst:
        wait_until(
            lambda: count(analyst, f"SELECT count(*) FROM readings WHERE site = '{site}'") == len(rows),
            what=f"{tenant.name}'s readings of {site} in SQL",
        )


def count(client: httpx.Client, sql: str) -> int:
    answer = client.post("/api/v1/query", json={"sql": sql})
    assert answer.status_code == 200, answer.text
    return int(answer.json()["rows"][0][0])


def assert_error(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The answer is the API's one error shape with this status and code; returns the error."""
    assert answer.status_code == status, answer.text
    doc = answer.json()
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message", "details"}, doc
    assert doc["error"]["code"] == code, doc
    assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
    return dict(doc["error"])

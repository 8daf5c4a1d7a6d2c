"""The smallest end-to-end path: a batch in over HTTP, the same rows back out through SQL."""

from __future__ import annotations

from conftest import Lab, wait_until


def test_batch_round_trip(lab: Lab) -> None:
    acme = lab.tenant("acme")
    server = lab.server()
    body = {
        "gateway": "gw-1",
        "batch": 7,
        "site": "hall-a",
        "readings": [
            {"ts": "2026-11-24T10:00:00.250Z", "sensor": "s-0001", "metric": "temperature_c", "value": 41.7},
            {"ts": 1795530000000, "sensor": "s-0002", "metric": "rpm", "value": 1450},
        ],
    }
    with server.client(acme.keys["gateway"]) as gw:
        answer = gw.post("/api/v1/ingest", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"accepted": 2, "rejected": 0, "duplicate": False, "errors": []}
    with server.client(acme.keys["analyst"]) as analyst:

        def rows() -> list[list[object]]:
            r = analyst.post(
                "/api/v1/query", json={"sql": "SELECT sensor, value FROM readings ORDER BY sensor"}
            )
            assert r.status_code == 200, r.text
            return r.json()["rows"]

        # A flush writes one file per hour partition, one after the other: wait for both.
        expected = [["s-0001", 41.7], ["s-0002", 1450.0]]
        assert wait_until(lambda: rows() == expected, what="rows in the lake")

"""The whole server with its metadata in a real PostgreSQL instead of SQLite."""

from __future__ import annotations

from pathlib import Path

from conftest import Lab, wait_until
from pg import postgres_cluster


def test_ingest_and_query_with_postgres_metadata(tmp_path: Path) -> None:
    with postgres_cluster() as url:
        lab = Lab(tmp_path / "data", store_url=url)
        try:
            acme = lab.tenant("acme", "gateway", "analyst")
            server = lab.server()
            batch = {
                "gateway": "gw-1",
                "batch": 1,
                "site": "hall-a",
                "columns": {
                    "ts": ["2026-11-24T10:00:00Z", "2026-11-24T10:00:01Z"],
                    "sensor": ["s-1", "s-2"],
                    "metric": ["rpm", "rpm"],
                    "value": [1450.0, 1452.5],
                },
            }
            with server.client(acme.keys["gateway"]) as gw:
                assert gw.post("/api/v1/ingest", json=batch).json()["accepted"] == 2
                assert gw.post("/api/v1/ingest", json=batch).json()["duplicate"] is True
            with server.client(acme.keys["analyst"]) as analyst:

                def total() -> object:
                    r = analyst.post("/api/v1/query", json={"sql": "SELECT sum(value) FROM readings"})
                    return r.json()["rows"][0][0]

                assert wait_until(total, what="readings in SQL") == 2902.5
                sensors = wait_until(
                    lambda: analyst.get("/api/v1/sensors").json()["sensors"], what="discovery"
                )
                assert [s["sensor"] for s in sensors] == ["s-1", "s-2"]
            gateway = lab.store.gateway("acme", "gw-1")
            assert gateway is not None and gateway.site == "hall-a", (
                "registered on first contact, in PostgreSQL"
            )
        finally:
            lab.close()

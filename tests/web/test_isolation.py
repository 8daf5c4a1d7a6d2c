"""Tenant isolation over HTTP: a key reads and writes only its own tenant, and SQL cannot escape.

The two tenants are named ``acme`` and ``acme2`` on purpose: one root's path is a prefix of the
other's, so a sandbox that compared paths as plain strings would let ``acme`` read ``acme2``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pyarrow.dataset as ds
import pytest

from conftest import Lab, Server, Tenant, wait_until

KEY_CACHE_S = 1.0
UNKNOWN = "iw_000000000000_" + "u" * 32
ROLES = ("admin", "analyst", "mechanic", "viewer", "gateway")
BASE = (datetime.now(UTC) - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)


def at(seconds: float) -> str:
    return (BASE + timedelta(seconds=seconds)).isoformat()


def batch(gateway: str, n: int, site: str, sensors: list[str], **extra: Any) -> dict[str, Any]:
    readings: list[dict[str, Any]] = [
        {"ts": at(i), "sensor": s, "metric": "rpm", "value": float(i)} for i, s in enumerate(sensors)
    ]
    readings.append({"ts": "not a time", "sensor": sensors[0], "metric": "rpm", "value": 1.0})
    return {"gateway": gateway, "batch": n, "site": site, "readings": readings, **extra}


@dataclass
class World:
    lab: Lab
    server: Server
    acme: Tenant
    acme2: Tenant
    answers: dict[str, httpx.Response]
    role_keys: dict[str, str]  # a key of each role, each in a tenant of its own

    def client(self, key: str | None) -> httpx.Client:
        return self.server.client(key)

    def root(self, tenant: str) -> Path:
        return self.lab.data_dir / "lake" / tenant


ACME_SENSORS = ["a-1", "a-2", "a-3"]
ACME2_SENSORS = ["b-1", "b-2"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    lab = Lab(tmp_path_factory.mktemp("isolation") / "data")
    acme, acme2 = lab.tenant("acme"), lab.tenant("acme2")
    role_keys = {role: lab.tenant(f"roles-{role}", role).keys[role] for role in ROLES}
    server = lab.server(IRONWATCH_AUTH__KEY_CACHE_S=str(KEY_CACHE_S))
    answers = {}
    try:
        with server.client(acme.keys["gateway"]) as gw:
            answers["acme"] = gw.post("/api/v1/ingest", json=batch("gw-1", 1, "hall-a", ACME_SENSORS))
            # The body cannot choose the tenant: the key does.
            answers["acme claims acme2"] = gw.post(
                "/api/v1/ingest",
                json=batch("gw-1", 2, "hall-a", ["a-claims-b"], tenant="acme2"),
            )
        with server.client(acme2.keys["gateway"]) as gw:
            # Same gateway name and batch number as acme's, registered to another site: no conflict.
            answers["acme2"] = gw.post("/api/v1/ingest", json=batch("gw-1", 1, "hall-b", ACME2_SENSORS))
        for tenant, stored, quarantined in ((acme, 4, 2), (acme2, 2, 1)):
            with server.client(tenant.keys["analyst"]) as analyst:
                wait_until(
                    lambda a=analyst, n=stored, q=quarantined: (
                        (count(a, "readings"), count(a, "quarantine")) == (n, q)
                    ),
                    what=f"{tenant.name}'s readings in the lake",
                )
        yield World(lab, server, acme, acme2, answers, role_keys)
    finally:
        lab.close()


def query(client: httpx.Client, sql: str) -> httpx.Response:
    return client.post("/api/v1/query", json={"sql": sql})


def rows(client: httpx.Client, sql: str) -> list[list[Any]]:
    r = query(client, sql)
    assert r.status_code == 200, r.text
    return list(r.json()["rows"])


def count(client: httpx.Client, view: str) -> int:
    return int(rows(client, f"SELECT count(*) FROM {view}")[0][0])


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    doc = r.json()
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message", "details"}, doc
    assert doc["error"]["code"] == code, doc
    assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
    return dict(doc["error"])


# --- writing -----------------------------------------------------------------------------------------


def test_ingest_goes_into_the_keys_tenant_whatever_the_body_says(world: World) -> None:
    assert world.answers["acme claims acme2"].json()["accepted"] == 1
    with world.client(world.acme.keys["analyst"]) as a, world.client(world.acme2.keys["analyst"]) as b:
        assert rows(a, "SELECT count(*) FROM readings WHERE sensor = 'a-claims-b'") == [[1]]
        assert rows(b, "SELECT count(*) FROM readings WHERE sensor = 'a-claims-b'") == [[0]]
    # And on disk: nothing of acme's is under acme2's root.
    table = ds.dataset(world.root("acme2") / "readings", format="parquet", partitioning="hive").to_table()
    assert set(table["sensor"].to_pylist()) == set(ACME2_SENSORS)


def test_same_gateway_and_batch_in_two_tenants_are_two_batches(world: World) -> None:
    for name in ("acme", "acme2"):
        answer = world.answers[name]
        assert answer.status_code == 200, answer.text
        assert answer.json()["duplicate"] is False
        assert answer.json()["accepted"] == len(ACME_SENSORS if name == "acme" else ACME2_SENSORS)
    with world.client(world.acme.keys["admin"]) as a, world.client(world.acme2.keys["admin"]) as b:
        sites_a = {g["gateway"]: g["site"] for g in a.get("/api/v1/gateways").json()["gateways"]}
        sites_b = {g["gateway"]: g["site"] for g in b.get("/api/v1/gateways").json()["gateways"]}
    assert sites_a == {"gw-1": "hall-a"}
    assert sites_b == {"gw-1": "hall-b"}


# --- reading -----------------------------------------------------------------------------------------


def test_each_tenant_reads_only_its_own_rows(world: World) -> None:
    with world.client(world.acme.keys["analyst"]) as a, world.client(world.acme2.keys["analyst"]) as b:
        assert rows(a, "SELECT DISTINCT sensor FROM readings ORDER BY 1") == [
            [s] for s in sorted([*ACME_SENSORS, "a-claims-b"])
        ]
        assert rows(b, "SELECT DISTINCT sensor FROM readings ORDER BY 1") == [[s] for s in ACME2_SENSORS]
        assert rows(a, "SELECT DISTINCT site FROM readings") == [["hall-a"]]
        assert rows(b, "SELECT DISTINCT site FROM readings") == [["hall-b"]]
        assert {r[0] for r in rows(a, "SELECT sensor FROM quarantine")} <= {"a-1", "a-claims-b"}
        assert {r[0] for r in rows(b, "SELECT sensor FROM quarantine")} == {"b-1"}
        sensors_a = {s["sensor"] for s in a.get("/api/v1/sensors").json()["sensors"]}
        sensors_b = {s["sensor"] for s in b.get("/api/v1/sensors").json()["sensors"]}
    assert sensors_a == {*ACME_SENSORS, "a-claims-b"}
    assert sensors_b == set(ACME2_SENSORS)


def test_own_files_by_path_are_readable(world: World) -> None:
    """The refusals below are about where a path leads, not about the functions used."""
    own = world.root("acme")
    with world.client(world.acme.keys["analyst"]) as a:
        sql = f"SELECT count(*) FROM read_parquet('{own}/readings/**/*.parquet', hive_partitioning = true)"
        assert rows(a, sql) == [[4]]


ESCAPES = {
    "read_parquet of the other root": "SELECT * FROM read_parquet('{other}/readings/**/*.parquet')",
    "hive read of the other root": (
        "SELECT * FROM read_parquet('{other}/readings/**/*.parquet', hive_partitioning = true)"
    ),
    "../ from the own root": "SELECT * FROM read_parquet('{own}/../acme2/readings/**/*.parquet')",
    "../../ from a partition": (
        "SELECT * FROM read_parquet('{own}/readings/../../acme2/readings/**/*.parquet')"
    ),
    "glob over every tenant": "SELECT * FROM read_parquet('{lake}/*/readings/**/*.parquet')",
    "own root as a string prefix": "SELECT * FROM read_parquet('{own}*/readings/**/*.parquet')",
    "glob of the data dir": "SELECT * FROM glob('{data}/**')",
    "glob above the own root": "SELECT * FROM glob('{own}/../*')",
    "relative path": "SELECT * FROM glob('*')",
    "read_csv /etc/passwd": "SELECT * FROM read_csv('/etc/passwd')",
    "read_text /etc/passwd": "SELECT * FROM read_text('/etc/passwd')",
    "read_blob of the metadata database": "SELECT * FROM read_blob('{data}/ironwatch.db')",
    "read_json of the log checkpoint": "SELECT * FROM read_json('{data}/wal/checkpoint.json')",
    "query temp directory": "SELECT * FROM glob('{cwd}/.tmp/*')",
    "network": "SELECT * FROM read_parquet('http://127.0.0.1:9/x.parquet')",
    "COPY TO a file": "COPY (SELECT * FROM readings) TO '{scratch}/copy.csv'",
    "COPY TO the own root": "COPY readings TO '{own}/readings/evil.parquet' (FORMAT parquet)",
    "EXPORT DATABASE": "EXPORT DATABASE '{scratch}/export'",
    "ATTACH the metadata database": "ATTACH '{data}/ironwatch.db' AS meta",
    "ATTACH a new file": "ATTACH '{scratch}/new.duckdb' AS scratch",
    "INSTALL": "INSTALL httpfs",
    "LOAD": "LOAD httpfs",
    "SET external access": "SET enable_external_access = true",
    "SET allowed_directories": "SET allowed_directories = ['/']",
    "RESET": "RESET allowed_directories",
    "PRAGMA": "PRAGMA enable_profiling",
    "CREATE TABLE": "CREATE TABLE t AS SELECT * FROM readings",
    "DROP VIEW": "DROP VIEW readings",
    "two statements": "SELECT 1; SELECT * FROM read_csv('/etc/passwd')",
    "CTE around read_csv": "WITH x AS (SELECT * FROM read_csv('/etc/passwd')) SELECT * FROM x",
    "subquery around read_text": "SELECT (SELECT content FROM read_text('/etc/passwd'))",
}


@pytest.mark.parametrize("sql", list(ESCAPES.values()), ids=list(ESCAPES))
def test_sql_that_leaves_the_tenant_root_is_refused(world: World, sql: str, tmp_path: Path) -> None:
    text = sql.format(
        own=world.root("acme"),
        other=world.root("acme2"),
        lake=world.lab.data_dir / "lake",
        data=world.lab.data_dir,
        cwd=os.getcwd(),
        scratch=tmp_path,
    )
    lake = world.lab.data_dir / "lake"
    before = sorted(lake.rglob("*"))
    with world.client(world.acme.keys["analyst"]) as a:
        assert_error(query(a, text), 400, "query")
    assert list(tmp_path.iterdir()) == []
    assert sorted(lake.rglob("*")) == before


def test_ordinary_sql_still_answers(world: World) -> None:
    """Sums of integers (HUGEINT), decimals, blobs and intervals come back as JSON, not as a 500."""
    with world.client(world.acme.keys["analyst"]) as a:
        got = rows(
            a,
            "SELECT sum(batch) AS s, 1.25::DECIMAL(5, 2) AS d, 'ab'::BLOB AS b, INTERVAL 90 MINUTE AS i "
            "FROM readings",
        )
    assert got[0][:3] == [5, 1.25, "YWI="]  # the blob in base64
    assert isinstance(got[0][3], str)


# --- roles -----------------------------------------------------------------------------------------

ACTIONS: dict[str, tuple[str, str, Any, set[str]]] = {
    # action: (method, path, JSON body, roles allowed)
    "query": ("POST", "/api/v1/query", {"sql": "SELECT 1"}, {"admin", "analyst"}),
    "create key": ("POST", "/api/v1/keys", {"role": "viewer"}, {"admin"}),
    "list keys": ("GET", "/api/v1/keys", None, {"admin"}),
    "list gateways": ("GET", "/api/v1/gateways", None, {"admin", "analyst", "mechanic", "viewer"}),
    "list sensors": ("GET", "/api/v1/sensors", None, {"admin", "analyst", "mechanic", "viewer"}),
    "add gateway": ("POST", "/api/v1/gateways", {"gateway": "gw-9", "site": "hall-9"}, {"admin"}),
    "ingest": ("POST", "/api/v1/ingest", batch("gw-roles", 1, "hall-r", ["r-1"]), {"admin", "gateway"}),
}


@pytest.mark.parametrize("action", list(ACTIONS))
@pytest.mark.parametrize("role", ROLES)
def test_roles_limit_what_a_key_may_do(world: World, role: str, action: str) -> None:
    method, path, body, allowed = ACTIONS[action]
    with world.client(world.role_keys[role]) as c:
        r = c.request(method, path, json=body)
    if role in allowed:
        assert r.status_code in (200, 201), r.text
    else:
        error = assert_error(r, 403, "forbidden")
        assert role in error["message"]


# --- revocation ----------------------------------------------------------------------------------------


def test_key_revoked_through_the_api_is_refused_at_once(world: World) -> None:
    with world.client(world.acme.keys["admin"]) as admin:
        created = admin.post("/api/v1/keys", json={"role": "analyst", "label": "short-lived"})
        assert created.status_code == 201, created.text
        key_id, secret = created.json()["id"], created.json()["key"]
        with world.client(secret) as analyst:
            assert query(analyst, "SELECT 1").status_code == 200  # now in the server's key cache
            revoked = admin.delete(f"/api/v1/keys/{key_id}")
            assert revoked.status_code == 200, revoked.text
            assert_error(query(analyst, "SELECT 1"), 401, "unauthenticated")
            assert_error(analyst.get("/api/v1/whoami"), 401, "unauthenticated")
        listed = {k["id"]: k for k in admin.get("/api/v1/keys").json()["keys"]}
        assert listed[key_id]["revoked_at"] is not None


def test_key_revoked_in_the_store_is_refused_within_the_cache_time(world: World) -> None:
    key, secret = world.lab.store.create_key("acme", "analyst", label="revoked offline")
    with world.client(secret) as analyst:
        assert query(analyst, "SELECT 1").status_code == 200  # cached for KEY_CACHE_S
        world.lab.store.revoke_key(key.id)
        revoked_at = time.monotonic()
        wait_until(
            lambda: query(analyst, "SELECT 1").status_code == 401,
            timeout_s=KEY_CACHE_S + 5,
            what="the revoked key to be refused",
        )
        assert time.monotonic() - revoked_at <= KEY_CACHE_S + 2.0  # the cache time plus a slow request
        assert_error(analyst.get("/api/v1/whoami"), 401, "unauthenticated")


def test_an_admin_cannot_see_or_revoke_another_tenants_keys(world: World) -> None:
    with world.client(world.acme2.keys["admin"]) as admin2:
        theirs = {k["id"] for k in admin2.get("/api/v1/keys").json()["keys"]}
    with world.client(world.acme.keys["admin"]) as admin:
        ours = {k["id"] for k in admin.get("/api/v1/keys").json()["keys"]}
        assert ours and theirs and not ours & theirs
        for key_id in sorted(theirs):
            assert_error(admin.delete(f"/api/v1/keys/{key_id}"), 404, "not_found")
    with world.client(world.acme2.keys["analyst"]) as analyst2:
        assert query(analyst2, "SELECT 1").status_code == 200


# --- every route needs a key ---------------------------------------------------------------------------


def test_every_api_route_in_the_openapi_document_needs_a_key(world: World) -> None:
    with world.client(None) as anonymous:
        spec = anonymous.get("/api/v1/openapi.json")
        assert spec.status_code == 200, spec.text
        operations = [
            (method.upper(), path)
            for path, item in spec.json()["paths"].items()
            if path.startswith("/api/v1/")
            for method in item
            if method in {"get", "post", "put", "patch", "delete"}
        ]
        # The list is read from the document, so new routes are covered without editing this test.
        assert {
            ("POST", "/api/v1/ingest"),
            ("POST", "/api/v1/query"),
            ("DELETE", "/api/v1/keys/{key_id}"),
        } <= set(operations)
        wrong: list[str] = []
        for method, path in operations:
            url = re.sub(r"\{[^}]+\}", "x-1", path)
            for who, headers in (("no key", {}), ("unknown key", {"Authorization": f"Bearer {UNKNOWN}"})):
                r = anonymous.request(method, url, headers=headers, json={})
                doc = r.json()
                if (
                    r.status_code != 401
                    or doc.get("error", {}).get("code") != "unauthenticated"
                    or r.headers.get("www-authenticate") != "Bearer"
                ):
                    wrong.append(f"{method} {url} with {who}: {r.status_code} {doc}")
    assert wrong == []


def test_the_servers_reused_sandboxes_keep_tenants_apart(world: World) -> None:
    """The server lends each query a DuckDB kept from an earlier one; only ever one of its own tenant.

    By now both tenants' sandboxes have served the escapes above; interleaved queries, each with its
    tenant's ``sensors`` table registered, still see only their own root, rows and sensors.
    """
    tenants = (("acme", sorted([*ACME_SENSORS, "a-claims-b"])), ("acme2", ACME2_SENSORS))
    with world.client(world.acme.keys["analyst"]) as a, world.client(world.acme2.keys["analyst"]) as b:
        for _ in range(3):
            for (name, sensors), client in zip(tenants, (a, b), strict=True):
                assert rows(client, "SELECT DISTINCT sensor FROM readings ORDER BY 1") == [
                    [s] for s in sensors
                ]
                assert {r[0] for r in rows(client, "SELECT sensor FROM sensors")} == set(sensors)
                assert rows(client, "SELECT current_setting('allowed_directories')") == [
                    [[f"{world.root(name)}/"]]
                ]

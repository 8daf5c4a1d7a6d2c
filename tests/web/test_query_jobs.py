"""Query jobs over real HTTP against a real server: lifecycle, results, cancel, restarts, tenancy, roles.

The module's server has one worker, so a job that runs until it is cancelled (``BLOCKER``) keeps the
next one queued for as long as a test needs to look at it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pyarrow.csv as pacsv
import pytest
from test_isolation import ESCAPES

from conftest import Lab, Server, Tenant, wait_until
from seed import assert_error, readings, send

BLOCKER = "SELECT sum(i) FROM range(1000000000000000) t(i)"
FINISHED = {"succeeded", "failed", "cancelled"}
ROLES = ("admin", "analyst", "mechanic", "viewer", "gateway")
MAX_ROWS = 5000


@dataclass
class World:
    lab: Lab
    server: Server
    acme: Tenant
    acme2: Tenant
    role_keys: dict[str, str]

    def client(self, key: str) -> httpx.Client:
        return self.server.client(key)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    lab = Lab(tmp_path_factory.mktemp("jobs") / "data")
    acme, acme2 = lab.tenant("acme"), lab.tenant("acme2")
    role_keys = {role: lab.tenant(f"roles-{role}", role).keys[role] for role in ROLES}
    server = lab.server(
        IRONWATCH_QUERY__WORKERS="1",
        IRONWATCH_QUERY__MAX_ROWS=str(MAX_ROWS),
        IRONWATCH_QUERY__JOB_TIMEOUT_S="60",
    )
    try:
        send(server, acme, "hall-a", readings("hall-a", ["a-1", "a-2", "a-3"], ["rpm", "temp"], 300))
        send(server, acme2, "hall-b", readings("hall-b", ["b-1"], ["rpm"], 10))
        yield World(lab, server, acme, acme2, role_keys)
    finally:
        lab.close()


def submit(client: httpx.Client, sql: str) -> dict[str, Any]:
    answer = client.post("/api/v1/queries", json={"sql": sql})
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert answer.headers["location"] == f"/api/v1/queries/{job['id']}"
    return dict(job)


def job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    answer = client.get(f"/api/v1/queries/{job_id}")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def wait_status(client: httpx.Client, job_id: str, *statuses: str, timeout_s: float = 60) -> dict[str, Any]:
    found: dict[str, Any] = wait_until(
        lambda: (j := job(client, job_id))["status"] in statuses and j,
        timeout_s=timeout_s,
        what=f"query {job_id} to be {' or '.join(statuses)}",
    )
    return found


def sync_csv(client: httpx.Client, sql: str) -> bytes:
    answer = client.post("/api/v1/query", json={"sql": sql, "format": "csv"})
    assert answer.status_code == 200, answer.text
    return answer.content


# --- lifecycle -------------------------------------------------------------------------------------


def test_a_job_is_queued_then_runs_then_succeeds(world: World) -> None:
    with world.client(world.acme.keys["analyst"]) as c:
        blocker = submit(c, BLOCKER)
        try:
            wait_status(c, blocker["id"], "running")
            sql = "SELECT sensor, metric, count(*) AS n, avg(value) FROM readings GROUP BY ALL ORDER BY ALL"
            queued = submit(c, sql)
            assert queued["status"] == "queued" and queued["sql"] == sql
            assert job(c, queued["id"])["status"] == "queued"  # the only worker is busy
            assert_error(c.get(f"/api/v1/queries/{queued['id']}/result"), 404, "not_ready")
        finally:
            cancelled = c.delete(f"/api/v1/queries/{blocker['id']}")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        done = wait_status(c, queued["id"], *FINISHED)
        assert done["status"] == "succeeded", done
        assert done["rows"] == 6 and done["error"] is None
        assert done["result_path"] == f"results/{done['id']}.csv"
        assert done["created_at"] <= done["started_at"] <= done["finished_at"]
        assert done["duration_s"] >= 0
        assert done["bytes_scanned"] > 0  # DuckDB's profile: bytes read from the Parquet files
        result = c.get(f"/api/v1/queries/{done['id']}/result")
        assert result.status_code == 200
        assert result.headers["content-type"].startswith("text/csv")
        assert int(result.headers["content-length"]) == done["result_bytes"] == len(result.content)
        assert result.content == sync_csv(c, sql)
    saved = world.lab.data_dir / "lake" / "acme" / "results" / f"{done['id']}.csv"
    assert saved.read_bytes() == result.content


RESULTS = {
    "raw readings": "SELECT * FROM readings ORDER BY sensor, metric, ts",
    "types no format holds as is": (
        "SELECT INTERVAL 90 MINUTE AS i, [1, 2] AS l, {'a': 1} AS s, 'x'::BLOB AS b, 1::HUGEINT AS h, "
        "TIMESTAMPTZ '2026-11-24 10:00:00+00' AS ts, NULL AS nothing"
    ),
    "no rows": "SELECT sensor FROM readings WHERE false",
    "window and join": (
        "WITH m AS (SELECT sensor, max(value) AS top FROM readings GROUP BY sensor) "
        "SELECT r.sensor, r.ts, r.value - m.top AS below, "
        "rank() OVER (PARTITION BY r.sensor ORDER BY r.value DESC) AS place "
        "FROM readings r JOIN m USING (sensor) WHERE r.metric = 'rpm' ORDER BY r.sensor, r.ts LIMIT 500"
    ),
}


@pytest.mark.parametrize("name", list(RESULTS))
def test_the_saved_result_equals_the_synchronous_answer(world: World, name: str) -> None:
    with world.client(world.acme.keys["analyst"]) as c:
        done = wait_status(c, submit(c, RESULTS[name])["id"], *FINISHED)
        assert done["status"] == "succeeded", done
        result = c.get(f"/api/v1/queries/{done['id']}/result")
        assert result.content == sync_csv(c, RESULTS[name])
        assert pacsv.read_csv(io.BytesIO(result.content)).num_rows == done["rows"] if done["rows"] else True


def test_answers_too_large_for_a_synchronous_query_come_from_a_job(world: World) -> None:
    sql = "SELECT i, i * 2 AS double, 'row ' || i AS label FROM range(300000) t(i)"
    with world.client(world.acme.keys["analyst"]) as c:
        refused = assert_error(c.post("/api/v1/query", json={"sql": sql, "format": "csv"}), 400, "query")
        assert refused["details"] == {"max_rows": MAX_ROWS} and "query job" in refused["message"]
        done = wait_status(c, submit(c, sql)["id"], *FINISHED)
        assert done["status"] == "succeeded" and done["rows"] == 300_000, done
        with c.stream("GET", f"/api/v1/queries/{done['id']}/result") as result:
            assert result.status_code == 200
            chunks = list(result.iter_raw())
        assert len(chunks) > 1  # streamed in pieces, not in one body
        table = pacsv.read_csv(io.BytesIO(b"".join(chunks)))
        assert table.num_rows == 300_000 and table.column("double")[299_999].as_py() == 599_998
        assert sum(len(x) for x in chunks) == done["result_bytes"]


def test_bad_sql_fails_the_job_with_the_synchronous_error(world: World) -> None:
    sql = "SELECT sensor,\n  avg(value +) FROM readings"
    with world.client(world.acme.keys["analyst"]) as c:
        expected = assert_error(c.post("/api/v1/query", json={"sql": sql}), 400, "query")
        assert expected["details"]["line"] == 2 and expected["details"]["duckdb"] == "ParserException"
        done = wait_status(c, submit(c, sql)["id"], *FINISHED)
        assert done["status"] == "failed" and done["error"] == expected
        assert done["result_path"] is None and done["rows"] is None
        conflict = assert_error(c.get(f"/api/v1/queries/{done['id']}/result"), 409, "conflict")
        assert conflict["details"]["error"] == expected and "failed" in conflict["message"]
        assert not (world.lab.data_dir / "lake" / "acme" / "results" / f"{done['id']}.csv").exists()
        assert_error(c.delete(f"/api/v1/queries/{done['id']}"), 409, "conflict")


def test_an_empty_or_missing_sql_is_refused_at_once(world: World) -> None:
    with world.client(world.acme.keys["analyst"]) as c:
        for doc in ({}, {"sql": "  "}, {"sql": 42}):
            assert_error(c.post("/api/v1/queries", json=doc), 422, "invalid")
        assert_error(c.get("/api/v1/queries", params={"status": "lost"}), 422, "invalid")
        assert_error(c.get("/api/v1/queries", params={"limit": 0}), 422, "invalid")


def test_cancel_of_a_queued_job_and_of_a_running_one(world: World) -> None:
    with world.client(world.acme.keys["analyst"]) as c:
        running = submit(c, BLOCKER)
        wait_status(c, running["id"], "running")
        queued = submit(c, "SELECT 1")
        gone = c.delete(f"/api/v1/queries/{queued['id']}")
        assert gone.status_code == 200 and gone.json()["status"] == "cancelled"
        assert gone.json()["started_at"] is None
        stopped = c.delete(f"/api/v1/queries/{running['id']}")
        assert stopped.status_code == 200, stopped.text
        doc = stopped.json()
        assert doc["status"] == "cancelled" and doc["error"]["details"] == {"cancelled": True}
        assert_error(c.get(f"/api/v1/queries/{running['id']}/result"), 409, "conflict")
        assert not (world.lab.data_dir / "lake" / "acme" / "results" / f"{running['id']}.csv").exists()


def test_the_list_shows_the_tenants_jobs_newest_first(world: World) -> None:
    with world.client(world.acme.keys["analyst"]) as c:
        ids = [submit(c, f"SELECT {i} AS n")["id"] for i in range(3)]
        for job_id in ids:
            wait_status(c, job_id, *FINISHED)
        listed = c.get("/api/v1/queries", params={"limit": 3}).json()["queries"]
        assert [j["id"] for j in listed] == ids[::-1]
        succeeded = c.get("/api/v1/queries", params={"status": "succeeded", "limit": 1000}).json()["queries"]
        assert set(ids) <= {j["id"] for j in succeeded}
        assert all(j["status"] == "succeeded" for j in succeeded)


# --- tenancy and roles -------------------------------------------------------------------------------


def test_another_tenants_job_ids_are_404(world: World) -> None:
    with world.client(world.acme.keys["analyst"]) as a, world.client(world.acme2.keys["admin"]) as b:
        theirs = wait_status(a, submit(a, "SELECT sensor FROM readings")["id"], *FINISHED)
        assert theirs["status"] == "succeeded"
        path = f"/api/v1/queries/{theirs['id']}"
        for method, url in (("GET", path), ("GET", f"{path}/result"), ("DELETE", path)):
            error = assert_error(b.request(method, url), 404, "not_found")
            assert error["details"] == {"kind": "query", "name": theirs["id"]}
        assert theirs["id"] not in {j["id"] for j in b.get("/api/v1/queries?limit=1000").json()["queries"]}
        mine = wait_status(b, submit(b, "SELECT DISTINCT sensor FROM readings")["id"], *FINISHED)
        assert b.get(f"/api/v1/queries/{mine['id']}/result").text.split() == ['"sensor"', '"b-1"']
    assert not list((world.lab.data_dir / "lake" / "acme2").glob(f"results/{theirs['id']}*"))


@pytest.mark.parametrize("sql", list(ESCAPES.values())[:12], ids=list(ESCAPES)[:12])
def test_jobs_run_in_the_same_sandbox(world: World, sql: str) -> None:
    data = world.lab.data_dir
    text = sql.format(
        own=data / "lake" / "acme", other=data / "lake" / "acme2", lake=data / "lake", data=data, cwd=data
    )
    with world.client(world.acme.keys["analyst"]) as c:
        done = wait_status(c, submit(c, text)["id"], *FINISHED)
    assert done["status"] == "failed" and done["error"]["code"] == "query", done


ROUTES = (
    ("POST", "/api/v1/queries", {"sql": "SELECT 1"}),
    ("GET", "/api/v1/queries", None),
    ("GET", "/api/v1/queries/{id}", None),
    ("GET", "/api/v1/queries/{id}/result", None),
    ("DELETE", "/api/v1/queries/{id}", None),
)


@pytest.mark.parametrize("role", ROLES)
def test_only_analyst_and_admin_keys_may_use_query_jobs(world: World, role: str) -> None:
    with world.client(world.role_keys[role]) as c:
        for method, path, doc in ROUTES:
            answer = c.request(method, path.format(id="00000000-0000-0000-0000-000000000000"), json=doc)
            if role in {"admin", "analyst"}:
                assert answer.status_code in {202, 200, 404}, answer.text
            else:
                assert role in assert_error(answer, 403, "forbidden")["message"]


# --- restarts ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["kill -9", "SIGTERM"])
def test_a_job_running_when_the_server_stops_is_failed_and_queued_ones_run_after(lab: Lab, how: str) -> None:
    key = lab.tenant("acme", "analyst").keys["analyst"]
    server = lab.server(IRONWATCH_QUERY__WORKERS="1")
    with server.client(key) as c:
        running = submit(c, BLOCKER)
        wait_status(c, running["id"], "running")
        queued = submit(c, "SELECT 42 AS answer")
    server.kill() if how == "kill -9" else server.stop()
    server.start()
    with server.client(key) as c:
        failed = job(c, running["id"])
        assert failed["status"] == "failed", failed
        assert failed["error"]["code"] == "interrupted"
        assert "server stopped while the query ran" in failed["error"]["message"]
        assert failed["error"]["details"] == {"retryable": True}
        assert failed["finished_at"] is not None
        done = wait_status(c, queued["id"], *FINISHED)
        assert done["status"] == "succeeded", done
        assert c.get(f"/api/v1/queries/{done['id']}/result").text.split() == ['"answer"', "42"]


# --- retention -----------------------------------------------------------------------------------------


def test_finished_jobs_and_their_results_are_deleted_after_results_keep_s(lab: Lab) -> None:
    key = lab.tenant("acme", "analyst").keys["analyst"]
    server = lab.server(IRONWATCH_QUERY__RESULTS_KEEP_S="3")
    results = lab.data_dir / "lake" / "acme" / "results"
    with server.client(key) as c:
        old = wait_status(c, submit(c, "SELECT 42 AS answer")["id"], *FINISHED)
        assert old["status"] == "succeeded", old
        assert c.get(f"/api/v1/queries/{old['id']}/result").status_code == 200
        assert (results / f"{old['id']}.csv").exists()
        failed = wait_status(c, submit(c, "SELECT * FROM no_such_table")["id"], *FINISHED)
        assert failed["status"] == "failed"
        wait_until(
            lambda: c.get(f"/api/v1/queries/{old['id']}").status_code == 404,
            timeout_s=30,
            what="the expired job to be deleted",
        )
        assert not (results / f"{old['id']}.csv").exists(), "its result is deleted with it"
        assert_error(c.get(f"/api/v1/queries/{old['id']}/result"), 404, "not_found")
        wait_until(lambda: c.get(f"/api/v1/queries/{failed['id']}").status_code == 404, timeout_s=30)
        fresh = wait_status(c, submit(c, "SELECT 1 AS one")["id"], *FINISHED)
        assert c.get(f"/api/v1/queries/{fresh['id']}/result").status_code == 200, "a new job is kept"
        assert [j["id"] for j in c.get("/api/v1/queries").json()["queries"]] == [fresh["id"]]

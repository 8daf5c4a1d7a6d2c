"""Query job records on SQLite and on a real PostgreSQL: per tenant, conditional moves, recovery."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Lab, wait_until
from ironwatch.errors import NotFound
from ironwatch.store import QueryRecords, Store


@pytest.fixture(params=["sqlite", "postgres"])
def records(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueryRecords]:
    url = (
        f"sqlite:///{tmp_path / 'ironwatch.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    store = Store(url)
    for name in ("acme", "acme2"):
        store.create_tenant(name, f"memory://{name}")
    yield QueryRecords(store)
    if request.param == "postgres":
        with store.engine.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    store.close()


def test_a_job_moves_queued_running_succeeded(records: QueryRecords) -> None:
    job = records.add("acme", "SELECT 1", key_id="k1", owner="host:/data")
    assert (job.status, job.started_at, job.duration_s) == ("queued", None, None)
    assert job.result_path == f"results/{job.id}.csv"
    assert records.active("acme") == 1 and records.active("acme2") == 0
    assert records.start(job.id) is True
    assert records.start(job.id) is False  # only once
    records.progress(job.id, 10)
    assert records.get("acme", job.id).rows == 10
    assert records.finish(job.id, "succeeded", rows=20, bytes_scanned=300, result_bytes=40) is True
    done = records.get("acme", job.id)
    assert (done.status, done.rows, done.bytes_scanned, done.result_bytes) == ("succeeded", 20, 300, 40)
    assert done.started_at is not None and done.finished_at is not None and done.started_at.tzinfo
    assert done.duration_s is not None and done.duration_s >= 0
    assert records.finish(job.id, "failed") is False  # a finished job stays as it ended
    assert records.active("acme") == 0


def test_jobs_belong_to_their_tenant(records: QueryRecords) -> None:
    job = records.add("acme", "SELECT 1", key_id=None, owner="a")
    with pytest.raises(NotFound):
        records.get("acme2", job.id)
    assert records.recent("acme2") == []
    assert [j.id for j in records.recent("acme")] == [job.id]


def test_a_cancel_and_a_start_cannot_both_win(records: QueryRecords) -> None:
    first = records.add("acme", "SELECT 1", key_id=None, owner="a")
    assert records.cancel_queued(first.id) is True
    assert records.start(first.id) is False
    cancelled = records.get("acme", first.id)
    assert cancelled.status == "cancelled" and cancelled.error and cancelled.error["code"] == "cancelled"
    second = records.add("acme", "SELECT 2", key_id=None, owner="a")
    assert records.start(second.id) is True
    assert records.cancel_queued(second.id) is False


def test_recent_is_newest_first_and_filters_by_status(records: QueryRecords) -> None:
    ids = [records.add("acme", f"SELECT {i}", key_id=None, owner="a").id for i in range(4)]
    assert [j.id for j in records.recent("acme", limit=3)] == ids[:0:-1]
    records.start(ids[0])
    assert [j.id for j in records.recent("acme", status="running")] == [ids[0]]


def test_recover_fails_the_owners_running_jobs_and_returns_its_queued_ones(records: QueryRecords) -> None:
    running = records.add("acme", "SELECT 1", key_id=None, owner="me")
    records.start(running.id)
    queued = records.add("acme2", "SELECT 2", key_id=None, owner="me")
    other = records.add("acme", "SELECT 3", key_id=None, owner="another server")
    records.start(other.id)
    failed, waiting = records.recover("me", "the server stopped")
    assert [j.id for j in failed] == [running.id] and [j.id for j in waiting] == [queued.id]
    after = records.get("acme", running.id)
    assert after.status == "failed" and after.error and after.error["message"] == "the server stopped"
    assert records.get("acme", other.id).status == "running"  # not this server's to judge
    assert records.recover("me", "again") == ([], [records.get("acme2", queued.id)])


def test_a_query_job_survives_a_restart_of_a_server_on_postgres(tmp_path: Path, pg_url: str) -> None:
    lab = Lab(tmp_path / "data", store_url=pg_url)
    try:
        key = lab.tenant("acme", "analyst").keys["analyst"]
        server = lab.server(IRONWATCH_QUERY__WORKERS="1")
        with server.client(key) as c:
            running = c.post(
                "/api/v1/queries", json={"sql": "SELECT sum(i) FROM range(1000000000000000) t(i)"}
            )
            job_id = running.json()["id"]
            wait_until(
                lambda: c.get(f"/api/v1/queries/{job_id}").json()["status"] == "running", what="a start"
            )
        server.kill()
        server.start()
        with server.client(key) as c:
            assert c.get(f"/api/v1/queries/{job_id}").json()["error"]["code"] == "interrupted"
            done = c.post("/api/v1/queries", json={"sql": "SELECT 7 AS n"}).json()["id"]
            wait_until(lambda: c.get(f"/api/v1/queries/{done}").json()["status"] == "succeeded", what="a job")
            assert c.get(f"/api/v1/queries/{done}/result").text == '"n"\n7\n'
    finally:
        lab.close()
        with lab.store.engine.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        lab.store.close()


def test_finished_before_lists_only_jobs_that_ended_before_the_cutoff(records: QueryRecords) -> None:
    from datetime import UTC, datetime, timedelta

    ended = [records.add(t, "SELECT 1", key_id=None, owner="a") for t in ("acme", "acme2", "acme")]
    for job, status in zip(ended, ("succeeded", "failed", "succeeded"), strict=True):
        records.start(job.id)
        records.finish(job.id, status)
    running = records.add("acme", "SELECT 1", key_id=None, owner="a")
    records.start(running.id)
    queued = records.add("acme", "SELECT 1", key_id=None, owner="a")
    now = datetime.now(UTC)
    assert records.finished_before(now - timedelta(hours=1)) == []
    found = records.finished_before(now + timedelta(seconds=1))
    assert sorted(j.id for j in found) == sorted(j.id for j in ended), "every tenant's, finished only"
    assert len(records.finished_before(now + timedelta(seconds=1), limit=2)) == 2
    records.delete(ended[0].id)
    with pytest.raises(NotFound):
        records.get("acme", ended[0].id)
    assert {j.id for j in records.recent("acme")} == {ended[2].id, running.id, queued.id}

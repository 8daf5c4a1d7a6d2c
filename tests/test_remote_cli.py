"""``ironwatch query --url --key`` end to end: the real command against a real server.

Errors are one line on stderr and exit 1, whatever went wrong: bad SQL, a refused key, a server
that is not there, or something that is not an ironwatch server answering 502.
"""

from __future__ import annotations

import http.server
import io
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from conftest import Lab, Server, Tenant, free_port
from seed import readings, send

MAX_ROWS = 1000


@dataclass
class World:
    lab: Lab
    server: Server
    acme: Tenant


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    lab = Lab(tmp_path_factory.mktemp("cli") / "data")
    acme = lab.tenant("acme")
    server = lab.server(IRONWATCH_QUERY__MAX_ROWS=str(MAX_ROWS))
    try:
        send(server, acme, "hall-a", readings("hall-a", ["a-1", "a-2"], ["rpm", "temp"], 30))
        yield World(lab, server, acme)
    finally:
        lab.close()


def ironwatch(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("IRONWATCH_")}
    return subprocess.run(
        [sys.executable, "-m", "ironwatch.cli", *args],
        env={**base, **(env or {})},
        cwd=cwd,
        capture_output=True,
        timeout=120,
    )


def remote(world: World, *args: str, role: str = "analyst") -> subprocess.CompletedProcess[bytes]:
    return ironwatch("query", "--url", world.server.url, "--key", world.acme.keys[role], *args)


def one_line_error(done: subprocess.CompletedProcess[bytes]) -> str:
    assert done.returncode == 1, done
    assert done.stdout == b""
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_a_query_on_the_server_prints_csv(world: World) -> None:
    done = remote(world, "SELECT sensor, count(*) AS n FROM readings GROUP BY sensor ORDER BY sensor")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().splitlines() == ['"sensor","n"', '"a-1",60', '"a-2",60']
    assert done.stderr == b""


def test_url_and_key_come_from_the_environment(world: World) -> None:
    env = {"IRONWATCH_URL": world.server.url, "IRONWATCH_KEY": world.acme.keys["analyst"]}
    done = ironwatch("query", "--format", "json", "SELECT count(*) AS n FROM readings", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b'{"columns":["n"],"types":["int64"],"rows":[[120]],"row_count":1}'


def test_output_file_and_format_from_its_suffix(world: World, tmp_path: Path) -> None:
    out = tmp_path / "answer.parquet"
    done = remote(world, "-o", str(out), "SELECT ts, sensor, value FROM readings ORDER BY ts, sensor LIMIT 3")
    assert done.returncode == 0 and done.stdout == b"", done.stderr
    table = pq.read_table(out)
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert table.num_rows == 3
    assert [p.name for p in tmp_path.iterdir()] == ["answer.parquet"]  # no .part left behind


def test_a_large_answer_takes_a_query_job_with_progress_on_stderr(world: World, tmp_path: Path) -> None:
    out = tmp_path / "big.csv"
    sql = "SELECT i, i % 7 AS r FROM range(250000) t(i) ORDER BY i"
    done = remote(world, "-o", str(out), sql)
    assert done.returncode == 0, done.stderr
    progress = done.stderr.decode()
    assert f"the answer has more than {MAX_ROWS:,} rows: running the query as a job" in progress
    assert ": queued" in progress or ": running" in progress
    assert "succeeded, 250,000 rows" in progress and "downloading" in progress
    table = pacsv.read_csv(out)
    assert table.num_rows == 250_000 and table.column("i").to_pylist()[-1] == 249_999
    # --job takes the same way at once, and stdout gets the CSV
    small = remote(world, "--job", "SELECT 1 AS one")
    assert small.returncode == 0, small.stderr
    assert small.stdout == b'"one"\n1\n'
    assert "the answer has more than" not in small.stderr.decode()


def test_a_failing_job_ends_with_one_error_line(world: World) -> None:
    done = remote(world, "--job", "SELECT nope FROM readings")
    assert done.returncode == 1 and done.stdout == b""
    *progress, line = done.stderr.decode().splitlines()
    assert all(p.startswith("query ") and "failed" not in p for p in progress), progress
    assert line.startswith("error: query ") and " failed: Binder Error: " in line and '"nope"' in line


def test_bad_sql_is_one_line_with_its_position(world: World) -> None:
    line = one_line_error(remote(world, "SELECT sensor\nFROM readings\nWHER 1"))
    assert line.startswith(f"error: {world.server.url} answered 400: Parser Error: syntax error")
    assert line.endswith("(line 3, column 6)")


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("gateway", "answered 403: the gateway role may not do this"),
        ("viewer", "answered 403: the viewer role"),
    ],
)
def test_a_key_that_may_not_query_is_one_line(world: World, role: str, expected: str) -> None:
    assert expected in one_line_error(remote(world, "SELECT 1", role=role))


def test_an_unknown_key_is_one_line(world: World) -> None:
    done = ironwatch("query", "--url", world.server.url, "--key", "iw_nope_nope", "SELECT 1")
    assert "answered 401: unknown or revoked API key" in one_line_error(done)


def test_an_unreachable_server_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    line = one_line_error(ironwatch("query", "--url", url, "--key", "iw_x", "SELECT 1"))
    assert line.startswith(f"error: cannot reach {url}: ") and "refused" in line


def test_something_else_answering_502_is_one_line() -> None:
    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = b"<html><body><h1>502 Bad Gateway</h1>\n</body></html>"
            self.send_response(502)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    proxy = http.server.HTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{proxy.server_port}"
        line = one_line_error(ironwatch("query", "--url", url, "--key", "iw_x", "SELECT 1"))
    finally:
        proxy.shutdown()
        proxy.server_close()
    page = "<html><body><h1>502 Bad Gateway</h1> </body></html>"
    assert line == f"error: {url} answered 502: HTTP 502 without an ironwatch error: {page}"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--url", "localhost:8000", "--key", "k", "SELECT 1"],
            "error: --url: 'localhost:8000' is not an http://",
        ),
        (["--url", "http://127.0.0.1:9", "SELECT 1"], "error: --key: a server query needs --key"),
        (
            ["--url", "http://127.0.0.1:9", "--key", "k", "--job", "--format", "json", "SELECT 1"],
            "a query job saves CSV",
        ),
    ],
)
def test_wrong_arguments_are_one_line(args: list[str], expected: str) -> None:
    assert expected in one_line_error(ironwatch("query", *args))


def test_the_csv_is_the_same_locally_and_remotely(world: World) -> None:
    sql = "SELECT * FROM readings ORDER BY sensor, metric, ts"
    here = ironwatch(
        "query",
        "--data-dir",
        str(world.lab.data_dir),
        "--tenant",
        "acme",
        sql,
        env={"IRONWATCH_STORE__URL": world.lab.store_url},
    )
    there = remote(world, sql)
    assert here.returncode == there.returncode == 0, (here.stderr, there.stderr)
    assert here.stdout == there.stdout
    assert pacsv.read_csv(io.BytesIO(there.stdout)).num_rows == 120

"""``ironwatch.Client`` against a real server: DataFrames and Arrow tables with the right types,
query jobs, the series API, and errors from the ironwatch error tree."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from conftest import Lab, Server, Tenant, free_port
from ironwatch import Client
from ironwatch.errors import (
    Forbidden,
    InvalidInput,
    IronwatchError,
    NotFound,
    QueryError,
    Unauthenticated,
    Unavailable,
)
from seed import BASE, readings, send

README = Path(__file__).resolve().parent.parent / "README.md"


@dataclass
class World:
    lab: Lab
    server: Server
    acme: Tenant

    def client(self, role: str = "analyst") -> Client:
        return Client(self.server.url, self.acme.keys[role])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    lab = Lab(tmp_path_factory.mktemp("sdk") / "data")
    acme = lab.tenant("acme")
    server = lab.server(IRONWATCH_QUERY__MAX_ROWS="1000")
    try:
        send(server, acme, "hall-a", readings("hall-a", ["a-1", "a-2"], ["rpm", "temp"], 120))
        yield World(lab, server, acme)
    finally:
        lab.close()


def test_query_gives_a_dataframe_with_the_right_dtypes(world: World) -> None:
    with world.client() as client:
        frame = client.query(
            "SELECT ts, sensor, value, batch, date, hour, received_at FROM readings "
            "WHERE sensor = 'a-2' AND metric = 'rpm' ORDER BY ts"
        )
    assert len(frame) == 120
    assert isinstance(frame["ts"].dtype, pd.DatetimeTZDtype) and str(frame["ts"].dt.tz) == "UTC"
    assert isinstance(frame["received_at"].dtype, pd.DatetimeTZDtype)
    assert frame["ts"].iloc[0] == pd.Timestamp(BASE)
    assert frame["value"].dtype == "float64" and frame["value"].iloc[0] == 10.0
    assert frame["batch"].dtype == "int64" and frame["hour"].dtype == "int32"
    assert pd.api.types.is_string_dtype(frame["sensor"]) and set(frame["sensor"]) == {"a-2"}


def test_query_arrow_keeps_duckdbs_types(world: World) -> None:
    with world.client() as client:
        table = client.query_arrow(
            "SELECT ts, sensor, value, date, count(*) OVER () AS n, 1.5::DECIMAL(4, 1) AS d, "
            "INTERVAL 90 MINUTE AS i FROM readings LIMIT 2"
        )
    assert isinstance(table, pa.Table)
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("value").type == pa.float64()
    assert table.schema.field("date").type == pa.date32()
    assert table.schema.field("n").type == pa.int64()
    assert table.schema.field("d").type == pa.decimal128(4, 1)
    assert table.column("i").to_pylist() == ["01:30:00", "01:30:00"]  # no INTERVAL in Parquet: text


def test_errors_are_the_ironwatch_tree_with_status_and_retryable(world: World) -> None:
    with world.client() as client:
        with pytest.raises(QueryError) as bad:
            client.query("SELECT nope FROM readings")
        assert bad.value.status == 400 and bad.value.retryable is False
        assert bad.value.details["duckdb"] == "BinderException" and '"nope"' in bad.value.message
        with pytest.raises(QueryError) as parse:
            client.query("SELEC 1")
        assert parse.value.details["position"] == 0
        with pytest.raises(QueryError, match="query job") as big:
            client.query("SELECT * FROM range(5000)")
        assert big.value.details == {"max_rows": 1000}
        with pytest.raises(NotFound) as missing:
            client.job("00000000-0000-0000-0000-000000000000")
        assert missing.value.status == 404 and missing.value.kind == "query"
    with world.client("gateway") as gateway, pytest.raises(Forbidden) as refused:
        gateway.query("SELECT 1")
    assert refused.value.status == 403 and "gateway role" in refused.value.message
    with Client(world.server.url, "iw_unknown_key") as stranger, pytest.raises(Unauthenticated):
        stranger.query("SELECT 1")
    with Client(f"http://127.0.0.1:{free_port()}", "k") as nowhere, pytest.raises(Unavailable) as down:
        nowhere.query("SELECT 1")
    assert down.value.retryable is True and "cannot reach" in down.value.message


def test_url_and_key_from_the_environment(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IRONWATCH_URL", world.server.url)
    monkeypatch.setenv("IRONWATCH_KEY", world.acme.keys["analyst"])
    with Client() as client:
        assert client.query("SELECT count(*) AS n FROM readings")["n"].tolist() == [480]
        assert world.acme.keys["analyst"] not in repr(client)
    monkeypatch.delenv("IRONWATCH_KEY")
    with pytest.raises(InvalidInput, match="IRONWATCH_KEY"):
        Client()


def test_query_jobs_for_answers_of_any_size(world: World, tmp_path: Path) -> None:
    with world.client() as client:
        job = client.submit("SELECT i, i * 0.5 AS half FROM range(5000) t(i) ORDER BY i")
        assert job.status in {"queued", "running", "succeeded"}
        frame = job.wait(timeout_s=60).to_pandas()
        assert job.status == "succeeded" and job.info["rows"] == 5000
        assert len(frame) == 5000 and frame["half"].iloc[-1] == 2499.5
        saved = job.download(tmp_path / "half.csv")
        assert saved.read_text().splitlines()[:2] == ['"i","half"', "0,0.0"]
        assert job.id in {j.id for j in client.jobs()}
        failed = client.submit("SELECT nope")
        with pytest.raises(QueryError, match="failed: Binder Error") as caught:
            failed.wait(timeout_s=60)
        assert caught.value.details["query"] == failed.id
        with pytest.raises(IronwatchError) as conflict:
            failed.download(tmp_path / "nothing.csv")
        assert conflict.value.status == 409
        assert not (tmp_path / "nothing.csv").exists() and not (tmp_path / "nothing.csv.part").exists()


def test_series_gives_a_dataframe_in_utc(world: World) -> None:
    with world.client("analyst") as client:
        start, end = BASE, BASE.replace(minute=2)
        raw = client.series("hall-a", "a-1", "rpm", start, end, max_points=500)
        assert list(raw.columns) == ["ts", "mean", "min", "max", "count"]
        assert len(raw) == 120 and raw.attrs["resolution"] == "raw"
        assert raw["ts"].iloc[0] == pd.Timestamp(BASE) and str(raw["ts"].dt.tz) == "UTC"
        assert raw["mean"].tolist() == [float(i) for i in range(120)]
        assert raw["count"].dtype == "int64"
        minutes = client.series("hall-a", "a-1", "rpm", start.isoformat(), int(end.timestamp() * 1000), 10)
        assert len(minutes) == 2 and minutes.attrs["resolution"] == "1m"
        assert minutes["count"].tolist() == [60, 60] and minutes["max"].tolist() == [59.0, 119.0]
        with pytest.raises(InvalidInput, match="time zone"):
            client.series("hall-a", "a-1", "rpm", start.replace(tzinfo=None), end)


def test_import_ironwatch_stays_light() -> None:
    code = (
        "import sys, ironwatch\n"
        "from ironwatch import Client\n"
        "heavy = {'httpx', 'pandas', 'pyarrow', 'duckdb', 'sqlalchemy', 'fastapi', 'numpy'}\n"
        "heavy &= set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "assert Client.__module__ == 'ironwatch.sdk'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_without_httpx_the_error_names_the_pip_line() -> None:
    code = (
        "import sys\n"
        "sys.modules['httpx'] = None  # as if the sdk extra were not installed\n"
        "from ironwatch import Client\n"
        "from ironwatch.errors import MissingDependency\n"
        "try:\n"
        "    Client('http://127.0.0.1:9', 'k')\n"
        "except MissingDependency as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "httpx is not installed: pip install 'ironwatch[sdk]'", done.stderr


def test_the_readme_sdk_example_runs(world: World, tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    example = next(b for b in blocks if "from ironwatch import Client" in b)
    script = tmp_path / "example.py"
    script.write_text(example)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRONWATCH_")}
    env |= {"IRONWATCH_URL": world.server.url, "IRONWATCH_KEY": world.acme.keys["analyst"]}
    done = subprocess.run(
        [sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "datetime64[us, UTC]" in done.stdout

"""The raw readings as files: Hive partitions, the documented schema, sort order and compression.

The files are the ones a real server writes; they are read back with DuckDB and with
pyarrow.dataset, the way Spark, Trino or Athena would see them, without ironwatch in between.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from conftest import Lab, Server, Tenant, wait_until

DAY = (datetime.now(UTC) - timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)
SITES = {"gw-a": "hall-a", "gw-b": "hall-b"}

#: The documented columns of a raw readings file (ARCHITECTURE.md), in order.
SCHEMA = pa.schema(
    [
        ("ts", pa.timestamp("us", tz="UTC")),
        ("sensor", pa.dictionary(pa.int32(), pa.string())),
        ("metric", pa.dictionary(pa.int32(), pa.string())),
        ("value", pa.float64()),
        ("gateway", pa.dictionary(pa.int32(), pa.string())),
        ("batch", pa.int64()),
        ("received_at", pa.timestamp("us", tz="UTC")),
    ]
)

# Moments around partition edges, and one reading that arrives three days late.
MOMENTS = [
    DAY - timedelta(minutes=30),  # the day before, 23:30
    DAY + timedelta(minutes=10),
    DAY + timedelta(hours=5, minutes=59, seconds=59, milliseconds=990),  # plus a few ms: still 05h
    DAY + timedelta(hours=6),
    DAY - timedelta(days=3, hours=-7, microseconds=-250),
]


@dataclass(frozen=True)
class Reading:
    ts: datetime
    sensor: str
    metric: str
    value: float
    gateway: str
    batch: int

    @property
    def site(self) -> str:
        return SITES[self.gateway]


def readings_of(gateway: str, batch: int, salt: int) -> list[Reading]:
    """Readings in a deliberately unsorted order: sensors, metrics and moments interleaved."""
    out = []
    for k, moment in enumerate(MOMENTS):
        for sensor in ("s-3", "s-10", "s-1"):
            for metric in ("temperature_c", "rpm"):
                ts = moment + timedelta(milliseconds=salt)
                value = float(len(out) + 1000 * batch) + salt / 7
                out.append(Reading(ts, sensor, metric, value, gateway, batch))
        out.insert(k, out.pop())  # move the last one forward: the input is not in file order
    return out


PLUS_2 = timezone(timedelta(hours=2))


def spell(r: Reading, i: int, *, text_only: bool) -> str | int:
    """The reading's instant in one of three spellings: UTC text, +02:00 text, epoch milliseconds."""
    if i % 3 == 1:
        return r.ts.astimezone(PLUS_2).isoformat()
    if i % 3 == 2 and not text_only and r.ts.microsecond % 1000 == 0:
        return int(r.ts.timestamp() * 1000)
    return r.ts.isoformat().replace("+00:00", "Z")


def envelope(readings: list[Reading], *, columnar: bool) -> dict[str, Any]:
    head = {"gateway": readings[0].gateway, "batch": readings[0].batch, "site": readings[0].site}
    rows = [
        {"ts": spell(r, i, text_only=columnar), "sensor": r.sensor, "metric": r.metric, "value": r.value}
        for i, r in enumerate(readings)
    ]
    if columnar:
        return {**head, "columns": {k: [row[k] for row in rows] for k in ("ts", "sensor", "metric", "value")}}
    return {**head, "readings": rows}


@dataclass
class Lake:
    lab: Lab
    server: Server
    acme: Tenant
    sent: list[Reading]

    @property
    def root(self) -> Path:
        return self.lab.data_dir / "lake" / "acme"

    def files(self) -> list[Path]:
        return sorted((self.root / "readings").rglob("*.parquet"))

    def send(self, readings: list[Reading], *, columnar: bool = False) -> None:
        with self.server.client(self.acme.keys["gateway"]) as gw:
            r = gw.post("/api/v1/ingest", json=envelope(readings, columnar=columnar))
        assert r.status_code == 200, r.text
        assert r.json() == {"accepted": len(readings), "rejected": 0, "duplicate": False, "errors": []}
        self.sent.extend(readings)

    def wait_for_all(self) -> None:
        with self.server.client(self.acme.keys["analyst"]) as analyst:

            def stored() -> int:
                r = analyst.post("/api/v1/query", json={"sql": "SELECT count(*) FROM readings"})
                assert r.status_code == 200, r.text
                return int(r.json()["rows"][0][0])

            wait_until(lambda: stored() == len(self.sent), what="every reading in the lake")


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lake]:
    lab = Lab(tmp_path_factory.mktemp("layout") / "data")
    acme = lab.tenant("acme", "gateway", "analyst")
    server = lab.server()
    lake = Lake(lab, server, acme, [])
    try:
        lake.send(readings_of("gw-a", 1, salt=1))
        lake.send(readings_of("gw-b", 1, salt=2), columnar=True)
        lake.send(readings_of("gw-a", 2, salt=3), columnar=True)
        lake.send(readings_of("gw-b", 2, salt=4))
        lake.wait_for_all()
        yield lake
    finally:
        lab.close()


def key(r: Reading) -> tuple[Any, ...]:
    return (r.site, r.gateway, r.batch, r.sensor, r.metric, r.value, r.ts)


def test_duckdb_reads_the_files_with_hive_partitions(lake: Lake) -> None:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    files = f"'{lake.root}/readings/**/*.parquet'"
    detected = dict(
        con.execute(
            f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet({files}, "
            "hive_partitioning = true))"
        ).fetchall()
    )
    # The file columns as documented; 'hour' is zero-padded (hour=05), which DuckDB's detection
    # leaves as text, so readers name the partition types as the ironwatch views do.
    assert {k: v for k, v in detected.items() if k != "hour"} == {
        "ts": "TIMESTAMP WITH TIME ZONE",
        "sensor": "VARCHAR",
        "metric": "VARCHAR",
        "value": "DOUBLE",
        "gateway": "VARCHAR",
        "batch": "BIGINT",
        "received_at": "TIMESTAMP WITH TIME ZONE",
        "site": "VARCHAR",
        "date": "DATE",
    }
    typed = (
        f"read_parquet({files}, hive_partitioning = true, "
        "hive_types = {'site': VARCHAR, 'date': DATE, 'hour': INTEGER})"
    )
    got = con.execute(
        f"SELECT site, gateway, batch, sensor, metric, value, ts, date, hour, received_at FROM {typed}"
    ).fetchall()
    con.close()
    assert sorted(row[:7] for row in got) == sorted(key(r) for r in lake.sent)
    for *_, ts, date, hour, received_at in got:
        assert (date, hour) == (ts.date(), ts.hour)  # partitions by the reading's own time, in UTC
        assert ts.tzinfo is not None and received_at > ts


def test_pyarrow_dataset_reads_the_documented_schema(lake: Lake) -> None:
    dataset = ds.dataset(lake.root / "readings", format="parquet", partitioning="hive")
    assert dataset.schema.names == [*SCHEMA.names, "site", "date", "hour"]
    for name in SCHEMA.names:
        assert dataset.schema.field(name).type == SCHEMA.field(name).type, name
    table = dataset.to_table()
    got = [
        (row["site"], row["gateway"], row["batch"], row["sensor"], row["metric"], row["value"], row["ts"])
        for row in table.to_pylist()
    ]
    assert sorted(got) == sorted(key(r) for r in lake.sent)
    for row in table.to_pylist():
        assert (str(row["date"]), int(row["hour"])) == (row["ts"].date().isoformat(), row["ts"].hour)


def test_every_file_has_exactly_the_documented_schema(lake: Lake) -> None:
    assert lake.files()
    for path in lake.files():
        assert pq.read_schema(path).remove_metadata() == SCHEMA, path


PARTITION = re.compile(r"readings/site=([^/]+)/date=(\d{4}-\d\d-\d\d)/hour=(\d\d)/([^/]+)$")


def test_each_file_holds_only_its_own_site_and_hour(lake: Lake) -> None:
    seen = set()
    for path in lake.files():
        match = PARTITION.search(path.relative_to(lake.root).as_posix())
        assert match, path
        site, date, hour, _ = match.groups()
        start = datetime.fromisoformat(f"{date}T{hour}:00:00+00:00")
        table = pq.read_table(path)
        assert all(start <= ts < start + timedelta(hours=1) for ts in table["ts"].to_pylist()), path
        assert {SITES[g] for g in table["gateway"].to_pylist()} == {site}, path
        seen.add((site, start))
    expected = {(r.site, r.ts.replace(minute=0, second=0, microsecond=0)) for r in lake.sent}
    assert seen == expected  # the late reading too: it sits in its own day, not in the day it came


def test_rows_are_sorted_by_sensor_metric_ts_within_each_file(lake: Lake) -> None:
    for path in lake.files():
        table = pq.read_table(path, columns=["sensor", "metric", "ts"])
        rows = list(zip(*(table[c].to_pylist() for c in ("sensor", "metric", "ts")), strict=True))
        assert rows == sorted(rows), path


def test_files_are_zstd_compressed_and_named_writer_seq(lake: Lake) -> None:
    writer = (lake.lab.data_dir / "wal" / "writer-id").read_text().strip()
    for path in lake.files():
        assert re.fullmatch(rf"{re.escape(writer)}-\d+\.parquet", path.name), path.name
        meta = pq.ParquetFile(path).metadata
        codecs = {
            meta.row_group(g).column(c).compression
            for g in range(meta.num_row_groups)
            for c in range(meta.num_columns)
        }
        assert codecs == {"ZSTD"}, path


def test_query_view_partitions_agree_with_the_files(lake: Lake) -> None:
    with lake.server.client(lake.acme.keys["analyst"]) as analyst:
        r = analyst.post(
            "/api/v1/query",
            json={"sql": "SELECT DISTINCT site, strftime(date, '%Y-%m-%d'), hour FROM readings"},
        )
    assert r.status_code == 200, r.text
    from_view = {(site, date, int(hour)) for site, date, hour in r.json()["rows"]}
    from_paths = set()
    for path in lake.files():
        match = PARTITION.search(path.as_posix())
        assert match
        from_paths.add((match[1], match[2], int(match[3])))
    assert from_view == from_paths


def digest(paths: list[Path]) -> dict[Path, tuple[str, int, int]]:
    out = {}
    for p in paths:
        st = p.stat()
        out[p] = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_ino, st.st_mtime_ns)
    return out


def test_later_readings_for_the_same_hours_go_to_new_files(lake: Lake) -> None:
    """Raw is immutable: more readings for an hour that has a file never touch that file."""
    before = digest(lake.files())
    lake.send(readings_of("gw-a", 3, salt=5))
    lake.wait_for_all()
    after = digest(lake.files())
    assert {p: after[p] for p in before} == before
    new = set(after) - set(before)
    assert new and {p.parent for p in new} <= {p.parent for p in before}

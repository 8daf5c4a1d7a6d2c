"""A log segment of several sites and gateways, written to the lake: rows, partitions, sensors seen."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ironwatch import lake
from ironwatch.ingest import record as records
from ironwatch.ingest.flusher import Seen, readings_table, write_segment
from ironwatch.ingest.validate import WAL_SCHEMA
from ironwatch.ingest.wal import Segment, frame
from ironwatch.lake.layout import ranked_codes
from ironwatch.model import QUARANTINE_SCHEMA, empty_table

HOUR_US = 3_600_000_000
T0 = 1_795_536_000_000_000  # 2026-11-24T16:00:00Z


def good(sensors: list[str], hour: int = 0) -> pa.Table:
    n = len(sensors)
    return pa.table(
        {
            "ts": [T0 + hour * HOUR_US + i * 1_000_000 for i in range(n)],
            "sensor": sensors,
            "metric": ["rpm"] * n,
            "value": [float(i) for i in range(n)],
        },
        schema=WAL_SCHEMA,
    )


def record(received_at_us: int, *batches: tuple[str, str, int, pa.Table]) -> records.Record:
    """One log record of several batches: ``(gateway, site, batch, readings)`` each."""
    parts = [records.Part(gateway, site, batch, table.num_rows) for gateway, site, batch, table in batches]
    table = pa.concat_tables([t for *_, t in batches])
    return records.Record("acme", "http", received_at_us, parts, table, empty_table(QUARANTINE_SCHEMA))


# Names out of order and sites that come back in later parts, so codes must be ranked, not numbered.
RECORDS = [
    record(
        T0 + 10,
        ("gw-z", "hall-b", 7, good(["s-3", "s-1"])),
        ("gw-a", "hall-a", 1, good(["s-2"], hour=1)),
    ),
    record(T0 + 20, ("gw-m", "hall-b", 8, good(["s-1", "s-4", "s-0"]))),
    record(T0 + 30, ("gw-a", "hall-a", 2, good(["s-9"])), ("gw-z", "hall-b", 9, good(["s-5"]))),
]


def expected_rows() -> list[tuple[str, str, str, int, int]]:
    """(site, gateway, sensor, batch, received_at_us) per reading, in log order."""
    return [
        (part.site, part.gateway, sensor, part.batch, rec.received_at_us)
        for rec in RECORDS
        for part, rows in rec.batches()
        for sensor in rows["sensor"].to_pylist()
    ]


def test_readings_table_spreads_each_batch_over_its_rows() -> None:
    table = readings_table(RECORDS)
    rows = zip(
        table["site"].cast(pa.string()).to_pylist(),
        table["gateway"].cast(pa.string()).to_pylist(),
        table["sensor"].to_pylist(),
        table["batch"].to_pylist(),
        table["received_at"].cast(pa.int64()).to_pylist(),
        strict=True,
    )
    assert list(rows) == expected_rows()
    for column in ("site", "gateway"):  # each name once, sorted: a code's order is its name's order
        dictionary = table[column].combine_chunks().dictionary.to_pylist()
        assert dictionary == sorted(set(dictionary))


def test_a_segment_becomes_sorted_files_per_site_and_hour(tmp_path: Path) -> None:
    path = tmp_path / "000000000001.wal"
    path.write_bytes(b"".join(frame(records.encode(r)) for r in RECORDS))
    root = lake.open_root((tmp_path / "lake").as_uri())

    written = write_segment(Segment(1, path, path.stat().st_size), "w-000000000001", lambda _: root, 3)

    # Each sensor is credited to the first gateway by name that sent it (s-1 came from gw-z and gw-m).
    assert written.seen == [
        Seen("acme", "hall-a", "gw-a", ["s-2", "s-9"]),
        Seen("acme", "hall-b", "gw-m", ["s-0", "s-1", "s-4"]),
        Seen("acme", "hall-b", "gw-z", ["s-3", "s-5"]),
    ]
    # hall-a has readings in two hours, hall-b in one: three raw files (and their rollup partials).
    files = sorted(
        p.relative_to(tmp_path / "lake").as_posix() for p in (tmp_path / "lake").rglob("*.parquet")
    )
    raw = [f for f in files if f.startswith("readings/")]
    assert raw == [
        "readings/site=hall-a/date=2026-11-24/hour=16/w-000000000001.parquet",
        "readings/site=hall-a/date=2026-11-24/hour=17/w-000000000001.parquet",
        "readings/site=hall-b/date=2026-11-24/hour=16/w-000000000001.parquet",
    ]
    stored = []
    for name in raw:
        table = pq.read_table(tmp_path / "lake" / name)
        keys = list(zip(table["sensor"].to_pylist(), table["ts"].to_pylist(), strict=True))
        assert keys == sorted(keys)  # sorted by sensor (one metric here), then ts
        site = name.split("/")[1].removeprefix("site=")
        stored += [
            (site, g, s, b, int(r.timestamp() * 1_000_000))
            for g, s, b, r in zip(
                table["gateway"].to_pylist(),
                table["sensor"].to_pylist(),
                table["batch"].to_pylist(),
                table["received_at"].to_pylist(),
                strict=True,
            )
        ]
    assert sorted(stored) == sorted(expected_rows())


def test_names_rank_the_same_however_they_are_encoded() -> None:
    """Plain strings, one dictionary, or chunks with unsorted, overlapping dictionaries: same ranks."""
    rows = ["gw-z", "gw-a", "gw-m", "gw-a", "gw-z"]
    chunked = pa.chunked_array(
        [
            pa.DictionaryArray.from_arrays(pa.array([0, 1], pa.int32()), pa.array(["gw-z", "gw-a"])),
            pa.DictionaryArray.from_arrays(
                pa.array([2, 0, 1], pa.int32()), pa.array(["gw-a", "gw-z", "gw-m"])
            ),
        ]
    )
    duplicated = pa.DictionaryArray.from_arrays(
        pa.array([0, 1, 2, 3, 0], pa.int32()), pa.array(["gw-z", "gw-a", "gw-m", "gw-a"])
    )
    for column in (pa.array(rows), pa.array(rows).dictionary_encode(), chunked, duplicated):
        names, codes = ranked_codes(column)
        assert names.to_pylist() == ["gw-a", "gw-m", "gw-z"]
        assert [names[int(c)].as_py() for c in codes] == rows


def test_bytes_past_the_written_size_are_not_flushed(tmp_path: Path) -> None:
    """A write that failed, and could not be cut off: its batches were answered with an error."""
    path = tmp_path / "000000000001.wal"
    path.write_bytes(frame(records.encode(RECORDS[0])))
    written_size = path.stat().st_size
    with open(path, "ab") as fh:
        fh.write(frame(records.encode(RECORDS[1])))
    root = lake.open_root((tmp_path / "lake").as_uri())

    write_segment(Segment(1, path, written_size), "w-000000000001", lambda _: root, 3)

    stored = pq.read_table(tmp_path / "lake" / "readings").to_pydict()
    assert sorted(zip(stored["gateway"], stored["batch"], strict=True)) == sorted(
        (part.gateway, part.batch) for part, rows in RECORDS[0].batches() for _ in range(rows.num_rows)
    )

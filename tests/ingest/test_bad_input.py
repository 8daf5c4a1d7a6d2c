"""Bad input to ``POST /api/v1/ingest``: each kind gets its exact answer, and SQL proves what was kept.

Whole batches that cannot be used are refused with a 4xx in the one error shape, naming the field,
and leave no trace: neither their readings nor their idempotency key (the corrected batch is taken
afterwards). Readings that are bad on their own go to quarantine with the reason, and the good
readings of the same batch are stored.

One server serves the whole module: every request is sent once by the module fixture, then a
barrier batch is awaited in the lake, and each test checks its own case against the answers and SQL.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from conftest import Lab, wait_until

ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
LIMIT_BYTES = 64 * 1024
MAX_READINGS = 50
MAX_ERRORS = 20
BASE = (datetime.now(UTC) - timedelta(hours=1)).replace(second=0, microsecond=0)
DROP = object()  # marks a field to leave out of an envelope


def at(seconds: float) -> str:
    return (BASE + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def envelope(n: int, **changes: Any) -> dict[str, Any]:
    """A good batch ``n`` of gateway gw-r with one reading of sensor rej-n, then ``changes``."""
    body: dict[str, Any] = {
        "gateway": "gw-r",
        "batch": n,
        "site": "hall-a",
        "sent_at": at(60),
        "readings": [{"ts": at(n), "sensor": f"rej-{n}", "metric": "temperature_c", "value": 20.5}],
    }
    for name, value in changes.items():
        if value is DROP:
            body.pop(name, None)
        else:
            body[name] = value
    return body


def encoded(n: int, **changes: Any) -> bytes:
    return json.dumps(envelope(n, **changes)).encode()


def readings(count: int) -> list[dict[str, Any]]:
    return [{"ts": at(i), "sensor": f"s-{i}", "metric": "rpm", "value": i} for i in range(count)]


def columns(count: int, **lengths: int) -> dict[str, list[Any]]:
    return {
        "ts": [at(i) for i in range(lengths.get("ts", count))],
        "sensor": [f"s-{i}" for i in range(lengths.get("sensor", count))],
        "metric": ["rpm"] * lengths.get("metric", count),
        "value": [float(i) for i in range(lengths.get("value", count))],
    }


def chunks(data: bytes, size: int = 16 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@dataclass(frozen=True)
class Refused:
    """A batch that must be refused whole."""

    id: str
    status: int
    code: str
    field: str | None  # what details.field must say (None: no field, e.g. for a missing key)
    body: Callable[[int], bytes | Iterator[bytes]]
    headers: dict[str, str] = field(default_factory=dict)
    key: str | None = "gateway"  # which key signs the request; None sends no Authorization header


REFUSED = [
    Refused("not JSON", 400, "malformed", "body", lambda n: b'{"gateway": "gw-r", "batch": '),
    Refused("empty body", 400, "malformed", "body", lambda n: b""),
    Refused("not UTF-8", 400, "malformed", "body", lambda n: b'{"gateway": "\xff\xfe"}'),
    Refused("JSON array", 422, "invalid", "body", lambda n: json.dumps([envelope(n)]).encode()),
    Refused("JSON string", 422, "invalid", "body", lambda n: b'"readings"'),
    Refused(
        "gzip header, plain body",
        400,
        "malformed",
        "body",
        lambda n: encoded(n),
        {"Content-Encoding": "gzip"},
    ),
    Refused(
        "gzip truncated",
        400,
        "malformed",
        "body",
        lambda n: gzip.compress(encoded(n))[:-12],
        {"Content-Encoding": "gzip"},
    ),
    Refused(
        "gzip bomb",
        413,
        "too_large",
        "body",
        lambda n: gzip.compress(encoded(n, pad=" " * (20 * LIMIT_BYTES))),
        {"Content-Encoding": "gzip"},
    ),
    Refused("body over the limit", 413, "too_large", "body", lambda n: encoded(n, pad="x" * LIMIT_BYTES)),
    Refused(
        "chunked body over the limit",
        413,
        "too_large",
        "body",
        lambda n: chunks(encoded(n, pad="x" * LIMIT_BYTES)),
    ),
    Refused(
        "unsupported Content-Encoding",
        415,
        "unsupported_encoding",
        "Content-Encoding",
        lambda n: encoded(n),
        {"Content-Encoding": "br"},
    ),
    Refused("missing gateway", 422, "invalid", "gateway", lambda n: encoded(n, gateway=DROP)),
    Refused("gateway with a slash", 422, "invalid", "gateway", lambda n: encoded(n, gateway="gw/r")),
    Refused("gateway '..'", 422, "invalid", "gateway", lambda n: encoded(n, gateway="..")),
    Refused("gateway '../x'", 422, "invalid", "gateway", lambda n: encoded(n, gateway="../x")),
    Refused("gateway a number", 422, "invalid", "gateway", lambda n: encoded(n, gateway=7)),
    Refused("gateway of 65 characters", 422, "invalid", "gateway", lambda n: encoded(n, gateway="g" * 65)),
    Refused("site with spaces", 422, "invalid", "site", lambda n: encoded(n, site="hall a")),
    # Python's "$" also matches before a final newline: ids are matched whole.
    Refused("site ending in a newline", 422, "invalid", "site", lambda n: encoded(n, site="hall-a\n")),
    Refused("missing site", 422, "invalid", "site", lambda n: encoded(n, site=DROP)),
    Refused("batch a string", 422, "invalid", "batch", lambda n: encoded(n, batch=str(n))),
    Refused("batch negative", 422, "invalid", "batch", lambda n: encoded(n, batch=-n)),
    Refused("batch a boolean", 422, "invalid", "batch", lambda n: encoded(n, batch=True)),
    Refused("batch a fraction", 422, "invalid", "batch", lambda n: encoded(n, batch=n + 0.5)),
    Refused("batch 2^63", 422, "invalid", "batch", lambda n: encoded(n, batch=2**63)),
    Refused("missing batch", 422, "invalid", "batch", lambda n: encoded(n, batch=DROP)),
    Refused(
        "both readings and columns", 422, "invalid", "readings", lambda n: encoded(n, columns=columns(1))
    ),
    Refused("neither readings nor columns", 422, "invalid", "readings", lambda n: encoded(n, readings=DROP)),
    Refused("readings an object", 422, "invalid", "readings", lambda n: encoded(n, readings={"ts": at(0)})),
    Refused(
        "columns a list",
        422,
        "invalid",
        "columns",
        lambda n: encoded(n, readings=DROP, columns=readings(1)),
    ),
    Refused(
        "columns without value",
        422,
        "invalid",
        "columns.value",
        lambda n: encoded(n, readings=DROP, columns={k: v for k, v in columns(2).items() if k != "value"}),
    ),
    Refused(
        "columns of unequal length",
        422,
        "invalid",
        "columns",
        lambda n: encoded(n, readings=DROP, columns=columns(3, sensor=2)),
    ),
    Refused(
        "too many readings",
        422,
        "invalid",
        "readings",
        lambda n: encoded(n, readings=readings(MAX_READINGS + 1)),
    ),
    Refused(
        "too many readings as columns",
        422,
        "invalid",
        "columns",
        lambda n: encoded(n, readings=DROP, columns=columns(MAX_READINGS + 1)),
    ),
    Refused("no Authorization header", 401, "unauthenticated", None, lambda n: encoded(n), key=None),
    Refused(
        "Basic instead of Bearer",
        401,
        "unauthenticated",
        None,
        lambda n: encoded(n),
        {"Authorization": "Basic Z3c6c2VjcmV0"},
        key=None,
    ),
    Refused(
        "Bearer without a key",
        401,
        "unauthenticated",
        None,
        lambda n: encoded(n),
        {"Authorization": "Bearer"},
        key=None,
    ),
    Refused("unknown key", 401, "unauthenticated", None, lambda n: encoded(n), key="unknown"),
    Refused("revoked key", 401, "unauthenticated", None, lambda n: encoded(n), key="revoked"),
    Refused("analyst key", 403, "forbidden", None, lambda n: encoded(n), key="analyst"),
    Refused("viewer key", 403, "forbidden", None, lambda n: encoded(n), key="viewer"),
    Refused(
        "key scoped to hall-a writing hall-b",
        403,
        "forbidden",
        "site",
        lambda n: encoded(n, gateway="gw-b", site="hall-b"),
        key="hall-a only",
    ),
    Refused(
        "key scoped to gw-r sending for gw-s",
        403,
        "forbidden",
        "gateway",
        lambda n: encoded(n, gateway="gw-s"),
        key="gw-r only",
    ),
    Refused(
        "gateway of hall-a sending for hall-b",
        409,
        "conflict",
        "site",
        lambda n: encoded(n, site="hall-b"),
    ),
]


@dataclass(frozen=True)
class Quarantined:
    """A reading that is bad on its own; it is sent between two good readings of one batch."""

    id: str
    reading: Callable[[], Any] | Any  # a callable is evaluated when the batch is sent
    field: str
    reason: str
    epoch_ms_neighbours: bool = False  # the good readings carry epoch milliseconds instead of text


def good(
    seconds: float, sensor: str, metric: str = "temperature_c", value: float = 21.0, *, as_ms: bool = False
) -> dict[str, Any]:
    ts: str | int = at(seconds)
    if as_ms:
        ts = int((BASE + timedelta(seconds=seconds)).timestamp() * 1000)
    return {"ts": ts, "sensor": sensor, "metric": metric, "value": value}


def bad(**changes: Any) -> dict[str, Any]:
    reading: dict[str, Any] = {"ts": at(30), "sensor": "s-x", "metric": "temperature_c", "value": 1.5}
    for name, value in changes.items():
        if value is DROP:
            reading.pop(name)
        else:
            reading[name] = value
    return reading


NOT_RFC3339 = "not an RFC 3339 timestamp with a UTC offset"
UNPARSEABLE = "not an RFC 3339 timestamp"
QUARANTINED = [
    Quarantined("ts unparseable", bad(ts="yesterday noon"), "ts", NOT_RFC3339),
    Quarantined("ts without offset", bad(ts="2026-11-24T10:00:00"), "ts", NOT_RFC3339),
    Quarantined(
        "ts 11 minutes ahead",
        lambda: bad(ts=(datetime.now(UTC) + timedelta(minutes=11)).isoformat()),
        "ts",
        "more than 600 s in the future",
    ),
    Quarantined(
        "ts before 2000",
        bad(ts="1999-12-31T23:59:59Z"),
        "ts",
        "before 2000-01-01 (epoch seconds sent as milliseconds?)",
    ),
    Quarantined(
        "ts in epoch seconds",
        bad(ts=int(BASE.timestamp())),
        "ts",
        "before 2000-01-01 (epoch seconds sent as milliseconds?)",
    ),
    Quarantined(
        "ts a boolean",
        bad(ts=True),
        "ts",
        "expected RFC 3339 text or epoch milliseconds, got a boolean",
    ),
    Quarantined("ts missing", bad(ts=DROP), "ts", "missing"),
    Quarantined("value NaN literal", bad(value=float("nan")), "value", "NaN is not a reading"),
    Quarantined("value Infinity literal", bad(value=float("inf")), "value", "infinite is not a reading"),
    Quarantined("value -Infinity literal", bad(value=float("-inf")), "value", "infinite is not a reading"),
    Quarantined("value a string", bad(value="41.7"), "value", "expected a number, got a string"),
    Quarantined("value a boolean", bad(value=True), "value", "expected a number, got a boolean"),
    Quarantined("value missing", bad(value=DROP), "value", "missing"),
    Quarantined("value null", bad(value=None), "value", "missing"),
    Quarantined("sensor with a space", bad(sensor="s 0412"), "sensor", f"does not match {ID_PATTERN}"),
    Quarantined("sensor '../etc'", bad(sensor="../etc"), "sensor", f"does not match {ID_PATTERN}"),
    Quarantined("sensor ending in a newline", bad(sensor="s-x\n"), "sensor", f"does not match {ID_PATTERN}"),
    Quarantined("sensor a number", bad(sensor=412), "sensor", "expected a string, got an integer"),
    Quarantined("sensor missing", bad(sensor=DROP), "sensor", "missing"),
    Quarantined("metric with a slash", bad(metric="temp/c"), "metric", f"does not match {ID_PATTERN}"),
    Quarantined("metric empty", bad(metric=""), "metric", f"does not match {ID_PATTERN}"),
    Quarantined("reading a number", 42, "", "expected an object, got an integer"),
    Quarantined("reading null", None, "", "expected an object, got null"),
    Quarantined("reading a list", [at(30), "s-x", "rpm", 1.0], "", "expected an object, got a list"),
    # Timestamps of both forms in one batch are decoded reading by reading: same reasons.
    Quarantined("ts unparseable among epoch ms", bad(ts="yesterday noon"), "ts", NOT_RFC3339, True),
    Quarantined("ts without offset among epoch ms", bad(ts="2026-11-24T10:00:00"), "ts", NOT_RFC3339, True),
    Quarantined("ts unparseable with offset", bad(ts="2026-13-45T10:00:00Z"), "ts", UNPARSEABLE),
    Quarantined(
        "ts unparseable with offset among epoch ms", bad(ts="2026-13-45T10:00Z"), "ts", UNPARSEABLE, True
    ),
    Quarantined("ts beyond epoch ms", bad(ts=10**16), "ts", "out of range for epoch milliseconds"),
    Quarantined(
        "ts beyond epoch ms among text", bad(ts=10**16), "ts", "out of range for epoch milliseconds", True
    ),
    # JSON parsers give a float for these: they must be named, not crash the decoder.
    Quarantined("ts 1e20", bad(ts=1e20), "ts", "out of range for epoch milliseconds"),
    Quarantined("ts 2^64", bad(ts=2**64), "ts", "out of range for epoch milliseconds"),
]

QUARANTINE_BATCH0 = 1000


@dataclass
class Answer:
    status: int
    doc: Any
    headers: httpx.Headers


@dataclass
class Sent:
    """Everything the module fixture sent and what the server answered."""

    lab: Lab
    analyst: httpx.Client
    refused: dict[str, Answer]
    corrected: dict[str, Answer]
    quarantined: dict[str, Answer]
    quarantined_bodies: dict[str, dict[str, Any]]
    extra: dict[str, Answer]


def post(client: httpx.Client, content: bytes | Iterator[bytes], headers: dict[str, str]) -> Answer:
    r = client.post(
        "/api/v1/ingest", content=content, headers={"Content-Type": "application/json", **headers}
    )
    return Answer(r.status_code, r.json(), r.headers)


def rows(client: httpx.Client, sql: str) -> list[dict[str, Any]]:
    r = client.post("/api/v1/query", json={"sql": sql})
    assert r.status_code == 200, r.text
    doc = r.json()
    return [dict(zip(doc["columns"], row, strict=True)) for row in doc["rows"]]


def count(client: httpx.Client, sql: str) -> int:
    return int(rows(client, sql)[0]["n"])


@pytest.fixture(scope="module")
def sent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sent]:
    lab = Lab(tmp_path_factory.mktemp("bad-input") / "data")
    acme = lab.tenant("acme", "gateway", "analyst", "viewer")
    keys: dict[str, str] = dict(acme.keys)
    keys["hall-a only"] = lab.store.create_key("acme", "gateway", site="hall-a")[1]
    keys["gw-r only"] = lab.store.create_key("acme", "gateway", gateway="gw-r")[1]
    revoked, keys["revoked"] = lab.store.create_key("acme", "gateway")
    lab.store.revoke_key(revoked.id)
    keys["unknown"] = "iw_0123456789ab_" + "x" * 32
    lab.store.add_gateway("acme", "gw-r", "hall-a")
    server = lab.server(
        IRONWATCH_SERVER__MAX_BODY_BYTES=str(LIMIT_BYTES),
        IRONWATCH_INGEST__MAX_READINGS=str(MAX_READINGS),
        IRONWATCH_INGEST__MAX_ERRORS=str(MAX_ERRORS),
    )
    client = httpx.Client(base_url=server.url, timeout=30)
    analyst = server.client(keys["analyst"])
    gateway_auth = {"Authorization": f"Bearer {keys['gateway']}"}
    refused, corrected, quarantined, bodies, extra = {}, {}, {}, {}, {}
    try:
        for n, case in enumerate(REFUSED, start=1):
            auth = {"Authorization": f"Bearer {keys[case.key]}"} if case.key else {}
            refused[case.id] = post(client, case.body(n), {**auth, **case.headers})
        # The corrected batch is taken: a refused batch did not use up its (gateway, batch) key.
        for n, case in enumerate(REFUSED, start=1):
            fixed = envelope(n, readings=[good(n, f"fix-{n}")])
            corrected[case.id] = post(client, json.dumps(fixed).encode(), gateway_auth)
        for i, q in enumerate(QUARANTINED):
            reading = q.reading() if callable(q.reading) else q.reading
            doc = {
                "gateway": "gw-q",
                "batch": QUARANTINE_BATCH0 + i,
                "site": "hall-a",
                "readings": [
                    good(i, f"q{i}-a", as_ms=q.epoch_ms_neighbours),
                    reading,
                    good(i, f"q{i}-b", value=22.0, as_ms=q.epoch_ms_neighbours),
                ],
            }
            bodies[q.id] = doc
            quarantined[q.id] = post(client, json.dumps(doc).encode(), gateway_auth)
        extra["mixed rows"] = post(client, json.dumps(MIXED).encode(), gateway_auth)
        extra["columns"] = post(client, json.dumps(COLUMNS).encode(), gateway_auth)
        extra["many bad"] = post(client, json.dumps(MANY_BAD).encode(), gateway_auth)
        extra["gzip"] = post(
            client, gzip.compress(json.dumps(GZIPPED).encode()), {**gateway_auth, "Content-Encoding": "gzip"}
        )
        barrier = {
            "gateway": "gw-barrier",
            "batch": 1,
            "site": "hall-a",
            "readings": [good(0, "barrier"), bad(sensor="bar rier")],
        }
        extra["barrier"] = post(client, json.dumps(barrier).encode(), gateway_auth)
        assert extra["barrier"].doc["accepted"] == 1, extra["barrier"].doc
        # Segments are flushed in order, readings before quarantine: once the barrier's quarantined
        # reading is in SQL, everything sent before it is too.
        wait_until(
            lambda: count(analyst, "SELECT count(*) AS n FROM quarantine WHERE gateway = 'gw-barrier'"),
            what="the barrier batch in quarantine",
        )
        yield Sent(lab, analyst, refused, corrected, quarantined, bodies, extra)
    finally:
        client.close()
        analyst.close()
        lab.close()


# --- refused batches -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", REFUSED, ids=[c.id for c in REFUSED])
def test_refused_batch_gets_its_exact_error(sent: Sent, case: Refused) -> None:
    answer = sent.refused[case.id]
    assert answer.status == case.status, answer.doc
    assert set(answer.doc) == {"error"}, answer.doc
    error = answer.doc["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == case.code
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], dict)
    assert error["details"].get("field") == case.field, error
    if case.status == 401:
        assert answer.headers["www-authenticate"] == "Bearer"
    if case.status == 413:
        assert error["details"]["limit_bytes"] == LIMIT_BYTES
    if case.status == 415:
        assert answer.headers["accept-encoding"] == "gzip, identity"


@pytest.mark.parametrize("case", REFUSED, ids=[c.id for c in REFUSED])
def test_refused_batch_stores_nothing_and_its_correction_is_taken(sent: Sent, case: Refused) -> None:
    n = REFUSED.index(case) + 1
    assert sent.corrected[case.id].doc == {"accepted": 1, "rejected": 0, "duplicate": False, "errors": []}
    assert count(sent.analyst, f"SELECT count(*) AS n FROM readings WHERE sensor = 'rej-{n}'") == 0
    assert count(sent.analyst, f"SELECT count(*) AS n FROM quarantine WHERE sensor = 'rej-{n}'") == 0
    stored = rows(
        sent.analyst,
        f"SELECT gateway, site, sensor, value FROM readings WHERE gateway = 'gw-r' AND batch = {n}",
    )
    assert stored == [{"gateway": "gw-r", "site": "hall-a", "sensor": f"fix-{n}", "value": 21.0}]


# --- readings that go to quarantine ----------------------------------------------------------------


@pytest.mark.parametrize("case", QUARANTINED, ids=[c.id for c in QUARANTINED])
def test_bad_reading_is_quarantined_and_its_neighbours_stored(sent: Sent, case: Quarantined) -> None:
    i = QUARANTINED.index(case)
    batch = QUARANTINE_BATCH0 + i
    answer = sent.quarantined[case.id]
    assert answer.status == 200, answer.doc
    assert answer.doc == {
        "accepted": 2,
        "rejected": 1,
        "duplicate": False,
        "errors": [{"index": 1, "field": case.field, "reason": case.reason}],
    }
    stored = rows(
        sent.analyst,
        "SELECT sensor, metric, value, epoch_ms(ts) AS ts_ms, site, gateway FROM readings "
        f"WHERE gateway = 'gw-q' AND batch = {batch} ORDER BY sensor",
    )
    expected_ms = int((BASE + timedelta(seconds=i)).timestamp() * 1000)
    assert stored == [
        {
            "sensor": f"q{i}-a",
            "metric": "temperature_c",
            "value": 21.0,
            "ts_ms": expected_ms,
            "site": "hall-a",
            "gateway": "gw-q",
        },
        {
            "sensor": f"q{i}-b",
            "metric": "temperature_c",
            "value": 22.0,
            "ts_ms": expected_ms,
            "site": "hall-a",
            "gateway": "gw-q",
        },
    ]
    kept = rows(
        sent.analyst,
        'SELECT "index", field, reason, transport, site, sensor, metric, CAST(value AS VARCHAR) AS value, '
        f"ts, raw FROM quarantine WHERE gateway = 'gw-q' AND batch = {batch}",
    )
    assert len(kept) == 1, kept
    row = kept[0]
    assert (row["index"], row["field"], row["reason"]) == (1, case.field, case.reason)
    assert (row["transport"], row["site"]) == ("http", "hall-a")
    # The reading itself is kept: as the JSON it came in, or in the typed columns when it parsed.
    sent_reading = sent.quarantined_bodies[case.id]["readings"][1]
    if row["raw"] is not None:
        assert json.loads(row["raw"]) == json.loads(json.dumps(sent_reading).replace("NaN", "null"))
    else:
        assert (row["sensor"], row["metric"]) == (sent_reading["sensor"], sent_reading["metric"])
        assert same_instant(row["ts"], sent_reading["ts"])
        assert row["value"] == str(float(sent_reading["value"]))  # nan, inf and -inf as well


def same_instant(kept: str, sent: str | int) -> bool:
    """Whether quarantine's ``ts`` text is the sent timestamp, verbatim or as the same instant."""
    if kept == str(sent):
        return True
    moment = datetime.fromisoformat(kept.replace("Z", "+00:00"))
    if isinstance(sent, int):
        return moment == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=sent)
    return moment == datetime.fromisoformat(sent)


MIXED = {
    "gateway": "gw-q",
    "batch": 2000,
    "site": "hall-a",
    "readings": [
        good(0, "m-0"),
        bad(value="x"),
        good(1, "m-2", value=2.0),
        bad(sensor="a b"),
        bad(ts="2026-11-24T10:00:00"),
        good(2, "m-5", value=5.0),
        7,
        bad(value=float("nan")),
        {**good(3, "m-8", value=8.0), "ts": int((BASE + timedelta(seconds=3)).timestamp() * 1000)},
    ],
}
COLUMNS = {
    "gateway": "gw-q",
    "batch": 2001,
    "site": "hall-a",
    "columns": {
        "ts": [at(0), at(1), "soon", at(3), at(4)],
        "sensor": ["c-0", "c-1", "c-2", "c 3", "c-4"],
        "metric": ["rpm"] * 5,
        "value": [0.0, float("inf"), 2.0, 3.0, 4.0],
    },
}
MANY_BAD = {
    "gateway": "gw-q",
    "batch": 2002,
    "site": "hall-a",
    "readings": [good(0, "many-ok")] + [bad(sensor=f"bad sensor {i}") for i in range(MAX_ERRORS + 5)],
}
GZIPPED = {
    "gateway": "gw-q",
    "batch": 2003,
    "site": "hall-a",
    "readings": [good(0, "gz-0"), bad(metric="a/b"), good(1, "gz-2")],
}


def test_mixed_batch_names_each_bad_reading_by_index(sent: Sent) -> None:
    assert sent.extra["mixed rows"].doc == {
        "accepted": 4,
        "rejected": 5,
        "duplicate": False,
        "errors": [
            {"index": 1, "field": "value", "reason": "expected a number, got a string"},
            {"index": 3, "field": "sensor", "reason": f"does not match {ID_PATTERN}"},
            {"index": 4, "field": "ts", "reason": NOT_RFC3339},
            {"index": 6, "field": "", "reason": "expected an object, got an integer"},
            {"index": 7, "field": "value", "reason": "NaN is not a reading"},
        ],
    }
    stored = rows(sent.analyst, "SELECT sensor, value FROM readings WHERE batch = 2000 ORDER BY sensor")
    assert stored == [
        {"sensor": "m-0", "value": 21.0},
        {"sensor": "m-2", "value": 2.0},
        {"sensor": "m-5", "value": 5.0},
        {"sensor": "m-8", "value": 8.0},
    ]
    kept = rows(sent.analyst, 'SELECT "index", field FROM quarantine WHERE batch = 2000 ORDER BY "index"')
    assert [(r["index"], r["field"]) for r in kept] == [
        (1, "value"),
        (3, "sensor"),
        (4, "ts"),
        (6, ""),
        (7, "value"),
    ]


def test_columnar_batch_quarantines_by_index(sent: Sent) -> None:
    assert sent.extra["columns"].doc == {
        "accepted": 2,
        "rejected": 3,
        "duplicate": False,
        "errors": [
            {"index": 1, "field": "value", "reason": "infinite is not a reading"},
            {"index": 2, "field": "ts", "reason": NOT_RFC3339},
            {"index": 3, "field": "sensor", "reason": f"does not match {ID_PATTERN}"},
        ],
    }
    stored = rows(sent.analyst, "SELECT sensor FROM readings WHERE batch = 2001 ORDER BY sensor")
    assert stored == [{"sensor": "c-0"}, {"sensor": "c-4"}]
    kept = rows(sent.analyst, 'SELECT "index", reason FROM quarantine WHERE batch = 2001 ORDER BY "index"')
    assert [r["index"] for r in kept] == [1, 2, 3]


def test_error_list_is_capped_but_every_bad_reading_is_kept(sent: Sent) -> None:
    answer = sent.extra["many bad"].doc
    assert (answer["accepted"], answer["rejected"], answer["duplicate"]) == (1, MAX_ERRORS + 5, False)
    assert [e["index"] for e in answer["errors"]] == list(range(1, MAX_ERRORS + 1))
    assert count(sent.analyst, "SELECT count(*) AS n FROM quarantine WHERE batch = 2002") == MAX_ERRORS + 5
    assert count(sent.analyst, "SELECT count(*) AS n FROM readings WHERE batch = 2002") == 1


def test_gzip_batch_is_decoded_and_checked_like_any_other(sent: Sent) -> None:
    assert sent.extra["gzip"].doc == {
        "accepted": 2,
        "rejected": 1,
        "duplicate": False,
        "errors": [{"index": 1, "field": "metric", "reason": f"does not match {ID_PATTERN}"}],
    }
    stored = rows(sent.analyst, "SELECT sensor FROM readings WHERE batch = 2003 ORDER BY sensor")
    assert stored == [{"sensor": "gz-0"}, {"sensor": "gz-2"}]


# --- nothing lost, nothing extra ---------------------------------------------------------------------


def test_lake_holds_exactly_what_was_accepted_and_quarantined(sent: Sent) -> None:
    answers = [*sent.corrected.values(), *sent.quarantined.values(), *sent.extra.values()]
    accepted = sum(a.doc["accepted"] for a in answers)
    rejected = sum(a.doc["rejected"] for a in answers)
    assert count(sent.analyst, "SELECT count(*) AS n FROM readings") == accepted
    assert count(sent.analyst, "SELECT count(*) AS n FROM quarantine") == rejected


def test_refused_batches_register_no_gateway_and_bad_readings_no_sensor(sent: Sent) -> None:
    gateways = sent.analyst.get("/api/v1/gateways")
    assert gateways.status_code == 200, gateways.text
    assert sorted(g["gateway"] for g in gateways.json()["gateways"]) == ["gw-barrier", "gw-q", "gw-r"]
    sensors = sent.analyst.get("/api/v1/sensors")
    assert sensors.status_code == 200, sensors.text
    names = {s["sensor"] for s in sensors.json()["sensors"]}
    stored = {r["sensor"] for r in rows(sent.analyst, "SELECT DISTINCT sensor FROM readings")}
    assert names == stored
    assert not any(name.startswith(("rej-", "s-x")) for name in names)

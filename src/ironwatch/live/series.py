"""The series service behind ``GET /api/v1/series``: parameters, resolution choice and freshness.

A series is one sensor and metric of a site over ``[start, end)``. The service answers raw readings
when at most ``max_points`` of them fall in the range (and the range is at most
``series.raw_max_range_s``), else 1-minute buckets when the range spans at most ``max_points``
minutes, else 1-hour buckets, else 422. Raw answers merge the lake with the recent buffer, so a
reading is in its series as soon as it is acknowledged; the buckets of a 1m or 1h series newer than
``series.tail_s`` are computed the same way from raw readings, the older ones come from the rollups.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import orjson
import pyarrow as pa

from ironwatch import lake
from ironwatch.errors import InvalidInput
from ironwatch.lake import Root
from ironwatch.live.recent import Recent
from ironwatch.model import check_id

MINUTE_US = lake.series.MINUTE_US
HOUR_US = lake.series.HOUR_US
RESOLUTIONS = ("auto", "raw", "1m", "1h")
WIDTH_US = {"1m": MINUTE_US, "1h": HOUR_US}
DEFAULT_RANGE_US = HOUR_US
_SPACED_OFFSET = re.compile(r"\d \d\d:\d\d$")
_RELATIVE = re.compile(r"^-(\d+)(s|m|h|d)$")
_UNIT_US = {"s": 1_000_000, "m": MINUTE_US, "h": HOUR_US, "d": 24 * HOUR_US}
_TIME_HELP = (
    "expected RFC 3339 with an offset (2026-11-24T10:00:00Z), epoch milliseconds, now, or -15m/-6h/-7d"
)


def parse_time(field: str, text: str, now_us: int) -> int:
    """Epoch microseconds of an RFC 3339 time, epoch milliseconds, ``now`` or ``-15m`` (before now)."""
    text = text.strip()
    if _SPACED_OFFSET.search(text):  # an unescaped "+01:00" in a query string arrives as " 01:00"
        text = text[:-6] + "+" + text[-5:]
    if text == "now":
        return now_us
    relative = _RELATIVE.match(text)
    if relative:
        return now_us - int(relative.group(1)) * _UNIT_US[relative.group(2)]
    if text.isdigit():
        return int(text) * 1000
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(field, f"{text[:40]!r}: {_TIME_HELP}") from None
    if moment.tzinfo is None:
        raise InvalidInput(field, f"{text[:40]!r} has no UTC offset; add Z or +01:00")
    return int(moment.timestamp() * 1_000_000)


@dataclasses.dataclass(frozen=True)
class Request:
    """A checked series request."""

    site: str
    sensor: str
    metric: str
    start_us: int
    end_us: int
    max_points: int
    resolution: str

    def buckets(self, width_us: int) -> int:
        """How many buckets of ``width_us`` the range touches."""
        first = self.start_us // width_us * width_us
        return -(-(self.end_us - first) // width_us)


def _span(us: int) -> str:
    for unit, size in (("d", 24 * HOUR_US), ("h", HOUR_US), ("m", MINUTE_US)):
        if us >= size and us % size == 0:
            return f"{us // size}{unit}"
    return f"{us / 1_000_000:g}s"


class Series:
    """Answers series requests of any tenant from its root and the recent buffer."""

    def __init__(
        self,
        settings: Any,
        root_of: Callable[[str], Root],
        recent: Recent,
        now_us: Callable[[], int],
    ) -> None:
        self.settings = settings
        self.root_of = root_of
        self.recent = recent
        self.now_us = now_us
        self.reader = lake.series.Reader(memory_limit=str(settings.query.memory_limit))

    def close(self) -> None:
        """Release the DuckDB the series are read with."""
        self.reader.close()

    def parse(self, params: Mapping[str, str | None]) -> Request:
        """Check query parameters; :class:`InvalidInput` (422) names the one that is wrong."""
        cfg = self.settings.series
        now = self.now_us()
        for name in ("site", "sensor", "metric"):
            if not params.get(name):
                raise InvalidInput(name, "required")
        end = parse_time("end", params.get("end") or "now", now)
        start_text = params.get("start")
        start = parse_time("start", start_text, now) if start_text else end - DEFAULT_RANGE_US
        if end <= start:
            raise InvalidInput("end", "must be after start")
        limit = int(cfg.max_points_limit)
        raw_points = params.get("max_points")
        max_points = int(cfg.max_points)
        if raw_points:
            if not raw_points.strip().isdigit() or not 1 <= int(raw_points) <= limit:
                raise InvalidInput(
                    "max_points", f"expected an integer from 1 to {limit}, got {raw_points[:20]!r}"
                )
            max_points = int(raw_points)
        resolution = params.get("resolution") or "auto"
        if resolution not in RESOLUTIONS:
            raise InvalidInput("resolution", f"{resolution[:20]!r} is not one of {', '.join(RESOLUTIONS)}")
        request = Request(
            check_id("site", params["site"]),
            check_id("sensor", params["sensor"]),
            check_id("metric", params["metric"]),
            start,
            end,
            max_points,
            resolution,
        )
        raw_max_us = int(float(cfg.raw_max_range_s) * 1_000_000)
        if resolution == "raw" and end - start > raw_max_us:
            raise InvalidInput(
                "start",
                f"a range of {_span(end - start)} is longer than {_span(raw_max_us)}, the longest read "
                "from raw readings (series.raw_max_range_s); ask for resolution 1m or 1h",
            )
        if resolution in WIDTH_US and request.buckets(WIDTH_US[resolution]) > max_points:
            self._too_many(request, resolution)
        if resolution == "auto" and request.buckets(HOUR_US) > max_points:
            self._too_many(request, "1h")
        return request

    @staticmethod
    def _too_many(request: Request, resolution: str) -> None:
        n = request.buckets(WIDTH_US[resolution])
        raise InvalidInput(
            "max_points",
            f"the range holds {n} buckets of {resolution}, more than max_points={request.max_points}; "
            "shorten the range or raise max_points",
            {"buckets": n, "resolution": resolution},
        )

    # answering ---------------------------------------------------------------------------------
    def get(self, tenant: str, request: Request) -> bytes:
        """The series as columnar JSON: ``ts`` (epoch ms), ``mean``, ``min``, ``max``, ``count``."""
        root = self.root_of(tenant)
        raw_max_us = int(float(self.settings.series.raw_max_range_s) * 1_000_000)
        span = request.end_us - request.start_us
        buckets: pa.Table | None = None
        resolution = request.resolution
        if resolution in ("auto", "raw") and span <= raw_max_us:
            points = self.raw_points(
                tenant, root, request, request.start_us, request.end_us, request.max_points + 1
            )
            if points.num_rows <= request.max_points:
                buckets, resolution = lake.series.as_buckets(points), "raw"
            elif resolution == "raw":
                raise InvalidInput(
                    "max_points",
                    f"more than max_points={request.max_points} raw readings in the range; "
                    "shorten it, raise max_points or ask for resolution 1m",
                )
        if buckets is None:
            if resolution != "1h" and request.buckets(MINUTE_US) <= request.max_points:
                resolution = "1m"
            else:
                resolution = "1h"
            buckets = self.rolled_up(tenant, root, request, resolution)
        return self._encode(request, resolution, buckets)

    def raw_points(
        self, tenant: str, root: Root, request: Request, start_us: int, end_us: int, limit: int | None
    ) -> pa.Table:
        """Raw readings from the lake and the recent buffer, each once, sorted by ``ts``."""
        stored = self.reader.raw(
            root, request.site, request.sensor, request.metric, start_us, end_us, limit=limit
        )
        fresh = self.recent.points(tenant, request.site, request.sensor, request.metric, start_us, end_us)
        if fresh.num_rows:
            if stored.num_rows:
                # A reading can be in both while its segment is being flushed; keep the lake's copy.
                fresh = fresh.join(stored, ["ts", "value"], join_type="left anti", use_threads=False)
            stored = pa.concat_tables([stored, fresh.select(stored.column_names)])
        return stored.sort_by("ts")

    def rolled_up(self, tenant: str, root: Root, request: Request, resolution: str) -> pa.Table:
        """Whole buckets of ``resolution`` starting in the range: rollups, and raw readings for the tail.

        Buckets before ``series.tail_s`` ago come from the rollups as the views merge them (hours
        from ``rollup_1h``); the tail's minutes are computed from raw readings of the lake and the
        recent buffer, so they are as fresh as a raw series. In a 1h series, the hour the tail starts
        in joins the minutes of ``rollup_1m`` before the tail with the tail's own.
        """
        width = WIDTH_US[resolution]
        first, end = request.start_us // width * width, request.end_us
        tail_us = int(float(self.settings.series.tail_s) * 1_000_000)
        fresh_from = (self.now_us() - tail_us) // MINUTE_US * MINUTE_US
        names = (request.site, request.sensor, request.metric)
        whole = []  # buckets of the right width, as they are
        minutes = []  # minute buckets, combined into ``width`` below
        minutes_from = first
        if resolution == "1h":
            minutes_from = max(first, fresh_from // HOUR_US * HOUR_US)
            if min(end, minutes_from) > first:
                whole.append(self.reader.rollup(root, "1h", *names, first, min(end, minutes_from)))
        if min(end, fresh_from) > minutes_from:
            minutes.append(self.reader.rollup(root, "1m", *names, minutes_from, min(end, fresh_from)))
        tail_from = max(first, fresh_from)
        if end > tail_from:
            points = self.raw_points(tenant, root, request, tail_from, end, None)
            minutes.append(lake.series.bucket(points, MINUTE_US))
        if minutes:
            joined = pa.concat_tables(minutes)
            whole.append(joined if resolution == "1m" else lake.series.combine(joined, width))
        if not whole:
            return lake.series.BUCKETS_SCHEMA.empty_table()
        return pa.concat_tables(whole).sort_by("ts")

    @staticmethod
    def _encode(request: Request, resolution: str, buckets: pa.Table) -> bytes:
        doc = {
            "site": request.site,
            "sensor": request.sensor,
            "metric": request.metric,
            "start": request.start_us // 1000,
            "end": request.end_us // 1000,
            "resolution": resolution,
            "bucket_ms": WIDTH_US[resolution] // 1000 if resolution in WIDTH_US else None,
            "points": buckets.num_rows,
            "ts": buckets["ts"].to_numpy() // 1000,
            "mean": buckets["mean"].to_numpy(),
            "min": buckets["min"].to_numpy(),
            "max": buckets["max"].to_numpy(),
            "count": buckets["count"].to_numpy(),
        }
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)

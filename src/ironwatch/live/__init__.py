"""Fresh data: the live bus fed by ingest, the recent buffer, live streams (SSE) and series."""

from ironwatch.live.bus import Bus, Filter, Subscription, watch
from ironwatch.live.recent import Recent
from ironwatch.live.series import Request, Series, parse_time
from ironwatch.live.stream import MinuteRollups, Streams

__all__ = [
    "Bus",
    "Filter",
    "MinuteRollups",
    "Recent",
    "Request",
    "Series",
    "Streams",
    "Subscription",
    "parse_time",
    "watch",
]

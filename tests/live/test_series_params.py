"""Series parameters: times in every accepted form, and a clear 422 for each wrong one."""

from __future__ import annotations

from typing import Any

import pytest

from ironwatch import config, live
from ironwatch.errors import InvalidInput

NOW_US = 1_795_514_400_000_000  # 2026-11-24T10:00:00Z
HOUR_US = 3_600_000_000


def service(**env: str) -> live.Series:
    settings = config.load({}, env=env)
    return live.Series(settings, root_of=lambda tenant: None, recent=live.Recent(), now_us=lambda: NOW_US)  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize(
    ("text", "expected_us"),
    [
        ("2026-11-24T10:00:00Z", NOW_US),
        ("2026-11-24T11:00:00+01:00", NOW_US),
        ("2026-11-24T11:00:00 01:00", NOW_US),  # an unescaped + in a query string
        ("2026-11-24T09:59:59.250Z", NOW_US - 750_000),
        ("1795514400000", NOW_US),
        ("now", NOW_US),
        ("-15m", NOW_US - 15 * 60_000_000),
        ("-6h", NOW_US - 6 * HOUR_US),
        ("-7d", NOW_US - 7 * 24 * HOUR_US),
        ("-30s", NOW_US - 30_000_000),
    ],
)
def test_times(text: str, expected_us: int) -> None:
    assert live.parse_time("start", text, NOW_US) == expected_us


@pytest.mark.parametrize("text", ["yesterday", "2026-11-24T10:00:00", "2026-11-24", "-5w", "1e12", ""])
def test_bad_times_name_the_field(text: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        live.parse_time("end", text, NOW_US)
    assert caught.value.field == "end"


BASE: dict[str, Any] = {"site": "hall-a", "sensor": "s-1", "metric": "temp"}


def test_defaults_are_the_last_hour_and_max_points_from_the_settings() -> None:
    request = service(IRONWATCH_SERIES__MAX_POINTS="321").parse(BASE)
    assert (request.start_us, request.end_us) == (NOW_US - HOUR_US, NOW_US)
    assert request.max_points == 321
    assert request.resolution == "auto"


@pytest.mark.parametrize(
    ("params", "field", "says"),
    [
        ({"site": None}, "site", "required"),
        ({"sensor": ""}, "sensor", "required"),
        ({"metric": "bad metric"}, "metric", "does not match"),
        ({"start": "-1h", "end": "-2h"}, "end", "must be after start"),
        ({"start": "now", "end": "now"}, "end", "must be after start"),
        ({"max_points": "0"}, "max_points", "from 1 to 10000"),
        ({"max_points": "10001"}, "max_points", "from 1 to 10000"),
        ({"max_points": "ten"}, "max_points", "from 1 to 10000"),
        ({"resolution": "5m"}, "resolution", "not one of auto, raw, 1m, 1h"),
        ({"start": "-2d", "resolution": "raw"}, "start", "longer than 1d"),
        ({"start": "-3h", "resolution": "1m", "max_points": "100"}, "max_points", "180 buckets of 1m"),
        ({"start": "-200d", "max_points": "1000"}, "max_points", "buckets of 1h"),
    ],
)
def test_wrong_parameters_are_422_naming_the_field(params: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        service().parse({**BASE, **params})
    assert caught.value.status == 422
    assert caught.value.field == field
    assert says in caught.value.message


def test_buckets_count_whole_buckets_touched() -> None:
    request = service().parse({**BASE, "start": "-3h", "resolution": "1h"})
    assert request.buckets(HOUR_US) == 3
    request = service().parse({**BASE, "start": str((NOW_US - HOUR_US - 1000) // 1000), "resolution": "1h"})
    assert request.buckets(HOUR_US) == 2

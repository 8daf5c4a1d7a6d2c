"""The gateway's option checks: one wording for every wrong value, whichever part of the gateway reads it."""

from __future__ import annotations

import math
from typing import Any

import pytest

from ironwatch.errors import ConfigError
from ironwatch.gateway import checks


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: checks.number({"port": 0}, "port", "metrics", 9108, low=1, high=65535, integer=True),
            "setting metrics.port: expected an integer from 1 to 65535, got 0",
        ),
        (
            lambda: checks.number({"port": 80.5}, "port", "metrics", 9108, integer=True),
            "setting metrics.port: expected an integer, got 80.5",
        ),
        (
            lambda: checks.number({"port": True}, "port", "metrics", 9108, integer=True),
            "setting metrics.port: expected an integer, got True",
        ),
        (
            lambda: checks.number({"speed": "fast"}, "speed", "sources[0]", 1.0),
            "setting sources[0].speed: expected a number, got 'fast'",
        ),
        (
            lambda: checks.number({"speed": math.inf}, "speed", "sources[0]", 1.0, low=0.01),
            "setting sources[0].speed: expected a number, got inf",
        ),
        (
            lambda: checks.number({"speed": math.nan}, "speed", "sources[0]", 1.0),
            "setting sources[0].speed: expected a number, got nan",
        ),
        (
            lambda: checks.number({"timeout_s": 0}, "timeout_s", "uplink", 10.0, low=0.1),
            "setting uplink.timeout_s: expected a number of at least 0.1, got 0",
        ),
        (
            lambda: checks.number({"interval_s": 0}, "interval_s", "sources[1]", 1.0, above=0, high=3.6e6),
            "setting sources[1].interval_s: expected a number above 0 and at most 3600000, got 0",
        ),
        (
            lambda: checks.number({}, "sensors", "sources[0]", None, integer=True),
            "setting sources[0].sensors: is required",
        ),
        (
            lambda: checks.text({"url": ""}, "url", "uplink"),
            "setting uplink.url: expected a non-empty string, got ''",
        ),
        (lambda: checks.text({}, "url", "uplink"), "setting uplink.url: is required"),
        (
            lambda: checks.text({"sensor_prefix": 3}, "sensor_prefix", "sources[0]", "", empty=True),
            "setting sources[0].sensor_prefix: expected a string, got 3",
        ),
        (
            lambda: checks.flag({"loop": "yes"}, "loop", "sources[0]"),
            "setting sources[0].loop: expected true or false, got 'yes'",
        ),
        (
            lambda: checks.choice(
                {"table": "coils"}, "table", "registers[2]", ("holding", "input"), "holding"
            ),
            "setting registers[2].table: expected one of holding, input, got 'coils'",
        ),
        (
            lambda: checks.choice({}, "type", "registers[2]", ("int16", "float32")),
            "setting registers[2].type: is required: one of int16, float32",
        ),
    ],
)
def test_a_wrong_option_gets_one_line_in_one_wording(call: Any, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        call()
    assert error.value.message == message


def test_good_options_and_defaults_come_back_typed() -> None:
    assert checks.number({"port": 502}, "port", "", 1, low=1, high=65535, integer=True) == 502
    assert isinstance(checks.number({"speed": 2}, "speed", "", 1.0), float)
    assert checks.number({}, "speed", "", 1.5, low=1) == 1.5
    assert checks.text({}, "host", "metrics", "127.0.0.1") == "127.0.0.1"
    assert checks.text({"p": ""}, "p", "", "x", empty=True) == ""
    assert checks.flag({}, "loop", "") is False
    assert checks.choice({}, "table", "", ("holding", "input"), "holding") == "holding"


def test_an_integer_too_long_for_a_float_is_out_of_range_not_a_crash() -> None:
    # TOML integers have no length limit; math.isfinite() would raise OverflowError on this one.
    huge = int("9" * 400)
    with pytest.raises(ConfigError) as caught:
        checks.number({"port": huge}, "port", "metrics", 9108, low=1, high=65535, integer=True)
    assert str(caught.value).startswith("setting metrics.port: expected an integer from 1 to 65535, got 999")


def test_a_large_integer_bound_is_shown_in_full() -> None:
    with pytest.raises(ConfigError, match=r"expected an integer from 0 to 4611686018427387904, got -1$"):
        checks.number({"seed": -1}, "seed", "sources[0]", 7, low=0, high=2**62, integer=True)

"""How a PLC's raw value becomes a sensor value: ``value = raw * scale + offset``.

Modbus registers and OPC UA nodes map their values the same way, so both read their ``scale`` and
``offset`` options here, with the same checks and the same messages.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ironwatch.errors import ConfigError


def finite_number(item: Mapping[str, Any], key: str, default: float, at: str) -> float:
    """``item[key]`` (or ``default``) as a float; a :class:`ConfigError` naming ``at.key`` otherwise."""
    value = item.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{at}.{key}", f"expected a finite number, got {value!r}")
    return float(value)


def scale_and_offset(item: Mapping[str, Any], at: str) -> tuple[float, float]:
    """The ``scale`` (default 1) and ``offset`` (default 0) of one mapped value."""
    return finite_number(item, "scale", 1.0, at), finite_number(item, "offset", 0.0, at)

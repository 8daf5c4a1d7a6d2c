"""Checks of a gateway.toml's options, shared by every part of the gateway so that they all word a
wrong value the same way: ``{setting}: expected {what}, got {value!r}``.

``where`` is the table an option sits in (``uplink``, ``sources[0]``, ``sources[1].registers[3]``),
``key`` its name; the error names the setting as ``where.key``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ironwatch.errors import ConfigError


def setting(where: str, key: str) -> str:
    """The full name of an option, as errors show it."""
    return f"{where}.{key}" if where else key


def number(
    table: Mapping[str, Any],
    key: str,
    where: str,
    default: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
    integer: bool = False,
) -> Any:
    """A finite number, at least ``low``, more than ``above``, at most ``high``: an ``int`` with
    ``integer``, else a ``float`` (typed ``Any`` so that it fits the field it fills).

    A missing option is ``default``; ``default=None`` makes it required.
    """
    if key not in table and default is None:
        raise ConfigError(setting(where, key), "is required")
    value = table.get(key, default)
    kind = "an integer" if integer else "a number"
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    wrong_kind = not is_number or (integer and not isinstance(value, int))
    # An int is finite however long (TOML allows any length; math.isfinite would overflow on it).
    if wrong_kind or (isinstance(value, float) and not math.isfinite(value)):
        raise ConfigError(setting(where, key), f"expected {kind}, got {value!r}")
    too_low = (low is not None and value < low) or (above is not None and value <= above)
    if too_low or (high is not None and value > high):
        raise ConfigError(setting(where, key), f"expected {kind} {_bounds(low, above, high)}, got {value!r}")
    return int(value) if integer else float(value)


def _bounds(low: float | None, above: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"from {_shown(low)} to {_shown(high)}"
    if above is not None and high is not None:
        return f"above {_shown(above)} and at most {_shown(high)}"
    if low is not None:
        return f"of at least {_shown(low)}"
    if above is not None:
        return f"above {_shown(above)}"
    return f"of at most {_shown(high)}"


def _shown(bound: float | None) -> str:
    """A bound as people write it: 3600000 and 0.01, not 3.6e+06; an int bound in full, however large."""
    if isinstance(bound, int) or (bound is not None and float(bound).is_integer() and abs(bound) < 1e15):
        return str(int(bound))
    return f"{bound:g}"


def text(
    table: Mapping[str, Any], key: str, where: str, default: str | None = None, *, empty: bool = False
) -> str:
    """A string (non-empty unless ``empty``); a missing option is ``default``, or required if ``None``."""
    if key not in table and default is None:
        raise ConfigError(setting(where, key), "is required")
    value = table.get(key, default)
    if not isinstance(value, str) or (not value and not empty):
        raise ConfigError(
            setting(where, key), f"expected {'a' if empty else 'a non-empty'} string, got {value!r}"
        )
    return value


def flag(table: Mapping[str, Any], key: str, where: str, default: bool = False) -> bool:
    """``true`` or ``false``."""
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(setting(where, key), f"expected true or false, got {value!r}")
    return value


def choice(
    table: Mapping[str, Any], key: str, where: str, allowed: tuple[str, ...], default: str | None = None
) -> str:
    """One of ``allowed``; a missing option is ``default``, or required if ``None``."""
    if key not in table and default is None:
        raise ConfigError(setting(where, key), f"is required: one of {', '.join(allowed)}")
    value = table.get(key, default)
    if value not in allowed:
        raise ConfigError(setting(where, key), f"expected one of {', '.join(allowed)}, got {value!r}")
    return str(value)

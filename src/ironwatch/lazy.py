"""Packages that import their public names on first use.

A package's ``__init__`` names its public surface; with :func:`exports` the modules behind those
names are imported only when a name is first used. A process that needs one corner of a package (the
lake writer process needs the Parquet writer, not DuckDB, SQLAlchemy or pandas) then loads only that
corner, and starts faster and smaller.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def exports(package: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``names`` maps each public name to its module.

    A name that maps to itself (``{"jobs": "jobs"}``) is a submodule.
    """

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        loaded = importlib.import_module(f"{package}.{module}")
        value = loaded if module == name else getattr(loaded, name)
        globals_ = importlib.import_module(package).__dict__
        globals_[name] = value  # later uses find it without calling __getattr__ again
        return value

    return __getattr__

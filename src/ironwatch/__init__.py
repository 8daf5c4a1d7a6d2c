"""ironwatch: self-hostable predictive maintenance, from PLC readings to the mechanic on call."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Client", "__version__"]

if TYPE_CHECKING:
    from ironwatch.sdk import Client


def __getattr__(name: str) -> Any:
    # The SDK is imported on first use, so that the server and the CLI never pay for it.
    if name == "Client":
        from ironwatch.sdk import Client

        return Client
    raise AttributeError(f"module 'ironwatch' has no attribute {name!r}")

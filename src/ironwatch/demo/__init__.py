"""The demo: the server and a real gateway with the simulated sort center, in one process.

``run_demo`` is what ``ironwatch demo`` and ``make demo`` run; ``Options`` are its flags. ``Link``
is the loopback relay between the gateway and the server that the demo cuts to show
store-and-forward.
"""

from ironwatch.demo.link import Link
from ironwatch.demo.run import run_demo
from ironwatch.demo.session import GATEWAY, SITE, TENANT, Options

__all__ = ["GATEWAY", "SITE", "TENANT", "Link", "Options", "run_demo"]

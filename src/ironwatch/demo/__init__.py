"""The demo: a server on a data directory fed by a synthetic site of a few hundred sensors.

``run_demo`` is what ``ironwatch demo`` and ``make demo`` run. The feed is self-contained here so
that the gateway issue can replace it with the real gateway and its simulator.
"""

from ironwatch.demo.feed import Feed, Link, Refused
from ironwatch.demo.run import run_demo
from ironwatch.demo.site import METRICS, Site, Window

__all__ = ["METRICS", "Feed", "Link", "Refused", "Site", "Window", "run_demo"]

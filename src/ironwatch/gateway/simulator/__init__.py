"""A simulated sort center for the gateway: conveyor lines whose sensors report 17 metrics each.

``Simulator`` is a gateway :class:`~ironwatch.gateway.source.Source` (and ``Historical``, for
backfill); ``from_config`` builds one from a ``[[sources]]`` table and ``TEMPLATE`` shows every
option. ``Plant`` is the layout (lines, machines, components, sensors) that an asset registry can
read through ``Simulator.plant.spots()``. ``KINDS`` lists the injectable faults; ``Fault`` is one of
them, as written to the ground-truth log. See docs/simulator.md.
"""

from ironwatch.gateway.simulator.faults import KINDS, Fault, Kind
from ironwatch.gateway.simulator.options import TEMPLATE, Options
from ironwatch.gateway.simulator.plant import COMPONENTS, METRICS, Plant, Spot
from ironwatch.gateway.simulator.source import MAX_READ_MS, Simulator, from_config

__all__ = [
    "COMPONENTS",
    "KINDS",
    "MAX_READ_MS",
    "METRICS",
    "TEMPLATE",
    "Fault",
    "Kind",
    "Options",
    "Plant",
    "Simulator",
    "Spot",
    "from_config",
]

"""ironwatch: self-hostable predictive maintenance, from PLC readings to the mechanic on call."""

__version__ = "0.1.0"

__all__ = ["__version__"]

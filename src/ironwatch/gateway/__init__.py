"""The edge gateway: sources (simulator, Modbus, OPC UA, replay), the outbox, the uplink, heartbeats."""

from ironwatch.gateway.source import SAMPLE_SCHEMA, Historical, Source, SourceUnavailable, empty_sample

__all__ = ["SAMPLE_SCHEMA", "Historical", "Source", "SourceUnavailable", "empty_sample"]

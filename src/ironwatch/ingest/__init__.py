"""Ingestion: decoding, validation, quarantine, deduplication and durable append for every front door,
and the health of the gateways and sensors that send."""

from ironwatch.ingest import health_report
from ironwatch.ingest.decode import gunzip, parse_json
from ironwatch.ingest.health import Tracker
from ironwatch.ingest.metrics import Metrics
from ironwatch.ingest.pipeline import Outcome, Pipeline

__all__ = ["Metrics", "Outcome", "Pipeline", "Tracker", "gunzip", "health_report", "parse_json"]

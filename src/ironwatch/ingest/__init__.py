"""Ingestion: decoding, validation, quarantine, deduplication and durable append for every front door."""

from ironwatch.ingest.decode import gunzip, parse_json
from ironwatch.ingest.metrics import Metrics
from ironwatch.ingest.pipeline import Outcome, Pipeline

__all__ = ["Metrics", "Outcome", "Pipeline", "gunzip", "parse_json"]

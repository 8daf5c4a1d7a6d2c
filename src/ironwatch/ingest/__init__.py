"""Ingestion: decoding, validation, quarantine, deduplication and durable append for every front door,
and the health of the gateways and sensors that send.

Names are imported on first use (:mod:`ironwatch.lazy`): the lake writer process needs the log and
the flusher's writer, not the pipeline and its web of services.
"""

from typing import TYPE_CHECKING

from ironwatch.lazy import exports

if TYPE_CHECKING:
    from ironwatch.ingest import health_report
    from ironwatch.ingest.decode import gunzip, parse_json
    from ironwatch.ingest.health import Tracker
    from ironwatch.ingest.metrics import Metrics
    from ironwatch.ingest.pipeline import Outcome, Pipeline

__all__ = ["Metrics", "Outcome", "Pipeline", "Tracker", "gunzip", "health_report", "parse_json"]

__getattr__ = exports(
    __name__,
    {
        "health_report": "health_report",
        "gunzip": "decode",
        "parse_json": "decode",
        "Tracker": "health",
        "Metrics": "metrics",
        "Outcome": "pipeline",
        "Pipeline": "pipeline",
    },
)

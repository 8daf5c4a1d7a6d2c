"""Benchmarks that run the real server: ``ironwatch bench ingest``."""

from ironwatch.bench.ingest import BenchFailed, run_ingest_bench

__all__ = ["BenchFailed", "run_ingest_bench"]

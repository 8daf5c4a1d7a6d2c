"""The demo's banner: where the server is, the analyst key, and commands to paste that work as printed."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Facts:
    """What the banner tells: the running demo as the user will reach it."""

    url: str
    analyst_key: str
    data_dir: Path
    tenant: str
    site: str
    gateway: str
    sensors: int
    metrics: int
    rate_per_min: float
    history: str  # "3 days at 2 readings per minute per metric", or why there is none
    outages: str  # "30 s every 240 s", or "off"
    flush_interval_s: float


def command() -> str:
    """How the user can call ironwatch from here: on the PATH, or the script beside this Python."""
    script = Path(sys.executable).with_name("ironwatch")
    found = shutil.which("ironwatch")
    if found and (not script.exists() or Path(found).resolve() == script.resolve()):
        return "ironwatch"
    if script.exists():
        relative = os.path.relpath(script)
        return relative if not relative.startswith("..") else str(script)
    return "ironwatch"


def banner(facts: Facts) -> str:
    """The lines printed once the demo is ready."""
    cmd = command()
    sql = (
        "SELECT metric, count(*) AS readings, round(avg(value), 2) AS mean "
        "FROM readings GROUP BY metric ORDER BY metric"
    )
    hot = (
        "SELECT sensor, round(avg(value), 2) AS vibration FROM readings "
        "WHERE metric = 'vibration_rms_x_mm_s' AND ts > now() - INTERVAL 1 DAY "
        "GROUP BY sensor ORDER BY vibration DESC LIMIT 5"
    )
    outbox = facts.data_dir / "gateway" / "outbox.db"
    return "\n".join(
        [
            "",
            f"ironwatch demo is running: tenant {facts.tenant}, site {facts.site}, gateway {facts.gateway} "
            f"with the simulator ({facts.sensors} sensors x {facts.metrics} metrics, "
            f"{facts.rate_per_min:g} readings per minute each, about half delivered)",
            f"  URL          {facts.url}",
            f"  analyst key  {facts.analyst_key}   (new on every run; shown only here)",
            f"  data         {facts.data_dir}  (gateway outbox and ground truth in {outbox.parent})",
            f"  history      {facts.history}",
            f"  outages      {facts.outages}",
            f"  SQL sees a reading within {facts.flush_interval_s:g} s of its acknowledgement "
            "(lake.flush_interval_s)",
            "",
            "Try, in another terminal:",
            f"  export IRONWATCH_URL={facts.url}",
            f"  export IRONWATCH_KEY={facts.analyst_key}",
            '  curl -s -H "Authorization: Bearer $IRONWATCH_KEY" -H "Content-Type: application/json" \\',
            f'    -d \'{{"sql": "{sql}", "format": "csv"}}\' \\',
            "    $IRONWATCH_URL/api/v1/query",
            f'  {cmd} query "{hot}"',
            f'  {cmd} query "SELECT count(*) AS readings, count(DISTINCT sensor) AS sensors FROM readings"',
            f"  {cmd} gateway status --outbox {outbox}    # the gateway's counts",
            f"  head -3 {outbox.parent / 'simulator-faults.jsonl'}    # the injected faults (ground truth)",
            "  curl -s $IRONWATCH_URL/metrics | grep '^ironwatch_readings.*_total'",
            f"  API documentation: {facts.url}/api/v1/docs",
            "",
            "Ctrl-C stops the demo; the data stays and the next run continues where this one stopped.",
        ]
    )

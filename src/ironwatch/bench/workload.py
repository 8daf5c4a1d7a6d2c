"""The synthetic site every ingest benchmark sends: 550 sensors x 17 metrics reporting once a second.

A reading is one ``(step, series)`` pair: ``series = sensor_index * 17 + metric_index`` and ``ts`` is
``start_ms + step * 1000``. Readings are sent time-major (at each step every series reports once),
and the first ``readings`` pairs in that order make up the workload. Clients split the sensors into
contiguous blocks, one gateway each, so every client sends its share in time order.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator

import numpy as np
import orjson

SITE = "hall-a"
SENSORS = 550
#: metric -> (typical level, swing); plausible magnitudes so values compress like real ones.
METRICS: dict[str, tuple[float, float]] = {
    "bearing_temp_c": (48.0, 9.0),
    "motor_temp_c": (62.0, 12.0),
    "ambient_temp_c": (21.0, 3.0),
    "vib_rms_x_mm_s": (2.4, 1.3),
    "vib_rms_y_mm_s": (2.2, 1.2),
    "vib_rms_z_mm_s": (1.8, 1.0),
    "vib_peak_g": (0.9, 0.4),
    "crest_factor": (3.4, 0.6),
    "kurtosis": (3.1, 0.5),
    "speed_rpm": (1480.0, 25.0),
    "belt_speed_m_s": (1.9, 0.2),
    "voltage_v": (398.0, 4.0),
    "current_a": (11.5, 2.5),
    "power_kw": (7.2, 1.8),
    "oil_pressure_bar": (4.1, 0.4),
    "ultrasound_db": (33.0, 7.0),
    "humidity_pct": (47.0, 9.0),
}
METRIC_NAMES = tuple(METRICS)
SERIES = SENSORS * len(METRICS)
STEP_MS = 1000

_SENSOR_NAMES = np.array([f"s-{i:04d}" for i in range(SENSORS)], dtype=object)
_METRIC_NAMES = np.array(METRIC_NAMES, dtype=object)
_LEVEL = np.array([lvl for lvl, _ in METRICS.values()])
_SWING = np.array([swing for _, swing in METRICS.values()])


@dataclasses.dataclass(frozen=True)
class Workload:
    """``readings`` readings starting at ``start_ms``, split between ``clients`` gateways."""

    readings: int
    clients: int
    start_ms: int
    batch: int = 1000

    @classmethod
    def create(cls, readings: int, clients: int, batch: int = 1000, now_s: float | None = None) -> Workload:
        """Place the readings in the recent past: none in the future, step 0 at least 3 hours back."""
        steps = math.ceil(readings / SERIES)
        span_s = max(3 * 3600, steps + 600)
        now_min = int(time.time() if now_s is None else now_s) // 60 * 60
        return cls(readings=readings, clients=clients, start_ms=(now_min - span_s) * 1000, batch=batch)

    def gateway(self, client: int) -> str:
        return f"gw-bench-{client}"

    def sensor_range(self, client: int) -> tuple[int, int]:
        """The half-open range of sensor indexes one client sends."""
        per = math.ceil(SENSORS / self.clients)
        return min(SENSORS, client * per), min(SENSORS, (client + 1) * per)

    def client_readings(self, client: int) -> tuple[np.ndarray, np.ndarray]:
        """``(step, series)`` of every reading a client sends, in sending order."""
        lo, hi = self.sensor_range(client)
        width = (hi - lo) * len(METRICS)
        steps = math.ceil(self.readings / SERIES)
        step = np.repeat(np.arange(steps, dtype=np.int64), width)
        series = np.tile(np.arange(lo * len(METRICS), hi * len(METRICS), dtype=np.int64), steps)
        keep = step * SERIES + series < self.readings
        return step[keep], series[keep]

    def client_count(self, client: int) -> int:
        return len(self.client_readings(client)[0])

    def values(self, step: np.ndarray, series: np.ndarray) -> np.ndarray:
        """A slow wave per series with a little deterministic jitter, at sensor resolution (3 decimals)."""
        metric = series % len(METRICS)
        phase = (series * 0.6180339887) % 1.0 * 2 * np.pi
        period_s = 240.0 + (series * 7919 % 3600)
        jitter = ((step * 2654435761 + series * 40503) % 1000) / 1000.0 - 0.5
        wave = np.sin(2 * np.pi * step / period_s + phase)
        out: np.ndarray = np.round(_LEVEL[metric] + _SWING[metric] * (0.85 * wave + 0.3 * jitter), 3)
        return out

    def batches(self, client: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """``(ts_ms, sensor, metric, value)`` arrays of each batch a client sends."""
        step, series = self.client_readings(client)
        ts = self.start_ms + step * STEP_MS
        value = self.values(step, series)
        sensor = _SENSOR_NAMES[series // len(METRICS)]
        metric = _METRIC_NAMES[series % len(METRICS)]
        for i in range(0, len(step), self.batch):
            j = i + self.batch
            yield ts[i:j], sensor[i:j], metric[i:j], value[i:j]


def envelope(
    gateway: str,
    batch: int,
    form: str,
    ts: np.ndarray,
    sensor: np.ndarray,
    metric: np.ndarray,
    value: np.ndarray,
) -> bytes:
    """One batch envelope as JSON bytes, in ``rows`` or ``columns`` form, ``ts`` as epoch milliseconds."""
    head = {
        "gateway": gateway,
        "batch": batch,
        "site": SITE,
        "sent_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    ts_l, sensor_l, metric_l, value_l = ts.tolist(), sensor.tolist(), metric.tolist(), value.tolist()
    if form == "columns":
        head["columns"] = {"ts": ts_l, "sensor": sensor_l, "metric": metric_l, "value": value_l}
    elif form == "rows":
        head["readings"] = [
            {"ts": t, "sensor": s, "metric": m, "value": v}
            for t, s, m, v in zip(ts_l, sensor_l, metric_l, value_l, strict=True)
        ]
    else:
        raise ValueError(f"form must be rows or columns, not {form!r}")
    return orjson.dumps(head)

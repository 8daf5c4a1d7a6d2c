"""One frozen ``Settings`` object, read once at start-up and passed down.

Precedence: command-line flag > ``IRONWATCH_SECTION__KEY`` environment variable > ``ironwatch.toml``
(in the data directory, or the file named by ``IRONWATCH_CONFIG``) > default. Every setting is declared
once in ``FIELDS`` with its type and documentation; ``ironwatch config show`` prints each value and
where it came from, and a test checks that every setting is documented in ``docs/configuration.md``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ironwatch.errors import ConfigError

ENV_PREFIX = "IRONWATCH_"


@dataclasses.dataclass(frozen=True)
class Field:
    """One setting: its section, key, type, default and the sentence that documents it."""

    section: str
    key: str
    kind: type
    default: Any
    doc: str
    is_secret: bool = False

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def env(self) -> str:
        return f"{ENV_PREFIX}{self.section.upper()}__{self.key.upper()}"


FIELDS: tuple[Field, ...] = (
    Field(
        "server",
        "data_dir",
        str,
        "./ironwatch-data",
        "Directory for metadata, the write-ahead log and default lake roots.",
    ),
    Field("server", "host", str, "127.0.0.1", "Address the HTTP server binds to."),
    Field("server", "port", int, 8000, "TCP port of the HTTP server (0 picks a free one)."),
    Field(
        "server",
        "max_body_bytes",
        int,
        16 * 1024 * 1024,
        "Largest accepted request body, after gzip decoding.",
    ),
    Field(
        "store",
        "url",
        str,
        "",
        "Metadata database URL (SQLAlchemy); empty means sqlite in the data directory.",
    ),
    Field(
        "lake",
        "root_template",
        str,
        "",
        "Default storage root URL for new tenants, with {tenant}; empty means DATA_DIR/lake/{tenant}.",
    ),
    Field(
        "lake",
        "flush_interval_s",
        float,
        10.0,
        "Longest time an acknowledged reading waits in the log before it is written to Parquet.",
    ),
    Field(
        "lake",
        "segment_max_bytes",
        int,
        8 * 1024 * 1024,
        "Write-ahead log segment size that triggers a flush to Parquet.",
    ),
    Field("lake", "compression_level", int, 3, "zstd level of raw Parquet files."),
    Field(
        "lake",
        "flush_process",
        bool,
        True,
        "Write Parquet in a separate lake writer process, so flushing never holds up ingest.",
    ),
    Field("lake", "compaction", bool, True, "Whether the server compacts closed hours in the background."),
    Field("lake", "compact_after_s", float, 7200.0, "An hour is compacted this long after it ended."),
    Field("lake", "compaction_interval_s", float, 60.0, "Pause between background compaction passes."),
    Field(
        "lake",
        "compaction_grace_s",
        float,
        900.0,
        "Time between a compaction's commit and moving the old files away (queries still reading them).",
    ),
    Field("lake", "retired_keep_s", float, 7 * 86400.0, "How long retired raw files are kept."),
    Field("lake", "compaction_level", int, 6, "zstd level of compacted raw files."),
    Field("lake", "compaction_row_group_rows", int, 1 << 20, "Most rows in a row group of a compacted file."),
    Field(
        "lake",
        "compaction_chunk_rows",
        int,
        500_000,
        "Readings sorted in memory at once while compacting; more is faster and takes more memory.",
    ),
    Field(
        "ingest",
        "max_future_s",
        float,
        600.0,
        "Readings stamped further in the future than this go to quarantine.",
    ),
    Field("ingest", "max_readings", int, 200_000, "Most readings accepted in one batch."),
    Field("ingest", "max_errors", int, 100, "Most per-reading errors listed in one ingest answer."),
    Field(
        "ingest",
        "workers",
        int,
        0,
        "Processes that decode and check busy MQTT streams beside the server, on spare cores (0: none).",
    ),
    Field(
        "auth",
        "key_cache_s",
        float,
        2.0,
        "How long a checked API key is trusted before it is looked up again (revocation delay).",
    ),
    Field(
        "mqtt",
        "url",
        str,
        "",
        "Broker to subscribe to, such as mqtt://127.0.0.1:1883; empty disables MQTT ingest.",
    ),
    Field("mqtt", "username", str, "", "Broker user name."),
    Field("mqtt", "password", str, "", "Broker password.", is_secret=True),
    Field(
        "mqtt",
        "client_id",
        str,
        "ironwatch-ingest",
        "Client id; the broker keeps this session's messages while the server is down.",
    ),
    Field(
        "mqtt",
        "share_group",
        str,
        "ironwatch",
        "Shared-subscription group, so several ingest workers split one stream.",
    ),
    Field("query", "timeout_s", float, 30.0, "Longest time one SQL query may run."),
    Field("query", "memory_limit", str, "512MB", "DuckDB memory limit of one SQL query."),
    Field("query", "max_rows", int, 1_000_000, "Most rows a synchronous query answer may hold."),
    Field("query", "workers", int, 2, "Query jobs that run at the same time (the rest wait in the queue)."),
    Field("query", "max_jobs", int, 20, "Most query jobs one tenant may have queued or running."),
    Field("query", "job_timeout_s", float, 600.0, "Longest time one query job may run."),
    Field(
        "query",
        "results_keep_s",
        float,
        7 * 24 * 3600.0,
        "How long a finished query job and its saved result are kept; 0 keeps them for ever.",
    ),
    Field("query", "idle_sandboxes", int, 4, "Sandboxed DuckDBs kept open between queries, all tenants."),
    Field("query", "idle_sandboxes_per_tenant", int, 2, "Sandboxed DuckDBs of one tenant kept open."),
    Field("query", "idle_sandbox_s", float, 300.0, "Longest a sandboxed DuckDB is kept open unused."),
    Field(
        "health",
        "heartbeat_interval_s",
        float,
        10.0,
        "How often gateways are expected to send a heartbeat.",
    ),
    Field(
        "health",
        "offline_after_heartbeats",
        float,
        3.0,
        "A gateway is offline after this many heartbeat intervals without any contact.",
    ),
    Field(
        "health",
        "silent_after_s",
        float,
        300.0,
        "A sensor whose gateway is online is silent after this long without a reading.",
    ),
    Field("health", "rate_window_s", float, 600.0, "Window over which a sensor's actual rate is measured."),
    Field(
        "health",
        "stale_ratio",
        float,
        0.5,
        "A sensor is stale when its actual rate is below this fraction of its declared rate.",
    ),
    Field(
        "health",
        "default_rate_per_min",
        float,
        30.0,
        "Declared readings per minute of a sensor that has no declared rate of its own.",
    ),
    Field(
        "health",
        "persist_interval_s",
        float,
        5.0,
        "How often gateway and sensor health is saved to the metadata database.",
    ),
    Field("live", "interval_s", float, 0.25, "How often a live stream sends what arrived since then."),
    Field("live", "heartbeat_s", float, 15.0, "A quiet live stream sends a heartbeat comment this often."),
    Field(
        "live",
        "queue_readings",
        int,
        100_000,
        "Most readings queued for one live listener; past it readings are skipped and it is told so.",
    ),
    Field(
        "live",
        "drop_after_s",
        float,
        30.0,
        "A live listener whose queue stays full this long is dropped.",
    ),
    Field("live", "max_listeners", int, 1000, "Most live streams open at once on one server."),
    Field(
        "live",
        "recent_max_readings",
        int,
        1_000_000,
        "Most acknowledged readings kept in memory until the lake has them, for fresh series.",
    ),
    Field("series", "max_points", int, 1000, "Points of a series when the request does not say."),
    Field("series", "max_points_limit", int, 10_000, "Most points a series request may ask for."),
    Field(
        "series",
        "raw_max_range_s",
        float,
        86_400.0,
        "Longest time range a series is read from raw readings; longer ranges use rollups.",
    ),
    Field(
        "series",
        "tail_s",
        float,
        120.0,
        "The newest minutes of a 1m or 1h series are computed from raw readings, not rollups.",
    ),
    Field("log", "level", str, "warning", "Log level: debug, info, warning or error."),
)


def _section_class(section: str) -> type:
    fields = [(f.key, f.kind, dataclasses.field(default=f.default)) for f in FIELDS if f.section == section]
    return dataclasses.make_dataclass(f"{section.title()}Settings", fields, frozen=True)


ServerSettings = _section_class("server")
StoreSettings = _section_class("store")
LakeSettings = _section_class("lake")
IngestSettings = _section_class("ingest")
AuthSettings = _section_class("auth")
MqttSettings = _section_class("mqtt")
QuerySettings = _section_class("query")
LogSettings = _section_class("log")
HealthSettings = _section_class("health")
LiveSettings = _section_class("live")
SeriesSettings = _section_class("series")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every setting of ironwatch, grouped by section; build it with :func:`load`."""

    server: Any = dataclasses.field(default_factory=ServerSettings)
    store: Any = dataclasses.field(default_factory=StoreSettings)
    lake: Any = dataclasses.field(default_factory=LakeSettings)
    ingest: Any = dataclasses.field(default_factory=IngestSettings)
    auth: Any = dataclasses.field(default_factory=AuthSettings)
    mqtt: Any = dataclasses.field(default_factory=MqttSettings)
    query: Any = dataclasses.field(default_factory=QuerySettings)
    log: Any = dataclasses.field(default_factory=LogSettings)
    health: Any = dataclasses.field(default_factory=HealthSettings)
    live: Any = dataclasses.field(default_factory=LiveSettings)
    series: Any = dataclasses.field(default_factory=SeriesSettings)
    origins: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False)

    def __repr__(self) -> str:
        parts = [f"{name}={_masked(name, value)!r}" for name, value, _ in self.items()]
        return f"Settings({', '.join(parts)})"

    @property
    def data_dir(self) -> Path:
        return Path(self.server.data_dir).expanduser().resolve()

    @property
    def store_url(self) -> str:
        return str(self.store.url) or f"sqlite:///{self.data_dir / 'ironwatch.db'}"

    def root_url(self, tenant: str) -> str:
        """The default storage root URL of a tenant that was created without ``--root``."""
        template = str(self.lake.root_template)
        if template:
            return template.format(tenant=tenant)
        return (self.data_dir / "lake" / tenant).as_uri()

    def items(self) -> list[tuple[str, Any, str]]:
        """Every setting as (name, value, origin), in declaration order."""
        out = []
        for f in FIELDS:
            value = getattr(getattr(self, f.section), f.key)
            out.append((f.name, value, self.origins.get(f.name, "default")))
        return out


def _masked(name: str, value: Any) -> Any:
    field = next(f for f in FIELDS if f.name == name)
    return "********" if field.is_secret and value else value


def masked(name: str, value: Any) -> Any:
    """The value as it may be shown: secrets are masked."""
    return _masked(name, value)


def _coerce(field: Field, raw: Any, source: str) -> Any:
    if isinstance(raw, field.kind) and not (field.kind is int and isinstance(raw, bool)):
        return raw
    try:
        if field.kind is bool:
            text = str(raw).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if field.kind is int and isinstance(raw, float) and not raw.is_integer():
            raise ValueError(raw)
        return field.kind(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(field.name, f"{raw!r} from {source} is not a valid {field.kind.__name__}") from exc


def load(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Build the settings from flags (``{"server.port": 9000}``), the environment and ``ironwatch.toml``.

    ``None`` values in ``flags`` mean "not given". The toml file is the one named by
    ``IRONWATCH_CONFIG``, else ``ironwatch.toml`` in the data directory, if it exists.
    """
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    env = os.environ if env is None else env
    by_name = {f.name: f for f in FIELDS}
    unknown = [k for k in flags if k not in by_name]
    if unknown:
        raise ConfigError(unknown[0], "unknown setting")
    for key in env:
        if key.startswith(ENV_PREFIX) and "__" in key and key not in {f.env for f in FIELDS}:
            raise ConfigError(key, "unknown setting in the environment")

    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    # The data directory decides where ironwatch.toml is, so it is resolved first.
    data_dir_field = by_name["server.data_dir"]
    data_dir = flags.get("server.data_dir") or env.get(data_dir_field.env) or data_dir_field.default
    toml_path = config_file or (Path(env["IRONWATCH_CONFIG"]) if env.get("IRONWATCH_CONFIG") else None)
    if toml_path is None:
        candidate = Path(str(data_dir)).expanduser() / "ironwatch.toml"
        toml_path = candidate if candidate.is_file() else None
    file_values: dict[str, Any] = {}
    if toml_path is not None:
        try:
            document = tomllib.loads(Path(toml_path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(str(toml_path), f"cannot read: {exc}") from exc
        for section, table in document.items():
            if not isinstance(table, dict):
                raise ConfigError(f"{toml_path}: {section}", "expected a [section] table")
            for key, raw in table.items():
                name = f"{section}.{key}"
                if name not in by_name:
                    raise ConfigError(f"{toml_path}: {name}", "unknown setting")
                file_values[name] = raw

    for f in FIELDS:
        if f.name in flags:
            values[f.name], origins[f.name] = _coerce(f, flags[f.name], "flag"), "flag"
        elif f.env in env:
            values[f.name], origins[f.name] = _coerce(f, env[f.env], f.env), f"env {f.env}"
        elif f.name in file_values:
            values[f.name], origins[f.name] = (
                _coerce(f, file_values[f.name], str(toml_path)),
                f"file {toml_path}",
            )
        else:
            values[f.name], origins[f.name] = f.default, "default"

    sections: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        section, key = name.split(".", 1)
        sections.setdefault(section, {})[key] = value
    classes = {
        "server": ServerSettings,
        "store": StoreSettings,
        "lake": LakeSettings,
        "ingest": IngestSettings,
        "auth": AuthSettings,
        "mqtt": MqttSettings,
        "query": QuerySettings,
        "log": LogSettings,
        "health": HealthSettings,
        "live": LiveSettings,
        "series": SeriesSettings,
    }
    built = {name: cls(**sections.get(name, {})) for name, cls in classes.items()}
    return Settings(**built, origins=origins)

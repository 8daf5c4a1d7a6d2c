"""The gateway's configuration file (``gateway.toml``): read, checked, and turned into sources.

Every mistake is a :class:`ConfigError` naming the key (``uplink.url``, ``sources[1].registers[3].type``)
and one reason, so ``ironwatch gateway check`` can print it as one line.
"""

from __future__ import annotations

import dataclasses
import importlib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ironwatch.errors import ConfigError
from ironwatch.gateway import checks
from ironwatch.gateway.source import Source
from ironwatch.model import is_id

#: Source types and the module that builds each (imported only when a config uses it).
SOURCE_TYPES: dict[str, str] = {
    "simulator": "ironwatch.gateway.simulator",
    "modbus": "ironwatch.gateway.modbus",
    "opcua": "ironwatch.gateway.opcua",
    "replay": "ironwatch.gateway.replay",
}
_SECTIONS = {
    "gateway": {"id", "site", "heartbeat_interval_s"},
    "uplink": {
        "url",
        "key",
        "tenant",
        "username",
        "password",
        "timeout_s",
        "backoff_min_s",
        "backoff_max_s",
        "in_flight",
    },
    "buffer": {"path", "max_bytes", "dead_letter"},
    "batch": {"max_readings", "interval_s"},
    "metrics": {"host", "port"},
}


@dataclasses.dataclass(frozen=True)
class Uplink:
    """Where batches go: ``http(s)://server`` with a gateway key, or ``mqtt(s)://broker`` and a tenant."""

    url: str
    key: str | None = dataclasses.field(default=None, repr=False)
    tenant: str | None = None
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    timeout_s: float = 10.0
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0
    in_flight: int = 4

    @property
    def scheme(self) -> str:
        """``http``, ``https``, ``mqtt`` or ``mqtts``."""
        return urlsplit(self.url).scheme

    @property
    def is_mqtt(self) -> bool:
        """Whether batches go through an MQTT broker."""
        return self.scheme in ("mqtt", "mqtts")


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    """One gateway: who it is, where it sends, how it buffers, and its sources (as TOML tables)."""

    gateway: str
    site: str
    uplink: Uplink
    buffer_path: Path
    dead_letter_path: Path
    buffer_max_bytes: int = 1 << 30
    batch_max_readings: int = 5000
    batch_interval_s: float = 1.0
    heartbeat_interval_s: float = 30.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9108
    sources: tuple[Mapping[str, Any], ...] = ()
    base_dir: Path = Path(".")

    def build_sources(self) -> list[Source]:
        """The configured sources, built (nothing is connected yet)."""
        return [build_source(table, f"sources[{i}]", self.base_dir) for i, table in enumerate(self.sources)]


def build_source(table: Mapping[str, Any], where: str, base_dir: Path) -> Source:
    """Build one source from its ``[[sources]]`` table."""
    kind = table.get("type")
    if kind not in SOURCE_TYPES:
        known = ", ".join(SOURCE_TYPES)
        raise ConfigError(f"{where}.type", f"unknown source type {kind!r} (expected one of {known})")
    module = importlib.import_module(SOURCE_TYPES[kind])
    source: Source = module.from_config(table, where, base_dir)
    return source


def source_template(kind: str) -> str:
    """The commented ``[[sources]]`` example of a source type."""
    return str(importlib.import_module(SOURCE_TYPES[kind]).TEMPLATE)


def load(path: Path) -> GatewayConfig:
    """Read and check ``path``; sources are checked by building them (without connecting)."""
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("--config", f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("--config", f"{path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from exc
    config = parse(doc, path.resolve().parent)
    config.build_sources()
    return config


def parse(doc: Mapping[str, Any], base_dir: Path) -> GatewayConfig:
    """Check the document of a ``gateway.toml`` and return the configuration."""
    for key, value in doc.items():
        if key == "sources":
            continue
        if key not in _SECTIONS:
            raise ConfigError(key, f"unknown section (expected {', '.join([*_SECTIONS, 'sources'])})")
        if not isinstance(value, dict):
            raise ConfigError(key, "expected a table")
        unknown = set(value) - _SECTIONS[key]
        if unknown:
            name = sorted(unknown)[0]
            raise ConfigError(
                f"{key}.{name}", f"unknown key (expected one of {', '.join(sorted(_SECTIONS[key]))})"
            )
    section = {name: doc.get(name, {}) for name in _SECTIONS}
    gw, up, buf, batch, metrics = (section[n] for n in ("gateway", "uplink", "buffer", "batch", "metrics"))
    gateway = _id(gw, "gateway", "id")
    site = _id(gw, "gateway", "site")
    uplink = _uplink(up)
    sources = doc.get("sources")
    if not isinstance(sources, list) or not sources:
        raise ConfigError("sources", "expected at least one [[sources]] table")
    for i, table in enumerate(sources):
        if not isinstance(table, dict):
            raise ConfigError(f"sources[{i}]", "expected a table")
        if table.get("type") not in SOURCE_TYPES:
            known = ", ".join(SOURCE_TYPES)
            raise ConfigError(
                f"sources[{i}].type", f"unknown source type {table.get('type')!r} (expected one of {known})"
            )
    buffer_path = base_dir / checks.text(buf, "path", "buffer", "outbox.db")
    return GatewayConfig(
        gateway=gateway,
        site=site,
        uplink=uplink,
        buffer_path=buffer_path,
        dead_letter_path=base_dir
        / checks.text(buf, "dead_letter", "buffer", f"{buffer_path.stem}-dead.jsonl"),
        buffer_max_bytes=checks.number(buf, "max_bytes", "buffer", 1 << 30, low=1 << 20, integer=True),
        batch_max_readings=checks.number(
            batch, "max_readings", "batch", 5000, low=1, high=100_000, integer=True
        ),
        batch_interval_s=checks.number(batch, "interval_s", "batch", 1.0, low=0.01),
        heartbeat_interval_s=checks.number(gw, "heartbeat_interval_s", "gateway", 30.0, low=0.1),
        metrics_host=checks.text(metrics, "host", "metrics", "127.0.0.1"),
        metrics_port=checks.number(metrics, "port", "metrics", 9108, low=0, high=65535, integer=True),
        sources=tuple(sources),
        base_dir=base_dir,
    )


def _uplink(up: Mapping[str, Any]) -> Uplink:
    url = checks.text(up, "url", "uplink", None)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "mqtt", "mqtts") or not parts.hostname:
        raise ConfigError("uplink.url", f"{url!r}: expected http(s)://HOST:PORT or mqtt(s)://HOST:PORT")
    uplink = Uplink(
        url=url.rstrip("/"),
        key=up.get("key"),
        tenant=up.get("tenant"),
        username=up.get("username"),
        password=up.get("password"),
        timeout_s=checks.number(up, "timeout_s", "uplink", 10.0, low=0.1),
        backoff_min_s=checks.number(up, "backoff_min_s", "uplink", 0.5, low=0.01),
        backoff_max_s=checks.number(up, "backoff_max_s", "uplink", 30.0, low=0.01),
        in_flight=checks.number(up, "in_flight", "uplink", 4, low=1, high=64, integer=True),
    )
    if uplink.is_mqtt:
        if not isinstance(uplink.tenant, str) or not is_id(uplink.tenant):
            raise ConfigError("uplink.tenant", "an MQTT uplink needs the tenant id (it is part of the topic)")
    elif not isinstance(uplink.key, str) or not uplink.key:
        raise ConfigError(
            "uplink.key", "an HTTP uplink needs the gateway key (ironwatch keys create --role gateway)"
        )
    if uplink.backoff_max_s < uplink.backoff_min_s:
        raise ConfigError("uplink.backoff_max_s", "must not be smaller than uplink.backoff_min_s")
    return uplink


def _id(table: Mapping[str, Any], section: str, key: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not is_id(value):
        raise ConfigError(
            f"{section}.{key}", f"{value!r} is not an id (letters, digits, '.', '_', '-'; at most 64)"
        )
    return value


def with_sources(config: GatewayConfig, tables: list[dict[str, Any]]) -> GatewayConfig:
    """The same configuration with other ``[[sources]]`` tables (command-line overrides)."""
    return dataclasses.replace(config, sources=tuple(tables))

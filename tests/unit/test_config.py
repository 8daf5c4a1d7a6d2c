"""Settings: precedence flag > environment > ironwatch.toml > default, origins, masked secrets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ironwatch import config
from ironwatch.errors import ConfigError


def test_precedence_and_origins(tmp_path: Path) -> None:
    (tmp_path / "ironwatch.toml").write_text(
        '[server]\nport = 9100\nhost = "0.0.0.0"\n[query]\ntimeout_s = 5\n'
    )
    env = {"IRONWATCH_SERVER__DATA_DIR": str(tmp_path), "IRONWATCH_SERVER__PORT": "9200"}
    settings = config.load({"server.host": "127.0.0.2"}, env=env)
    assert settings.server.host == "127.0.0.2"
    assert settings.server.port == 9200
    assert settings.query.timeout_s == 5.0
    assert settings.ingest.max_future_s == 600.0
    origins = {name: origin for name, _, origin in settings.items()}
    assert origins["server.host"] == "flag"
    assert origins["server.port"] == "env IRONWATCH_SERVER__PORT"
    assert origins["query.timeout_s"].startswith("file ")
    assert origins["ingest.max_future_s"] == "default"


def test_secrets_are_masked_in_repr() -> None:
    settings = config.load({"mqtt.password": "hunter2"}, env={})
    assert "hunter2" not in repr(settings)
    assert config.masked("mqtt.password", settings.mqtt.password) == "********"


@pytest.mark.parametrize(
    ("flags", "env", "needle"),
    [
        ({"server.port": "eighty"}, {}, "server.port"),
        ({"nope.key": 1}, {}, "nope.key"),
        ({}, {"IRONWATCH_SERVER__PROT": "1"}, "IRONWATCH_SERVER__PROT"),
    ],
)
def test_bad_settings_are_named(flags: dict[str, object], env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        config.load(flags, env=env)


def test_unknown_setting_in_the_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "ironwatch.toml"
    path.write_text("[server]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"server\.prot"):
        config.load(env={"IRONWATCH_CONFIG": str(path)})

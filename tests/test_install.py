"""The core install stays lean: the gateway and ``--help`` run without the extras, and a command
that needs a missing extra says in one line which ``pip install`` brings it.

Without building virtualenvs: each command runs in a subprocess whose prelude sets
``sys.modules[name] = None`` for the libraries it must do without, so importing one of them raises
``ModuleNotFoundError`` exactly as on a machine where it is not installed.
"""

from __future__ import annotations

import os
import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import ironwatch.gateway
from conftest import free_port
from ironwatch.cli import EXTRA_MODULES

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

# The libraries a gateway box never needs (server, bench, SDK, PostgreSQL), by import name; pandas is
# left out only because pyarrow's pandas shim mistakes a None in sys.modules for an installed pandas.
NOT_ON_A_GATEWAY = (*EXTRA_MODULES, "uvloop", "httpx", "psycopg")
# ... and the extras of its sources and uplinks: a gateway with an HTTP uplink and the simulator
# needs none of them (their modules import them when such a source or uplink is configured).
NOT_CORE = (*NOT_ON_A_GATEWAY, "paho", "pymodbus", "asyncua")
SERVER_ONLY = tuple(name for name, (_, extra) in EXTRA_MODULES.items() if extra == "server")

PRELUDE = """
import sys
for name in {missing!r}:
    sys.modules[name] = None
{body}
"""


def run_without(
    missing: tuple[str, ...], body: str, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``body`` (with ``sys.argv[1:]`` = ``args``) in a Python where ``missing`` are not installed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRONWATCH_")}
    return subprocess.run(
        [sys.executable, "-c", PRELUDE.format(missing=missing, body=body), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def cli_without(
    missing: tuple[str, ...], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``ironwatch ARGS`` in a Python where ``missing`` are not installed."""
    body = "from ironwatch.cli import main\nsys.exit(main(sys.argv[1:]))"
    return run_without(missing, body, *args, cwd=cwd)


def test_every_gateway_module_imports_on_the_core_install() -> None:
    names = [info.name for info in pkgutil.walk_packages(ironwatch.gateway.__path__, "ironwatch.gateway.")]
    body = "import importlib\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\nprint('ok')"
    done = run_without(NOT_ON_A_GATEWAY, body, *names)
    assert (done.returncode, done.stdout, done.stderr) == (0, "ok\n", "")


def test_gateway_init_and_check_run_on_the_core_install(tmp_path: Path) -> None:
    uplink = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    init = cli_without(
        NOT_CORE,
        *("gateway", "init", "--site", "hall-a", "--gateway", "gw-a", "--uplink", uplink),
        *("--key", "iw_gateway_key", "--simulator", "--sensors", "5"),
    )
    assert init.returncode == 0, init.stderr
    assert init.stderr == ""
    assert 'id = "gw-a"' in init.stdout and 'type = "simulator"' in init.stdout
    config = tmp_path / "gateway.toml"
    config.write_text(init.stdout)

    check = cli_without(NOT_CORE, "gateway", "check", "--config", str(config), cwd=tmp_path)
    lines = check.stdout.splitlines()
    assert check.returncode == 1, check
    assert lines[:2] == [f"config {config}: ok (gateway gw-a, site hall-a)", "sources[0] simulator: ok"]
    assert len(lines) == 3 and lines[2].startswith(f"uplink {uplink}: ") and "ok" not in lines[2], lines
    assert check.stderr == "1 problem(s) found\n"


def test_help_and_config_show_run_on_the_core_install(tmp_path: Path) -> None:
    done = cli_without(NOT_CORE, "--help")
    assert done.returncode == 0, done.stderr
    assert "server" in done.stdout and "gateway" in done.stdout and "example:" in done.stdout
    done = cli_without(NOT_CORE, "config", "show", "--data-dir", str(tmp_path / "data"))
    assert done.returncode == 0, done.stderr
    assert "server.data_dir" in done.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["server", "--port", "0"],
        ["demo", "--port", "0"],
        ["tenants", "list"],
        ["keys", "list", "--tenant", "acme"],
        ["gateways", "list", "--tenant", "acme"],
        ["query", "--tenant", "acme", "SELECT 1"],
        ["compact", "--tenant", "acme"],
        ["rollups", "rebuild", "--tenant", "acme"],
    ],
    ids=lambda args: " ".join(args[:2]),
)
def test_a_server_command_without_the_server_extra_names_it(tmp_path: Path, args: list[str]) -> None:
    data_dir = tmp_path / "data"
    done = cli_without(SERVER_ONLY, *args, "--data-dir", str(data_dir))
    assert done.returncode == 1, done
    assert done.stdout == ""
    library = "|".join(SERVER_ONLY)
    pattern = rf"error: ({library}) is not installed: pip install 'ironwatch\[server\]'"
    assert re.fullmatch(pattern, done.stderr.rstrip("\n")), done.stderr
    assert not data_dir.exists()  # it stopped before doing anything


def test_the_server_command_names_the_first_missing_library(tmp_path: Path) -> None:
    done = cli_without(SERVER_ONLY, "server", "--data-dir", str(tmp_path / "data"))
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "error: fastapi is not installed: pip install 'ironwatch[server]'\n"


def test_a_query_on_a_server_needs_no_extra() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = cli_without(NOT_CORE, "query", "--url", url, "--key", "iw_key", "SELECT 1")
    assert done.returncode == 1, done
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("error: "), done.stderr
    assert "is not installed" not in done.stderr


def test_a_missing_library_of_the_server_extra_keeps_its_traceback_with_debug(tmp_path: Path) -> None:
    done = cli_without(SERVER_ONLY, "--debug", "tenants", "list", "--data-dir", str(tmp_path))
    assert done.returncode == 1
    assert "ModuleNotFoundError" in done.stderr and "MissingDependency" in done.stderr


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9_.-]+", requirement)
    assert match, requirement
    return match.group(0).lower().replace("_", "-")


def test_the_extras_of_pyproject_match_what_the_cli_names() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    core = {_name(r) for r in project["dependencies"]}
    extras = {extra: {_name(r) for r in reqs} for extra, reqs in project["optional-dependencies"].items()}
    for module, (package, extra) in EXTRA_MODULES.items():
        assert package in extras[extra], f"{module}: {package} is not in the {extra} extra"
        assert package not in core, f"{package} is in the core dependencies"
    everything = {e for e in extras if e not in {"all", "dev"}}
    (all_requirement,) = project["optional-dependencies"]["all"]
    assert set(re.findall(r"\[(.*)\]", all_requirement)[0].split(",")) == everything
    assert "ironwatch[all]" in project["optional-dependencies"]["dev"]

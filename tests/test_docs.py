"""The documentation is checked: every setting is documented, and the examples run.

Every ```console block of the README and of docs/ingest.md runs, in order, in one bash session
against a real server on ``plant-data`` in a temporary directory, with ``IRONWATCH_URL`` pointing
at it: the same variables the README tells a reader to set. A command is the text after ``$ `` (and
its ``\\`` continuations and heredoc lines); the lines after it, up to the next command, are its
expected output, where ``...`` stands for any text and a run of spaces for any run of spaces. Every
command must exit 0. Queries are retried for a few seconds, because readings reach SQL only once
the server has written them to Parquet.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Server
from ironwatch import config

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
TESTED_DOCS = (README, ROOT / "docs" / "ingest.md")
QUERY_RETRY_S = 15.0


@dataclasses.dataclass
class Example:
    """One command of a console block and the output it must print."""

    source: str  # file:line, for failure messages
    command: str
    expected: str

    @property
    def is_query(self) -> bool:
        return "ironwatch query" in self.command or "/api/v1/query" in self.command

    def matches(self, output: str) -> bool:
        return re.fullmatch(_pattern(self.expected), _normal(output), re.DOTALL) is not None


def _normal(text: str) -> str:
    lines = [re.sub(r"[ \t]{2,}", " ", line.rstrip()) for line in text.strip("\n").splitlines()]
    return "\n".join(lines).strip()


def _pattern(expected: str) -> str:
    return ".*?".join(re.escape(part) for part in _normal(expected).split("..."))


def console_examples(path: Path) -> Iterator[Example]:
    """The commands of every ```console block of a markdown file, in order."""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```console":
            i += 1
            continue
        i += 1
        current: Example | None = None
        while lines[i].strip() != "```":
            line = lines[i]
            if line.startswith("$ "):
                if current is not None:
                    yield current
                start = i + 1
                command = [line[2:]]
                heredoc = re.search(r"<<-?\s*'?(\w+)'?", line)
                while command[-1].endswith("\\"):
                    i += 1
                    command.append(lines[i])
                if heredoc:
                    while lines[i].strip() != heredoc.group(1):
                        i += 1
                        command.append(lines[i])
                current = Example(f"{path.name}:{start}", "\n".join(command), "")
            else:
                assert current is not None, f"{path.name}:{i + 1}: output before any command"
                current.expected += line + "\n"
            i += 1
        if current is not None:
            yield current
        i += 1


class Shell:
    """One bash session: variables set by one command are there for the next."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._send("set -o pipefail")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def run(self, command: str, timeout_s: float = 60.0) -> tuple[int, str]:
        """Run ``command`` in the session; return its exit code and its output (stdout and stderr)."""
        # The command runs from a file, with stdin closed, so nothing it starts can read the session's input.
        script = self.cwd / f".cmd-{uuid.uuid4().hex}.sh"
        script.write_text(command + "\n")
        marker = f"__done_{uuid.uuid4().hex}__"
        self._send(f"source {script} < /dev/null; printf '\\n{marker} %s\\n' $?")
        out: list[str] = []
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{command!r} did not finish in {timeout_s} s: {''.join(out)}") from None
            if line is None:
                raise AssertionError(f"the shell ended during {command!r}: {''.join(out)}")
            if line.startswith(marker):
                script.unlink()
                return int(line.split()[1]), "".join(out)
            out.append(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self._send("exit")
            self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


# --- settings -------------------------------------------------------------------------------------
def _rows(path: Path) -> dict[str, str]:
    """Table rows of a markdown file, by the first `name` in backticks they hold."""
    rows = {}
    for line in path.read_text().splitlines():
        found = re.match(r"\|\s*`([a-z_]+\.[a-z_]+)`", line)
        if found:
            rows[found.group(1)] = line
    return rows


@pytest.mark.parametrize("field", config.FIELDS, ids=lambda f: f.name)
def test_every_setting_is_documented_with_its_variable_and_default(field: config.Field) -> None:
    rows = _rows(CONFIGURATION)
    assert field.name in rows, f"{field.name} is missing from docs/configuration.md"
    assert f"`{field.env}`" in rows[field.name]
    assert f"`{json.dumps(field.default)}`" in rows[field.name], f"the default of {field.name} changed"


def test_no_documented_setting_is_unknown() -> None:
    assert set(_rows(CONFIGURATION)) <= {f.name for f in config.FIELDS}


def test_the_example_configuration_file_loads(tmp_path: Path) -> None:
    text = CONFIGURATION.read_text()
    example = re.search(r"```toml\n(.*?)```", text, re.DOTALL)
    assert example is not None
    path = tmp_path / "ironwatch.toml"
    path.write_text(example.group(1))
    settings = config.load({}, env={}, config_file=path)
    document = tomllib.loads(example.group(1))
    assert document, "the example sets nothing"
    for section, values in document.items():
        for key, value in values.items():
            assert getattr(getattr(settings, section), key) == value
            assert settings.origins[f"{section}.{key}"] == f"file {path}"


def test_config_show_prints_every_setting_and_its_origin(tmp_path: Path) -> None:
    env = {**os.environ, "IRONWATCH_QUERY__TIMEOUT_S": "12"}
    env.pop("IRONWATCH_CONFIG", None)
    (tmp_path / "ironwatch.toml").write_text('[log]\nlevel = "info"\n')
    command = [sys.executable, "-m", "ironwatch.cli", "config", "show", "--json", "--data-dir", str(tmp_path)]
    shown = json.loads(subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout)
    by_name = {row["name"]: row for row in shown}
    assert list(by_name) == [f.name for f in config.FIELDS]
    assert by_name["server.data_dir"]["origin"] == "flag"
    assert by_name["query.timeout_s"] == {
        "name": "query.timeout_s",
        "value": 12.0,
        "origin": "env IRONWATCH_QUERY__TIMEOUT_S",
    }
    assert by_name["log.level"]["origin"] == f"file {tmp_path / 'ironwatch.toml'}"
    assert by_name["server.port"] == {"name": "server.port", "value": 8000, "origin": "default"}


# --- examples -------------------------------------------------------------------------------------
def test_the_examples_are_found() -> None:
    readme = list(console_examples(README))
    assert len(readme) >= 15
    assert any("api/v1/ingest" in e.command for e in readme)
    assert all(e.command.strip() for e in readme)


def test_readme_and_ingest_examples_run(tmp_path: Path) -> None:
    server = Server(tmp_path / "plant-data").start()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("IRONWATCH_")},
        "IRONWATCH_URL": server.url,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    shell = Shell(tmp_path, env)
    try:
        for path in TESTED_DOCS:
            for example in console_examples(path):
                deadline = time.monotonic() + (QUERY_RETRY_S if example.is_query else 0)
                while True:
                    code, output = shell.run(example.command)
                    if (code == 0 and example.matches(output)) or time.monotonic() >= deadline:
                        break
                    time.sleep(0.2)
                assert code == 0, f"{example.source}: {example.command!r} exited {code}:\n{output}"
                assert example.matches(output), (
                    f"{example.source}: {example.command!r} printed\n{output}\nexpected\n{example.expected}"
                )
    finally:
        shell.close()
        server.stop()

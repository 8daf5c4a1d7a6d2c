"""The server's child processes (lake writer, ingest workers): signals do not stop them half-way."""

from __future__ import annotations

import os
import signal

from ironwatch.ingest import child

#: A child that says when its own code begins, then imports what the lake writer imports and echoes.
ECHO_AFTER_IMPORTS = (
    "import sys\n"
    "sys.stdout.buffer.write(b'R'); sys.stdout.flush()\n"
    "import pyarrow.parquet, duckdb\n"
    "from ironwatch.ingest import child\n"
    "child.send(sys.stdout.buffer, child.receive(sys.stdin.buffer) or b'')\n"
)


def test_a_child_signalled_while_it_imports_lives_on_and_answers() -> None:
    """A Ctrl-C or SIGTERM that came while a new lake writer still imported pyarrow used to kill it."""
    proc = child.spawn(ECHO_AFTER_IMPORTS)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.read(1) == b"R"  # its code runs: now its imports begin
        for _ in range(20):
            for sig in (signal.SIGINT, signal.SIGTERM):
                os.kill(proc.pid, sig)
        child.send(proc.stdin, b"segment 7")
        assert child.receive(proc.stdout) == b"segment 7"
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()


def test_a_child_is_not_in_the_servers_process_group() -> None:
    """Ctrl-C in a terminal signals the foreground process group: the server, not its children, which
    the server stops by closing their input once they have finished their work."""
    proc = child.spawn("import sys; sys.stdin.buffer.read()")
    try:
        assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
        proc.stdout.close()

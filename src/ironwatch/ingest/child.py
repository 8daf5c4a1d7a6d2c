"""Child processes of the server (the lake writer, ingest workers): how they start and talk.

A child is ``python -c CODE ARGS...`` with pipes on its stdin and stdout; each message either way
is ``u32 length | bytes``. It uses the C library's allocator, so memory it is done with goes back to
the system (Arrow's default pool keeps it), and logs at the server's level on stderr.

The server stops a child by closing its input, after the last piece of work it waits for; a child
exits at the end of its input, so it also goes with a server killed with ``kill -9``. Signals must
not stop it half-way, so a child runs in a process group of its own (a Ctrl-C in the terminal
reaches only the server) and ignores SIGINT and SIGTERM from its first line on, before its imports:
a child still importing pyarrow when a signal came used to die of it.
"""

from __future__ import annotations

import logging
import os
import struct
import subprocess
import sys
from typing import IO

#: The length in front of every message (and of the header inside an ingest worker's messages).
LEN = struct.Struct("<I")
#: The environment variable that passes the server's log level to a child.
LOG_LEVEL_ENV = "IRONWATCH_CHILD_LOG_LEVEL"


#: The child's first line: it ignores the signals that stop processes, then imports what it runs.
_IGNORE_SIGNALS = "import signal as s; s.signal(s.SIGINT, s.SIG_IGN); s.signal(s.SIGTERM, s.SIG_IGN)\n"


def spawn(code: str, *args: str) -> subprocess.Popen[bytes]:
    """Start ``python -c code args...`` with pipes on its stdin and stdout."""
    return subprocess.Popen(
        [sys.executable, "-c", _IGNORE_SIGNALS + code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        close_fds=True,
        process_group=0,
        env={
            "ARROW_DEFAULT_MEMORY_POOL": "system",
            **os.environ,
            LOG_LEVEL_ENV: logging.getLevelName(logging.getLogger().level).lower(),
        },
    )


def send(stream: IO[bytes], message: bytes) -> None:
    stream.write(LEN.pack(len(message)))
    stream.write(message)
    stream.flush()


def receive(stream: IO[bytes]) -> bytes | None:
    """The next message, or ``None`` at the end of the stream."""
    head = stream.read(LEN.size)
    if len(head) < LEN.size:
        return None
    (n,) = LEN.unpack(head)
    data = stream.read(n)
    return data if len(data) == n else None


def setup() -> None:
    """In the child, first thing: log as the server does (signals are ignored since its first line)."""
    from ironwatch import logs

    logs.setup(os.environ.get(LOG_LEVEL_ENV, "warning"))

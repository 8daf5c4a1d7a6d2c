"""Child processes of the server (the lake writer, ingest workers): how they start and talk.

A child is ``python -c CODE ARGS...`` with pipes on its stdin and stdout; each message either way
is ``u32 length | bytes``. It uses the C library's allocator, so memory it is done with goes back to
the system (Arrow's default pool keeps it), logs at the server's level on stderr, and ignores Ctrl-C
and SIGTERM sent to the whole process group: the server stops it by closing its input, after the
last piece of work it waits for. A child exits at the end of its input, so it also goes with a
server killed with ``kill -9``.
"""

from __future__ import annotations

import logging
import os
import signal
import struct
import subprocess
import sys
from typing import IO

#: The length in front of every message (and of the header inside an ingest worker's messages).
LEN = struct.Struct("<I")
#: The environment variable that passes the server's log level to a child.
LOG_LEVEL_ENV = "IRONWATCH_CHILD_LOG_LEVEL"


def spawn(code: str, *args: str) -> subprocess.Popen[bytes]:
    """Start ``python -c code args...`` with pipes on its stdin and stdout."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        close_fds=True,
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
    """In the child, first thing: leave stopping to the server, and log as it does."""
    from ironwatch import logs

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    logs.setup(os.environ.get(LOG_LEVEL_ENV, "warning"))

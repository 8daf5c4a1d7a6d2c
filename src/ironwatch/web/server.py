"""Running the app under uvicorn, printing the address it really listens on (port 0 picks one)."""

from __future__ import annotations

import asyncio
import gc
import socket
import sys

import pyarrow as pa
import uvicorn
from fastapi import FastAPI

from ironwatch.config import Settings
from ironwatch.errors import Unavailable
from ironwatch.web.app import create_app
from ironwatch.web.front import front
from ironwatch.web.services import Services

#: How long a thread may hold the GIL while another waits for it (CPython's default is 5 ms). The
#: write-ahead log writer and the flusher need the GIL for a moment after each fsync or Parquet
#: write; with the default they wait up to 5 ms behind the event loop's decoding, and every
#: acknowledgement waits with them. 1 ms measured +14% readings/s (bench ingest, 1M rows).
GIL_SWITCH_INTERVAL_S = 0.001


def use_system_allocator() -> None:
    """Arrow's memory from the C library's allocator, as in the server's child processes.

    Arrow's default pool (mimalloc) keeps much of what it has freed. Under the ingest benchmark the
    server's peak RSS was 20-60 MiB lower with the system pool (seven interleaved pairs of runs: HTTP
    columns with 16 clients, MQTT at 100 and at 1000 readings per message), at the same readings/s.
    """
    pa.set_memory_pool(pa.system_memory_pool())


async def serve_async(settings: Settings, on_ready: object = None) -> None:
    """Serve until the server is told to exit (SIGINT/SIGTERM)."""
    listener = _listen(str(settings.server.host), int(settings.server.port))
    services = Services.build(settings)
    try:
        services.start()  # an IronwatchError here is the one line the CLI prints
    except BaseException:
        listener.close()
        raise
    try:
        app = create_app(settings, services, services_started=True)
        # What is alive now (modules, the app, caches: ~100k objects) lives as long as the server.
        # Frozen, the garbage collector no longer walks it on every full collection: those took
        # ~80 ms each under the ingest benchmark (two per 4M readings, each a pause in every
        # acknowledgement), ~9 ms once frozen.
        gc.freeze()
        await _serve(settings, app, listener, on_ready)
    finally:
        services.stop()  # already done by the app's shutdown, unless uvicorn never got that far


async def _serve(settings: Settings, app: FastAPI, listener: socket.socket, on_ready: object) -> None:
    cfg = uvicorn.Config(
        front(app),
        host=str(settings.server.host),
        port=int(settings.server.port),
        log_config=None,
        access_log=False,
        lifespan="on",
        http="httptools",
        loop="uvloop",
        timeout_keep_alive=30,
        limit_concurrency=2048,
    )
    server = uvicorn.Server(cfg)
    task = asyncio.create_task(server.serve(sockets=[listener]))
    while not server.started:
        if task.done():
            await task
            raise Unavailable(f"the server did not start on {settings.server.host}:{settings.server.port}")
        await asyncio.sleep(0.02)
    host, port = listener.getsockname()[:2]
    print(f"ironwatch listening on http://{host}:{port}", flush=True)
    if callable(on_ready):
        on_ready(f"http://{host}:{port}")
    while not task.done() and not server.should_exit:
        await asyncio.wait({task}, timeout=0.1)
    # uvicorn waits for every response to finish before it stops, and live streams never finish
    # by themselves: tell them to end.
    app.state.services.streams.close()
    await task


def _listen(host: str, port: int) -> socket.socket:
    """Bind the listening socket here, so that a port in use is one clear error, not a traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise Unavailable(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.set_inheritable(True)
    return sock


def serve(settings: Settings, on_ready: object = None) -> None:
    """Run the server in this thread until Ctrl-C or SIGTERM."""
    use_system_allocator()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    try:
        import uvloop

        uvloop.run(serve_async(settings, on_ready))
    except ImportError:  # pragma: no cover - uvloop is part of uvicorn[standard]
        asyncio.run(serve_async(settings, on_ready))
    sys.stdout.flush()

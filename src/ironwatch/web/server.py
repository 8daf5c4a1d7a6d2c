"""Running the app under uvicorn, printing the address it really listens on (port 0 picks one)."""

from __future__ import annotations

import asyncio
import sys

import uvicorn

from ironwatch.config import Settings
from ironwatch.errors import Unavailable
from ironwatch.web.app import create_app

#: How long a thread may hold the GIL while another waits for it (CPython's default is 5 ms). The
#: write-ahead log writer and the flusher need the GIL for a moment after each fsync or Parquet
#: write; with the default they wait up to 5 ms behind the event loop's decoding, and every
#: acknowledgement waits with them. 1 ms measured +14% readings/s (bench ingest, 1M rows).
GIL_SWITCH_INTERVAL_S = 0.001


async def serve_async(settings: Settings, on_ready: object = None) -> None:
    """Serve until the server is told to exit (SIGINT/SIGTERM)."""
    app = create_app(settings)
    cfg = uvicorn.Config(
        app,
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
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task
            raise Unavailable(f"the server did not start on {settings.server.host}:{settings.server.port}")
        await asyncio.sleep(0.02)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    print(f"ironwatch listening on http://{host}:{port}", flush=True)
    if callable(on_ready):
        on_ready(f"http://{host}:{port}")
    while not task.done() and not server.should_exit:
        await asyncio.wait({task}, timeout=0.1)
    # uvicorn waits for every response to finish before it stops, and live streams never finish
    # by themselves: tell them to end.
    app.state.services.streams.close()
    await task


def serve(settings: Settings, on_ready: object = None) -> None:
    """Run the server in this thread until Ctrl-C or SIGTERM."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    try:
        import uvloop

        uvloop.run(serve_async(settings, on_ready))
    except ImportError:  # pragma: no cover - uvloop is part of uvicorn[standard]
        asyncio.run(serve_async(settings, on_ready))
    sys.stdout.flush()

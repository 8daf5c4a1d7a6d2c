"""``ironwatch demo``: the server and a real gateway with the simulator, in one process, until Ctrl-C.

What runs: the server on the data directory; a :class:`~ironwatch.gateway.agent.Gateway` sampling the
simulated sort center (``--sensors``, default 550, with its default plan of machine and sensor
faults) into its outbox under ``DATA_DIR/gateway/``; and between the two a loopback
:class:`~ironwatch.demo.link.Link` that is cut every few minutes, so store-and-forward can be seen
working. On its first run the gateway backfills ``--backfill-days`` of history, sampled more
sparsely than the live readings (``--backfill-rate``) so that it takes minutes, not hours.

Each run reuses what the previous one left: the tenant ``demo``, the gateway ``gw-hall-a`` of site
``hall-a``, the readings, and the gateway's outbox (its batch numbers go on, and it remembers that
the history was sent: a second run never backfills again). API keys are shown only once, so every
run creates a fresh analyst key and gateway key and revokes the previous run's;
``DATA_DIR/demo-state.json`` keeps only their ids, never a secret.

Port: when the port comes from the default (8000) and is taken, the demo listens on a free port
instead and says so; a port asked for explicitly (flag, environment, file) that is taken is an error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from ironwatch import lake
from ironwatch.config import Settings
from ironwatch.demo.session import GATEWAY, SITE, TENANT, Options, Session
from ironwatch.errors import ConfigError, NotFound
from ironwatch.store import Store

log = logging.getLogger(__name__)

STATE_FILE = "demo-state.json"


def run_demo(settings: Settings, options: Options, *, duration_s: float | None = None) -> int:
    """Run the demo until Ctrl-C (or for ``duration_s`` seconds once it is ready); return the exit code."""
    options.check()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings = _choose_port(settings)
    state = _State.load(settings.data_dir / STATE_FILE)
    analyst_key, gateway_key = _prepare(settings, state)
    if settings.log.level.lower() == "warning":
        # The demo prints its own line for each outage and for the backfill; the gateway's warnings
        # about the same events would only repeat them as JSON. --log-level info shows them all.
        logging.getLogger("ironwatch.gateway").setLevel(logging.ERROR)
    session = Session(settings, options, analyst_key=analyst_key, gateway_key=gateway_key)
    return _Demo(session, duration_s).run()


@dataclasses.dataclass
class _State:
    """What the demo remembers between runs: the ids of its keys (never a key secret)."""

    path: Path
    key_ids: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> _State:
        try:
            doc = json.loads(path.read_text())
            return cls(path, [str(k) for k in doc.get("key_ids", [])])
        except FileNotFoundError:
            return cls(path)
        except (ValueError, TypeError, AttributeError):
            log.warning("demo: %s is unreadable; starting afresh", path)
            return cls(path)

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key_ids": self.key_ids}) + "\n")
        os.replace(tmp, self.path)


def _choose_port(settings: Settings) -> Settings:
    host, port = str(settings.server.host), int(settings.server.port)
    if port == 0 or _is_free(host, port):
        return settings
    if settings.origins.get("server.port", "default") != "default":
        raise ConfigError("server.port", f"port {port} on {host} is in use; pass --port 0 to take a free one")
    print(f"port {port} is in use, so the demo takes a free port (the URL is below)", flush=True)
    return dataclasses.replace(settings, server=dataclasses.replace(settings.server, port=0))


def _is_free(host: str, port: int) -> bool:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError("server.host", f"cannot resolve {host!r}: {exc}") from exc
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def _prepare(settings: Settings, state: _State) -> tuple[str, str]:
    """Ensure the tenant and gateway exist; replace last run's keys; return (analyst, gateway) secrets."""
    store = Store(settings.store_url)
    try:
        try:
            tenant = store.tenant(TENANT)
        except NotFound:
            tenant = store.create_tenant(TENANT, settings.root_url(TENANT))
        lake.open_root(tenant.root_url)
        for key_id in state.key_ids:
            # NotFound: the metadata database was replaced since; there is nothing to revoke.
            with contextlib.suppress(NotFound):
                store.revoke_key(key_id, tenant=TENANT)
        analyst, analyst_secret = store.create_key(TENANT, "analyst", label="demo: analyst")
        gateway, gateway_secret = store.create_key(
            TENANT, "gateway", site=SITE, gateway=GATEWAY, label="demo: gateway"
        )
        store.add_gateway(TENANT, GATEWAY, SITE)
    finally:
        store.close()
    state.key_ids = [analyst.id, gateway.id]
    state.save()
    return analyst_secret, gateway_secret


class _Demo:
    """The server in the main thread; the session (link, gateway, watch) in another.

    Stopping goes in the order that loses nothing: the link heals, the gateway stops and hands
    what it buffered to the server, and only then does the server stop.
    """

    def __init__(self, session: Session, duration_s: float | None) -> None:
        self.session = session
        self.duration_s = duration_s
        self.thread: threading.Thread | None = None
        self._stop_server: Any = None
        self._lock = threading.Lock()
        self._server_stop_requested = False

    def run(self) -> int:
        from ironwatch.web.server import serve

        handlers = self._catch_signals()
        try:
            serve(self.session.settings, on_ready=self._start)
        finally:
            self.session.stop.set()
            if self.thread is not None:
                self.thread.join()
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        print(self.session.summary(), flush=True)
        if self.session.error is not None:
            print(f"error: {self.session.error}", file=sys.stderr, flush=True)
            return 1
        return 0

    def _catch_signals(self) -> dict[int, Any]:
        # Before the server is up (and after it is down) a signal only ends the demo, never with
        # a traceback.
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {
            s: signal.signal(s, lambda *_: self.session.stop.set()) for s in (signal.SIGINT, signal.SIGTERM)
        }

    def _start(self, url: str) -> None:
        # Called in the server's event loop (the main thread) once it listens. uvicorn has put its
        # own handlers on SIGINT and SIGTERM; take them over, so that Ctrl-C first lets the gateway
        # drain into the still-running server, and keep uvicorn's to stop the server afterwards.
        if threading.current_thread() is threading.main_thread():
            self._stop_server = signal.getsignal(signal.SIGTERM)
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, self._on_signal)
        self.thread = threading.Thread(target=self._session, args=(url,), name="demo")
        self.thread.start()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.session.stop.is_set():  # a second Ctrl-C: stop the server now
            self._request_server_stop()
        self.session.stop.set()

    def _session(self, url: str) -> None:
        try:
            self.session.run(url, duration_s=self.duration_s)
        finally:
            # Whatever ended the session (the deadline, Ctrl-C, an error), the server must not go
            # on without it.
            self._request_server_stop()

    def _request_server_stop(self) -> None:
        with self._lock:
            if self._server_stop_requested:
                return
            self._server_stop_requested = True
        if callable(self._stop_server):
            self._stop_server(signal.SIGTERM, None)
        else:
            os.kill(os.getpid(), signal.SIGTERM)

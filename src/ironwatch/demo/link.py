"""The demo's uplink: a loopback TCP relay between the gateway and the server that can be cut.

The gateway sends to the relay instead of the server, so the demo can show store-and-forward: while
the link is cut, connections that are open die at once (a request half-way through its body fails,
the worst case for exactly-once delivery) and new ones are accepted, read a little, and closed. The
gateway then buffers, and drains its backlog when the link heals.

One thread accepts; each connection gets one thread that relays both ways with ``select``, so a
slow or cut connection never holds up the others.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading

#: Bytes relayed per ``recv``: a gzip batch of a few thousand readings goes in a handful of calls.
_CHUNK = 256 * 1024
#: How often a relay thread looks at whether the link was cut.
_POLL_S = 0.2


class Link:
    """Listens on ``127.0.0.1`` (a free port) and relays every connection to ``target_port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._is_cut = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.refused = 0  # connections turned away while cut
        self._thread = threading.Thread(target=self._accept, name="demo-link", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, the URL the gateway sends to."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def is_cut(self) -> bool:
        """Whether the link is cut now."""
        return self._is_cut.is_set()

    def cut(self) -> None:
        """Cut the link: every open connection dies now, new ones die after their first bytes."""
        self._is_cut.set()
        with self._lock:
            doomed = list(self._open)
            self._open.clear()
        for sock in doomed:
            _close(sock)

    def heal(self) -> None:
        """Let connections through again."""
        self._is_cut.clear()

    def close(self) -> None:
        """Stop listening and drop every connection."""
        self._closed.set()
        self.cut()
        _close(self._listener)
        self._thread.join(2.0)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:  # the listener was closed
                return
            threading.Thread(target=self._relay, args=(client,), name="demo-link-conn", daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        if self._is_cut.is_set():
            self._turn_away(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5.0)
        except OSError:
            _close(client)
            return
        with self._lock:
            self._open.update((client, upstream))
        peer = {client: upstream, upstream: client}
        try:
            while not self._is_cut.is_set():
                readable, _, _ = select.select(list(peer), [], [], _POLL_S)
                for sock in readable:
                    data = sock.recv(_CHUNK)
                    if not data:
                        return
                    peer[sock].sendall(data)
        except (OSError, ValueError):  # ValueError: select on a socket that cut() just closed
            pass
        finally:
            with self._lock:
                self._open.difference_update((client, upstream))
            _close(client)
            _close(upstream)

    def _turn_away(self, client: socket.socket) -> None:
        # Take the first bytes of the request before closing, so the gateway sees a request fail
        # part-way rather than a refused connection.
        client.settimeout(2.0)
        with contextlib.suppress(OSError):
            client.recv(1024)
        self.refused += 1
        _close(client)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()

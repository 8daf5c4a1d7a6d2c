"""API keys to principals: ``Authorization: Bearer <key>``, checked against the store with a short cache."""

from __future__ import annotations

import threading
import time

from starlette.requests import Request

from ironwatch.errors import Forbidden, Unauthenticated
from ironwatch.model import Principal, Role
from ironwatch.store import Store, hash_secret


class Authenticator:
    """Turns a bearer key into a :class:`Principal`; a revoked key stops working within ``cache_s``."""

    def __init__(self, store: Store, cache_s: float) -> None:
        self.store = store
        self.cache_s = cache_s
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    def principal(self, request: Request) -> Principal:
        """The caller of ``request``, or :class:`Unauthenticated`."""
        return self.bearer(request.headers.get("authorization"))

    def bearer(self, header: str | None) -> Principal:
        """The caller named by an ``Authorization`` header's value, or :class:`Unauthenticated`."""
        if not header:
            raise Unauthenticated("missing 'Authorization: Bearer <key>' header")
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthenticated("the Authorization header must be 'Bearer <key>'")
        return self.check(secret.strip())

    def check(self, secret: str) -> Principal:
        """The principal of a key secret, or :class:`Unauthenticated`."""
        digest = hash_secret(secret)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        key = self.store.key_by_secret(secret)
        if key is None:
            with self._lock:
                self._cache.pop(digest, None)
            raise Unauthenticated("unknown or revoked API key")
        found = Principal(key.tenant, key.role, key.id, key.site, key.gateway)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (found, now + self.cache_s)
        return found

    def forget(self, key_id: str) -> None:
        """Drop a key from the cache at once (after a revocation through this server)."""
        with self._lock:
            for digest, (p, _) in list(self._cache.items()):
                if p.key_id == key_id:
                    del self._cache[digest]

    def require(self, request: Request, *roles: Role) -> Principal:
        """The caller, who must hold one of ``roles``; :class:`Forbidden` otherwise."""
        return self.require_role(self.principal(request), *roles)

    @staticmethod
    def require_role(principal: Principal, *roles: Role) -> Principal:
        """``principal`` if it holds one of ``roles``; :class:`Forbidden` otherwise."""
        if principal.role not in roles:
            allowed = ", ".join(r.value for r in roles)
            raise Forbidden(f"the {principal.role.value} role may not do this (needs {allowed})")
        return principal


READERS = (Role.ADMIN, Role.ANALYST, Role.MECHANIC, Role.VIEWER)
ANALYSTS = (Role.ADMIN, Role.ANALYST)
WRITERS = (Role.ADMIN, Role.GATEWAY)
ADMINS = (Role.ADMIN,)

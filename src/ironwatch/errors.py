"""One error tree. Each error keeps its fields, builds its message, and knows its HTTP status,
its machine-readable code and whether retrying the same request can help."""

from __future__ import annotations

from typing import Any


class IronwatchError(Exception):
    """Root of every error ironwatch raises on purpose."""

    status: int = 500
    code: str = "internal"
    retryable: bool = False

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}

    def to_json(self) -> dict[str, Any]:
        """The one JSON error shape of the API."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class ConfigError(IronwatchError):
    """A setting has a wrong value, or a configuration file cannot be read."""

    code = "config"

    def __init__(self, setting: str, reason: str) -> None:
        super().__init__(f"setting {setting}: {reason}", {"setting": setting})
        self.setting = setting
        self.reason = reason


class MissingDependency(IronwatchError):
    """An optional dependency is not installed; the message names the install line."""

    code = "missing_dependency"

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"{module} is not installed: pip install 'ironwatch[{extra}]'", {"module": module, "extra": extra}
        )
        self.module = module
        self.extra = extra


class InvalidInput(IronwatchError):
    """The request is malformed; ``field`` names what is wrong (``readings[3].value``)."""

    status = 422
    code = "invalid"

    def __init__(self, field: str, reason: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{field}: {reason}", {"field": field, **(details or {})})
        self.field = field
        self.reason = reason


class MalformedBody(InvalidInput):
    """The body cannot be decoded at all (not JSON, bad gzip)."""

    status = 400
    code = "malformed"


class BodyTooLarge(InvalidInput):
    """The body is over the size limit (after gzip decoding)."""

    status = 413
    code = "too_large"

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(
            "body", f"larger than the limit of {limit_bytes} bytes", {"limit_bytes": limit_bytes}
        )
        self.limit_bytes = limit_bytes


class UnsupportedEncoding(InvalidInput):
    """The body comes in a content coding the server cannot undo; 415 lets a client resend it plainly."""

    status = 415
    code = "unsupported_encoding"

    def __init__(self, encoding: str, supported: tuple[str, ...]) -> None:
        super().__init__(
            "Content-Encoding",
            f"{encoding!r} is not supported ({' or '.join(supported)})",
            {"supported": list(supported)},
        )
        self.encoding = encoding
        self.supported = supported


class Unauthenticated(IronwatchError):
    """No key, an unknown key, or a revoked key."""

    status = 401
    code = "unauthenticated"


class Forbidden(IronwatchError):
    """The key is valid but its role or scope does not allow this."""

    status = 403
    code = "forbidden"


class NotFound(IronwatchError):
    """The named thing does not exist in the caller's tenant."""

    status = 404
    code = "not_found"

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} {name!r} not found", {"kind": kind, "name": name})
        self.kind = kind
        self.name = name


class Conflict(IronwatchError):
    """The request contradicts what is already registered."""

    status = 409
    code = "conflict"


class QueryError(IronwatchError):
    """The SQL is wrong, refused by the sandbox, or ran out of time or memory."""

    status = 400
    code = "query"


class StorageError(IronwatchError):
    """A storage root could not be read or written; often passes, so a retry may help."""

    status = 503
    code = "storage"
    retryable = True


class Unavailable(IronwatchError):
    """The server is starting, stopping or overloaded; try again shortly."""

    status = 503
    code = "unavailable"
    retryable = True


class TooManyRequests(IronwatchError):
    """The caller has too much under way already (queued query jobs); retry once some finish."""

    status = 429
    code = "too_many"
    retryable = True

"""The web layer: FastAPI app with the ``/api/v1`` routes; it calls services, never the reverse."""

from ironwatch.web.app import create_app
from ironwatch.web.services import Services

__all__ = ["Services", "create_app"]

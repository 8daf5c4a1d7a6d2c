"""The FastAPI application: ``create_app(settings)`` builds the services and mounts the routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

import ironwatch
from ironwatch.config import Settings
from ironwatch.web import errors
from ironwatch.web.routes import admin, gateways, health, ingest, queries, query, series
from ironwatch.web.services import Services


def create_app(
    settings: Settings, services: Services | None = None, *, services_started: bool = False
) -> FastAPI:
    """The ironwatch HTTP API; the services start with the app (unless ``services_started``: the
    server starts them first, so that a failure to start is one clear error) and always stop with
    it, inside the server's shutdown (uvicorn ends the process by re-raising the signal after)."""
    services = services or Services.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not services_started:
            services.start()
        try:
            yield
        finally:
            services.stop()

    app = FastAPI(
        title="ironwatch",
        version=ironwatch.__version__,
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.services = services
    errors.install(app)
    for router in (
        health.router,
        ingest.router,
        query.router,
        queries.router,
        admin.router,
        series.router,
        gateways.router,
    ):
        app.include_router(router)
    return app

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
    settings: Settings, services: Services | None = None, *, manage_services: bool = True
) -> FastAPI:
    """The ironwatch HTTP API; the services start with the app and stop with it.

    With ``manage_services=False`` the caller starts and stops ``services`` itself (the server
    does, so that a failure to start is reported as one clear error before anything listens).
    """
    services = services or Services.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_services:
            services.start()
        try:
            yield
        finally:
            if manage_services:
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

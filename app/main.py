"""The application factory: `create_app(settings)` builds a ready-to-serve FastAPI app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.config import Settings
from app.errors import install_error_handlers
from app.middleware import ApiKeyMiddleware, BodySizeLimitMiddleware
from app.observability.metrics import Metrics
from app.observability.middleware import RequestObservabilityMiddleware
from app.routers import api_router
from app.routers.page import STATIC_DIR
from app.state import Services
from index import StorageError
from models import Encoder

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, encoder: Encoder | None = None) -> FastAPI:
    """Build the app; the lifespan loads the model and data dir and saves them on shutdown."""
    settings = settings or Settings()

    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await asyncio.to_thread(Services.build, settings, encoder, metrics.observe_batch)
        app.state.services = services
        metrics.watch(services.encoding.queue_depths, services.store.index_info)
        services.encoding.start()
        services.jobs.start()
        snapshots = asyncio.create_task(_snapshot_periodically(services), name="xmr-snapshots")
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            snapshots.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await snapshots
            await services.jobs.stop()
            await services.encoding.stop()
            metrics.unwatch()
            await asyncio.to_thread(services.close)

    app = FastAPI(
        title="xmr",
        version="0.1.0",
        summary="Cross-modal retrieval: search images with text and texts with images.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.ready = False
    install_error_handlers(app)
    app.include_router(api_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    install_middleware(app, settings)
    app.add_middleware(RequestObservabilityMiddleware, metrics=metrics)  # outermost
    return app


def install_middleware(app: FastAPI, settings: Settings) -> None:
    """Body limits inside, authentication outermost (a stranger's upload is never read)."""
    app.add_middleware(
        BodySizeLimitMiddleware,
        default_limit=megabytes(settings.max_upload_mb),
        limits_by_prefix={"/v1/batch": megabytes(settings.max_batch_upload_mb)},
    )
    if settings.api_key is not None and settings.api_key.get_secret_value():
        public = {"/healthz", "/readyz", "/"}  # the page holds no data; it asks for the key
        if settings.docs_public:
            public |= {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
        app.add_middleware(
            ApiKeyMiddleware,
            api_key=settings.api_key.get_secret_value(),
            public_paths=public,
            public_prefixes=("/static/",),
        )


def megabytes(value: float) -> int:
    return int(value * 1024 * 1024)


async def _snapshot_periodically(services: Services) -> None:
    interval = services.settings.snapshot_interval_s
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(services.store.snapshot)
        except StorageError as e:
            logger.error("%s", e)

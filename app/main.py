"""The application factory: `create_app(settings)` builds a ready-to-serve FastAPI app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from app.config import Settings
from app.errors import install_error_handlers
from app.routers import api_router
from app.state import Services
from index import StorageError
from models import Encoder

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, encoder: Encoder | None = None) -> FastAPI:
    """Build the app; the lifespan loads the model and data dir and saves them on shutdown."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await asyncio.to_thread(Services.build, settings, encoder)
        app.state.services = services
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
            await asyncio.to_thread(services.close)

    app = FastAPI(
        title="xmr",
        version="0.1.0",
        summary="Cross-modal retrieval: search images with text and texts with images.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.ready = False
    install_error_handlers(app)
    app.include_router(api_router)
    return app


async def _snapshot_periodically(services: Services) -> None:
    interval = services.settings.snapshot_interval_s
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(services.store.snapshot)
        except StorageError as e:
            logger.error("%s", e)

"""The application factory: `create_app(settings)` builds a ready-to-serve FastAPI app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.routing import NoMatchFound

from app.assembly import Services
from app.config import Settings
from app.errors import install_error_handlers
from app.middleware import (
    ApiKeyMiddleware,
    BodySizeLimitMiddleware,
    CrossSiteWriteMiddleware,
    FetchMetadataMiddleware,
    SecurityHeadersMiddleware,
    UnhandledErrorMiddleware,
)
from app.observability.metrics import Metrics
from app.observability.middleware import RequestObservabilityMiddleware
from app.routers import add_routes
from app.routers.page import STATIC_DIR, SWAGGER_UI_DIR
from models import Encoder

logger = logging.getLogger(__name__)
CATALOG_FOLLOW_S = 1.0
UNNAMED_ROUTE = "\0"  # no route is named so


def create_app(settings: Settings | None = None, encoder: Encoder | None = None) -> FastAPI:
    """Build the app; the lifespan loads the model and data dir and saves them on shutdown."""
    settings = settings or Settings()

    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await Services.start(settings, encoder, metrics.observe_batch)
        app.state.services = services
        build_routes(app)
        metrics.watch(services.metrics_state)
        services.jobs.start()
        background = [
            asyncio.create_task(_snapshot_periodically(services), name="xmr-snapshots"),
            asyncio.create_task(_follow_catalog(services), name="xmr-catalog"),
        ]
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            metrics.unwatch()
            await services.stop()

    app = FastAPI(
        title="xmr",
        version="0.1.0",
        summary="Cross-modal retrieval: search images with text and texts with images.",
        lifespan=lifespan,
        docs_url=None,  # served from this origin by app.routers.page, not from a CDN
        redoc_url=None,
        # Starlette's slash redirect builds its Location from the Host header
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.ready = False
    install_error_handlers(app)
    add_routes(app.router)
    app.mount("/static/swagger", StaticFiles(directory=SWAGGER_UI_DIR), name="swagger-ui")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    install_middleware(app, settings)
    app.add_middleware(RequestObservabilityMiddleware, metrics=metrics)  # outermost
    return app


def build_routes(app: FastAPI) -> None:
    """Analyse every route's dependencies and make the OpenAPI schema now, before the app takes
    requests.

    FastAPI (0.165) does the first for an included router's routes on the first request that
    walks past them, on the event loop: a first /metrics after start-up stalled every request
    for 0.05-0.3 s here, over a second on a busy machine. Resolving a name no route has walks
    them all. It makes the schema on the first /openapi.json (the /docs page's first fetch),
    also on the event loop: 50-60 ms here."""
    with contextlib.suppress(NoMatchFound):
        app.url_path_for(UNNAMED_ROUTE)
    app.openapi()


def install_middleware(app: FastAPI, settings: Settings) -> None:
    """From the inside out: unhandled errors, body limits, the API key, cross-site writes and
    reads, CORS, trusted hosts.

    A request from a foreign Host or a foreign page's write is refused before its body or key
    is looked at; CORS preflights are answered before the key is asked for.
    """
    app.add_middleware(UnhandledErrorMiddleware)
    app.add_middleware(
        BodySizeLimitMiddleware,
        default_limit=megabytes(settings.max_upload_mb),
        limits_by_path={
            r"/v1/(collections/[^/]+/)?(batch|vectors)": megabytes(settings.max_batch_upload_mb)
        },
        idle_timeout_s=settings.body_timeout_s,
    )
    api_key = settings.api_key.get_secret_value() if settings.api_key is not None else ""
    if api_key:
        public = {"/healthz", "/readyz", "/"}  # the page holds no data; it asks for the key
        if settings.docs_public:
            public |= {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
        admin_key = settings.admin_key.get_secret_value() if settings.admin_key else ""
        app.add_middleware(
            ApiKeyMiddleware,
            keys=[key for key in (api_key, admin_key) if key],
            public_paths=public,
            public_prefixes=("/static/",),
        )
    origins = settings.allowed_origins()
    app.add_middleware(CrossSiteWriteMiddleware, allowed_origins=origins)
    app.add_middleware(FetchMetadataMiddleware, allowed_origins=origins)
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID", "Retry-After", "Server-Timing"],
        )
    hosts = settings.trusted_hosts()
    if hosts == ["*"] and not api_key:
        logger.warning(
            "xmr listens on %s with no XMR_API_KEY and no XMR_ALLOWED_HOSTS: anyone who can "
            "reach it can read and change the index",
            settings.host,
        )
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False)
    app.add_middleware(SecurityHeadersMiddleware)


def megabytes(value: float) -> int:
    return int(value * 1024 * 1024)


async def _follow_catalog(services: Services) -> None:
    """With several replicas: take up their changes to the collections once a second, so an
    idle replica has a re-embedding's model loaded before the switch (a no-op on one process)."""
    if not services.collections.catalog.shared:
        return
    while True:
        await asyncio.sleep(CATALOG_FOLLOW_S)
        try:
            await services.collections.refresh()
        except Exception as e:  # the database may be away; the next round tries again
            logger.warning("could not follow the collection catalog: %s", e)


async def _snapshot_periodically(services: Services) -> None:
    """Save changed indexes every interval; no error may end the loop (saves would stop)."""
    interval = services.settings.snapshot_interval_s
    while True:
        await asyncio.sleep(interval)
        try:
            await services.snapshot_all()
        except Exception:
            logger.exception("saving the index snapshots failed; retrying in %.0f s", interval)

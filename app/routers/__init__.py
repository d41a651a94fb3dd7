"""HTTP routes, one module per resource; aggregated in `api_router`."""

from fastapi import APIRouter

from app.routers import batch, embed, health, items, metrics, page, search

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(items.router)
api_router.include_router(search.router)
api_router.include_router(batch.router)
api_router.include_router(embed.router)
api_router.include_router(metrics.router)
api_router.include_router(page.router)

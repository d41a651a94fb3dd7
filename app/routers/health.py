"""Liveness, readiness and what the service runs."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.deps import ServicesDep
from app.responses import index_descriptions
from app.schemas import InfoResponse
from app.schemas.collections import TowerRunDescription

logger = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz", summary="200 while the process runs")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="200 once the model and indexes are loaded and the database (if any) answers, else 503",
)
async def readyz(request: Request) -> JSONResponse:
    if not getattr(request.app.state, "ready", False):
        return _not_ready("not ready")
    problem = await request.app.state.services.database_problem()
    if problem is not None:  # /readyz answers without a key: the details go to the log only
        logger.warning("not ready: %s", problem)
        return _not_ready("the database does not answer")
    return JSONResponse({"status": "ready"})


def _not_ready(reason: str) -> JSONResponse:
    return JSONResponse(
        {"status": "not ready", "reason": reason}, status_code=503, headers={"Retry-After": "5"}
    )


@router.get("/v1/info", response_model=InfoResponse, summary="Model, device and index sizes")
async def info(services: ServicesDep) -> InfoResponse:
    """The default collection: its model as it runs, its sizes; and the names of all."""
    await services.collections.refresh()
    view = services.collections.default().view()
    generation = view.state.current
    running = services.models.running(generation.spec)
    return InfoResponse(
        model=generation.spec.model,
        pretrained=generation.model_id.split("/", 1)[-1],
        model_id=generation.model_id,
        dim=generation.dim,
        device=running.device if running else services.settings.device,
        precision=running.precision if running else generation.spec.precision,
        runtime=running.runtime if running else "not loaded",
        towers={
            tower: TowerRunDescription(runtime=run.runtime, precision=run.precision)
            for tower, run in (running.towers if running else {}).items()
        },
        images=view.counts["image"],
        texts=view.counts["text"],
        indexes=index_descriptions(view.indexes),
        reindex_job=view.state.reindex_job,
        collections=[c.name for c in services.collections.all()],
    )

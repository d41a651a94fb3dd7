"""Liveness, readiness and what the service runs."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.deps import ServicesDep
from app.schemas import IndexDescription, InfoResponse
from index.layout import DEFAULT_COLLECTION

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="200 while the process runs")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="200 once the model and indexes are loaded, else 503")
async def readyz(request: Request) -> JSONResponse:
    if getattr(request.app.state, "ready", False):
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "not ready"}, status_code=503, headers={"Retry-After": "5"})


@router.get("/v1/info", response_model=InfoResponse, summary="Model, device and index sizes")
async def info(services: ServicesDep) -> InfoResponse:
    """The default collection: its model as it runs, its sizes; and the names of all."""
    default = services.collections.get(DEFAULT_COLLECTION)
    generation = default.state.current
    loaded = services.models.peek(generation.spec)
    counts = default.store.counts()
    indexes = {
        kind: IndexDescription(structure=i.spec, size=i.size, building=i.building)
        for kind, i in default.store.index_info().items()
    }
    return InfoResponse(
        model=generation.spec.model,
        pretrained=generation.model_id.split("/", 1)[-1],
        model_id=generation.model_id,
        dim=generation.dim,
        device=loaded.encoder.device if loaded else services.settings.device,
        precision=loaded.encoder.precision if loaded else generation.spec.precision,
        runtime=loaded.encoder.runtime if loaded else "not loaded",
        images=counts["image"],
        texts=counts["text"],
        indexes=indexes,
        reindex_job=default.state.reindex_job,
        collections=[c.name for c in services.collections.all()],
    )

"""Liveness, readiness and what the service runs."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.deps import ServicesDep
from app.schemas import IndexDescription, InfoResponse

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
    counts = services.store.counts()
    settings = services.settings
    indexes = {
        kind: IndexDescription(structure=i.spec, size=i.size, building=i.building)
        for kind, i in services.store.index_info().items()
    }
    return InfoResponse(
        model=settings.model,
        pretrained=services.encoder.model_id.split("/", 1)[-1],
        model_id=services.encoder.model_id,
        dim=services.encoder.dim,
        device=services.encoder.device,
        precision=services.encoder.precision,
        runtime=services.encoder.runtime,
        images=counts["image"],
        texts=counts["text"],
        indexes=indexes,
    )

"""The raw vectors: exactly what the index stores for an image or a text."""

from __future__ import annotations

from fastapi import APIRouter, File, UploadFile

from app.deps import EncodingDep
from app.routers.common import read_upload
from app.schemas import EmbedResponse, EmbedTextRequest

router = APIRouter(prefix="/embed", tags=["embed"])  # under /v1 and each collection


@router.post("/text", response_model=EmbedResponse, summary="L2-normalized text embeddings")
async def embed_text(body: EmbedTextRequest, encoding: EncodingDep) -> EmbedResponse:
    vectors = await encoding.encode_texts(body.texts)
    return EmbedResponse(embeddings=vectors.tolist(), dim=encoding.dim)


@router.post("/image", response_model=EmbedResponse, summary="L2-normalized image embeddings")
async def embed_image(
    encoding: EncodingDep, files: list[UploadFile] = File(..., description="the images")
) -> EmbedResponse:
    prepared = [await encoding.prepare(await read_upload(f, i)) for i, f in enumerate(files)]
    vectors = await encoding.encode_prepared(prepared)
    return EmbedResponse(embeddings=vectors.tolist(), dim=encoding.dim)

"""OpenAI's embeddings API: `POST /v1/embeddings` and `GET /v1/models`, for the clients that
speak it. Errors on these routes take OpenAI's shape (app/errors.py)."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import CollectionsDep
from app.schemas.openai import (
    Embedding,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ModelsResponse,
    OpenAIModel,
    Usage,
)
from app.services.embeddings import (
    as_base64,
    check_dimensions,
    check_inputs,
    check_texts,
    image_bytes,
    model_names,
    resolve_model,
)

router = APIRouter(prefix="/v1", tags=["openai"])  # the paths of app.schemas.openai.OPENAI_PATHS


@router.post(
    "/embeddings",
    response_model=EmbeddingsResponse,
    summary="Embeddings in OpenAI's shape: texts, or images as data: URIs",
)
async def create_embeddings(
    body: EmbeddingsRequest, collections: CollectionsDep
) -> EmbeddingsResponse:
    inputs = body.inputs()
    check_inputs(inputs)
    await collections.refresh()
    collection = resolve_model(collections, body.model)
    async with collection.use(model=True) as pin:
        encoding = pin.require_encoding()
        check_dimensions(body.dimensions, encoding.dim)
        if body.modality == "image":
            blobs = [image_bytes(uri, position) for position, uri in enumerate(inputs)]
            prepared = await encoding.prepare_all(blobs, "input")
            vectors, tokens = await encoding.encode_prepared(prepared), 0
        else:
            check_texts(inputs)
            vectors, tokens = await encoding.encode_texts_counted(inputs)
    data = [
        Embedding(
            index=i, embedding=as_base64(v) if body.encoding_format == "base64" else v.tolist()
        )
        for i, v in enumerate(vectors)
    ]
    return EmbeddingsResponse(
        data=data, model=body.model, usage=Usage(prompt_tokens=tokens, total_tokens=tokens)
    )


@router.get("/models", response_model=ModelsResponse, summary="The models, in OpenAI's shape")
async def list_models(collections: CollectionsDep) -> ModelsResponse:
    await collections.refresh()
    return ModelsResponse(
        data=[
            OpenAIModel(id=name, created=int(created)) for name, created in model_names(collections)
        ]
    )

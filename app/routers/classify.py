"""Zero-shot labels for uploaded images or stored items."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from app.deps import AdminOnly, ClassifyDep, ItemsDep, JobsDep, collection_name
from app.parsing import strict_json
from app.routers.common import body_format, read_upload, validated
from app.schemas import (
    TARGET_KIND,
    ClassifyItemsRequest,
    ClassifyResponse,
    JobAccepted,
    LabelResult,
    TagRequestBody,
)
from app.services.classify import MAX_IMAGES, LabelScore
from app.services.errors import InvalidInputError
from app.services.tagging import TagRequest, check_tag_field

router = APIRouter(tags=["classify"])  # under /v1 and each collection

_CLASSIFY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": ClassifyItemsRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files", "labels"],
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "labels": {"type": "string", "description": "JSON list of 2-1000 labels"},
                        "template": {"type": "string", "description": 'e.g. "a photo of {}"'},
                    },
                }
            },
        },
    }
}


def _response(results: list[list[LabelScore]]) -> ClassifyResponse:
    return ClassifyResponse(
        results=[
            [LabelResult(label=s.label, score=s.score, probability=s.probability) for s in row]
            for row in results
        ]
    )


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    openapi_extra=_CLASSIFY_BODY,
    summary="Zero-shot labels: multipart image files, or JSON stored items, and the labels",
)
async def classify(request: Request, classify: ClassifyDep) -> ClassifyResponse:
    refusal = "send multipart/form-data image files, or JSON stored items"
    if body_format(request, refusal) == "multipart":
        async with request.form(max_files=MAX_IMAGES, max_fields=10) as form:
            files = [f for f in form.getlist("files") if not isinstance(f, str)]
            blobs = [await read_upload(f, i) for i, f in enumerate(files)]
            labels = _labels(form.get("labels"))
            template = form.get("template")
        text_template = template if isinstance(template, str) and template else None
        return _response(await classify.images(blobs, labels, text_template))
    body = validated(ClassifyItemsRequest, await request.body())
    return _response(await classify.items(body.items, body.labels, body.template))


@router.post(
    "/classify/tag",
    dependencies=[AdminOnly],
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    summary="Write each stored item's best label into its metadata, as a resumable job",
)
async def tag_items(
    body: TagRequestBody, request: Request, items: ItemsDep, jobs: JobsDep
) -> JobAccepted:
    tag = TagRequest(
        body.labels,
        body.field,
        body.template,
        body.filter,
        TARGET_KIND[body.target],
        body.overwrite,
    )
    await check_tag_field(items, tag)
    # items written after this are left alone: a rewrite gives an item a new label
    params = {**tag.params(), "up_to_label": await items.last_label()}
    return JobAccepted(
        job_id=await jobs.submit_over_items(collection_name(request), "classify", params)
    )


def _labels(raw: object) -> list[str]:
    if not isinstance(raw, str):
        raise InvalidInputError("labels must be a form field holding a JSON list of strings")
    try:
        value = strict_json(raw)
    except ValueError as e:
        raise InvalidInputError(f"labels must be a JSON list of strings: {e}") from e
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInputError("labels must be a JSON list of strings")
    return value

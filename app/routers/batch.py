"""Batch indexing jobs: submit many items (or vectors made elsewhere), follow their progress,
resume after a restart."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from app.deps import JobsDep, collection_name
from app.jobs.intake import BatchEntry, VectorEntry
from app.parsing import matrix_of, parse_ids, parse_metadata, read_npy
from app.responses import job_response
from app.routers.common import body_format, validated
from app.schemas import BatchRequest, JobAccepted, JobResponse, VectorItemsForm, VectorsRequest
from app.services.errors import InvalidInputError

router = APIRouter(tags=["batch"])  # /batch under /v1 and each collection
jobs_router = APIRouter(prefix="/v1/jobs", tags=["jobs"])  # job ids are global

MAX_BATCH_FILES = 100_000
ITEMS_PART_BYTES = 256 * 2**20  # a vectors request's `items` field: 100,000 rows of metadata

_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": BatchRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "ids": {"type": "string", "description": "JSON list, one id per file"},
                        "metadata": {"type": "string", "description": "JSON list of objects"},
                        "dedup_threshold": {"type": "number", "description": "see the JSON body"},
                    },
                }
            },
        },
    }
}


@router.post(
    "/batch",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    openapi_extra=_BATCH_BODY,
    summary="Index many items in the background (JSON items or multipart files)",
)
async def submit_batch(request: Request, jobs: JobsDep) -> JobAccepted:
    collection = collection_name(request)
    refusal = "send application/json items or multipart/form-data files"
    if body_format(request, refusal) == "multipart":
        async with request.form(max_files=MAX_BATCH_FILES, max_fields=100) as form:
            uploads = [f for f in form.getlist("files") if not isinstance(f, str)]
            if not uploads:
                raise InvalidInputError("a multipart batch needs one or more 'files' parts")
            ids = parse_ids(_text_field(form.get("ids")), len(uploads))
            metadata = parse_metadata(_text_field(form.get("metadata")), len(uploads))
            dedup = _threshold(_text_field(form.get("dedup_threshold")))
            entries = [
                BatchEntry(id=i, metadata=m, upload=u.file)
                for u, i, m in zip(uploads, ids, metadata, strict=True)
            ]
            job_id = await jobs.submit(entries, collection, dedup)
    else:
        body = validated(BatchRequest, await request.body())
        entries = [BatchEntry(**item.model_dump()) for item in body.items]
        job_id = await jobs.submit(entries, collection, body.dedup_threshold)
    return JobAccepted(job_id=job_id)


_VECTORS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": VectorsRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["vectors", "items"],
                    "properties": {
                        "vectors": {
                            "type": "string",
                            "format": "binary",
                            "description": "an .npy array of float16/32/64, one row an item",
                        },
                        "items": {
                            "type": "string",
                            "description": "JSON list, one {id, kind?, text?, metadata?} a row",
                        },
                    },
                }
            },
        },
    }
}


@router.post(
    "/vectors",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    openapi_extra=_VECTORS_BODY,
    summary="Store vectors made elsewhere (e.g. clip-retrieval's) in the background, no encoding",
)
async def submit_vectors(request: Request, jobs: JobsDep) -> JobAccepted:
    """Vectors of the collection's model, made elsewhere: checked (its dimension, finite, not
    zero), normalized, and stored by id as a batch job (202; resumable; an id sent again
    replaces its item). Images arrive without bytes: another model cannot embed them again."""
    collection = collection_name(request)
    refusal = "send application/json items with vectors, or a multipart .npy 'vectors' + 'items'"
    if body_format(request, refusal) == "multipart":
        async with request.form(max_files=1, max_fields=10, max_part_size=ITEMS_PART_BYTES) as form:
            upload = form.get("vectors")
            if upload is None or isinstance(upload, str):
                raise InvalidInputError("a multipart request needs a 'vectors' file: an .npy array")
            vectors = read_npy(upload.file)
            raw = _text_field(form.get("items"))
            if raw is None:
                raise InvalidInputError("a multipart request needs 'items': a JSON list")
            fields = validated(VectorItemsForm, raw).root
    else:
        body = validated(VectorsRequest, await request.body())
        fields = list(body.items)
        vectors = matrix_of([item.vector for item in body.items])
    entries = [VectorEntry(f.id, f.kind, f.text, f.metadata) for f in fields]
    return JobAccepted(job_id=await jobs.submit_vectors(vectors, entries, collection))


def _text_field(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _threshold(raw: str | None) -> float | None:
    """The multipart form's dedup_threshold: a cosine, or absent."""
    if raw is None or not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError as e:
        raise InvalidInputError("dedup_threshold must be a number between -1 and 1") from e
    if not -1.0 <= value <= 1.0:
        raise InvalidInputError("dedup_threshold must be a number between -1 and 1")
    return value


@jobs_router.get("/{job_id}", response_model=JobResponse, summary="A job's progress")
async def get_job(job_id: str, jobs: JobsDep) -> JobResponse:
    return job_response(await jobs.get(job_id))


@jobs_router.delete(
    "/{job_id}",
    response_model=JobResponse,
    summary="Cancel a job: a re-embedding leaves its collection as it was",
)
async def cancel_job(job_id: str, jobs: JobsDep) -> JobResponse:
    return job_response(await jobs.cancel(job_id))


@jobs_router.post(
    "/{job_id}/resume",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobResponse,
    summary="Resume an interrupted or failed job; items already done are skipped",
)
async def resume_job(job_id: str, jobs: JobsDep) -> JobResponse:
    return job_response(await jobs.resume(job_id))

"""The one place where domain errors become HTTP status codes."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app.schemas.openai import OPENAI_PATHS
from app.services.errors import (
    AdminKeyRequiredError,
    CollectionExistsError,
    CollectionLimitError,
    CollectionNotFoundError,
    CollectionStateError,
    FieldInUseError,
    InvalidInputError,
    JobNotFoundError,
    JobStateError,
    ModelsBusyError,
    NoContentError,
    NoThumbnailError,
    NotReadyError,
    OverloadedError,
    ResourcesExhaustedError,
    public_message,
)
from index import (
    DuplicateIdError,
    GenerationRetiredError,
    InvalidFilterError,
    InvalidMetadataError,
    ItemNotFoundError,
    StorageError,
    TooManyDuplicatesError,
    UnavailableError,
    excerpt,
)
from models import (
    EmptyTextError,
    ImageDecodeError,
    ImageTooLargeError,
    ModelLoadError,
    UnsupportedImageFormatError,
)

logger = logging.getLogger(__name__)

# Most specific first: the first matching class decides the status.
STATUS_BY_ERROR: tuple[tuple[type[Exception], int], ...] = (
    (AdminKeyRequiredError, 403),
    (ItemNotFoundError, 404),
    (JobNotFoundError, 404),
    (NoThumbnailError, 404),
    (NoContentError, 404),
    (CollectionNotFoundError, 404),
    (JobStateError, 409),
    (CollectionExistsError, 409),
    (CollectionLimitError, 409),
    (CollectionStateError, 409),
    (FieldInUseError, 409),
    (ImageTooLargeError, 413),
    (UnsupportedImageFormatError, 415),
    (ImageDecodeError, 422),
    (EmptyTextError, 422),
    (DuplicateIdError, 422),
    (InvalidFilterError, 422),
    (TooManyDuplicatesError, 422),
    (InvalidMetadataError, 422),
    (InvalidInputError, 422),
    (ModelLoadError, 422),
    (OverloadedError, 429),
    (NotReadyError, 503),
    (ModelsBusyError, 503),
    (ResourcesExhaustedError, 503),
    (UnavailableError, 503),  # a StorageError, but one that passes: the database, S3, Milvus
    (GenerationRetiredError, 503),  # another replica is switching the collection's model
    (StorageError, 507),
)


RETRY_AFTER = {429: "1", 503: "5"}


def status_for(error: Exception) -> int | None:
    for error_type, status in STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return status
    return None


_OPENAI_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
}


def openai_error(
    status: int, message: str, error: Exception | None = None, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error body, `{"error": {"message", "type", "param", "code"}}`, for the routes its
    clients call (their SDKs read the message from there)."""
    kind = _OPENAI_ERROR_TYPES.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    code = None
    if isinstance(error, CollectionNotFoundError):
        message = f"The model {excerpt(error.name)} does not exist: name a collection or its model"
        code = "model_not_found"
    param = getattr(error, "param", param)
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


async def _domain_error(request: Request, error: Exception) -> JSONResponse:
    status = status_for(error) or 500
    if status >= 500 or isinstance(error, ModelLoadError):
        logger.error("%s %s -> %d: %s", request.method, request.url.path, status, error)
    headers = {"Retry-After": RETRY_AFTER[status]} if status in RETRY_AFTER else None
    if request.url.path in OPENAI_PATHS:  # OpenAI's clients read errors in OpenAI's shape
        body = openai_error(status, public_message(error), error)
        return JSONResponse(body, status_code=status, headers=headers)
    return JSONResponse({"detail": public_message(error)}, status_code=status, headers=headers)


async def _invalid_request(request: Request, error: Exception) -> JSONResponse:
    """422 naming each bad field; the offending input is not echoed (it may be huge or not JSON)."""
    if not isinstance(error, RequestValidationError):  # registered for that type only
        raise error
    details = [
        {
            "loc": list(e.get("loc", ())),
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in error.errors()
    ]
    if request.url.path in OPENAI_PATHS and details:
        first = details[0]
        field = ".".join(str(part) for part in first["loc"][1:]) or None
        message = f"{field}: {first['msg']}" if field else str(first["msg"])
        return JSONResponse(openai_error(422, message, param=field), status_code=422)
    return JSONResponse({"detail": details}, status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _invalid_request)
    for error_type, _ in STATUS_BY_ERROR:
        app.add_exception_handler(error_type, _domain_error)
    # anything else: app.middleware.UnhandledErrorMiddleware (a JSON 500, the connection kept)

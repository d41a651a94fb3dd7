"""Errors raised by the services for requests they cannot carry out. No HTTP here."""

import re

from index.errors import StorageError, excerpt
from models.errors import ModelLoadError

# an absolute path in a message (not `XMR_MODEL/XMR_PRETRAINED` nor `ViT-B-32/laion...`)
_SERVER_PATH = re.compile(r"(?<![\w.:/~-])/[^\s'\"(),;]+")


class ServiceError(Exception):
    """Base class for service-layer errors."""


class InvalidInputError(ServiceError):
    """The request is well-formed but its content cannot be used (says which part and why)."""


class ImportPathError(InvalidInputError):
    """A batch item names a file outside XMR_IMPORT_ROOT, or no import root is configured."""


class NoThumbnailError(ServiceError):
    """The item is a text, or an image imported as a vector alone: no thumbnail (404)."""


class NoContentError(ServiceError):
    """An image imported as a vector alone: xmr has none of its bytes (404)."""


class JobNotFoundError(ServiceError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {excerpt(job_id)}")


class JobStateError(ServiceError):
    """The job is not in a state that allows the action (e.g. resuming a finished job)."""


class NotReadyError(ServiceError):
    """The model and indexes are not loaded yet, or the service is shutting down."""


class OverloadedError(ServiceError):
    """The encode queue is full; the client should retry after a short wait."""


class CollectionNotFoundError(ServiceError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no collection named {excerpt(name)}")
        self.name = name


class CollectionExistsError(ServiceError):
    def __init__(self, name: str) -> None:
        super().__init__(f"a collection named {excerpt(name)} exists already")


class CollectionStateError(ServiceError):
    """The collection cannot do that now or ever (e.g. re-embed `default` through the API)."""


class AdminKeyRequiredError(ServiceError):
    """The route changes what every client shares: it needs XMR_ADMIN_KEY (403)."""


class ModelsBusyError(ServiceError):
    """Every loaded model is in use and no other may be loaded (XMR_MAX_MODELS); retry soon."""


class FieldInUseError(ServiceError):
    """A tagging job would write into a metadata field that items hold already."""


class ModelNotAllowedError(InvalidInputError):
    """An API client named a model or weights that XMR_ALLOWED_MODELS does not list."""


class CollectionLimitError(ServiceError):
    """Creating another collection would pass XMR_MAX_COLLECTIONS."""


class ResourcesExhaustedError(ServiceError):
    """The process ran out of file descriptors or a like resource: retry later (503)."""


def public_message(error: Exception) -> str:
    """What a client is told: the domain error's own text, with any server path taken out
    (storage and model-loading messages may carry them; the log keeps the whole text)."""
    text = str(error)
    if isinstance(error, StorageError | ModelLoadError):
        text = _SERVER_PATH.sub("<path>", text)
    return text

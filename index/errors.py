"""Errors of the index layer. They know nothing of HTTP."""

import json


def excerpt(value: object, limit: int = 40) -> str:
    """A short, escaped quotation of client input for an error message: never the whole of it."""
    text = str(value)
    quoted = json.dumps(text[:limit])  # escapes control characters and quotes
    return quoted + ("…" if len(text) > limit else "")


class IndexDomainError(Exception):
    """Base class for index-layer errors."""


class ItemNotFoundError(IndexDomainError):
    """No item has this id."""

    def __init__(self, item_id: str) -> None:
        super().__init__(f"no item with id {excerpt(item_id)}")
        self.item_id = item_id


class ModelMismatchError(IndexDomainError):
    """The stored vectors were made by another model than the one loaded."""


class SnapshotError(IndexDomainError):
    """An index snapshot file is missing, truncated, corrupt or describes other data."""


class StorageError(IndexDomainError):
    """Writing to disk failed (disk full, permissions); nothing acknowledged was lost."""


class UnavailableError(StorageError):
    """A service the store depends on does not answer (down, restarting, unreachable): a
    passing condition; the request or job may be retried, nothing acknowledged was lost."""


class DatabaseUnavailableError(UnavailableError):
    """The database does not answer (down, restarting, unreachable): a passing condition, the
    request may be retried; nothing acknowledged was lost."""


class BlobStoreUnavailableError(UnavailableError):
    """The object storage holding the image bytes does not answer: a passing condition, the
    request may be retried; nothing acknowledged was lost."""


class VectorStoreUnavailableError(UnavailableError):
    """The vector store the replicas share (a Milvus server) does not answer: a passing
    condition, the request may be retried; nothing acknowledged was lost."""


class GenerationRetiredError(IndexDomainError):
    """The generation written to was retired by a switch to a new model (on another replica):
    nothing was written; the request may be made again against the new generation."""


class DuplicateIdError(IndexDomainError):
    """One write names the same id twice."""


class InvalidFilterError(IndexDomainError):
    """A metadata filter is malformed; the message names the bad part."""


class TooManyDuplicatesError(IndexDomainError):
    """A near-duplicate scan found more pairs or larger groups than one request may build."""


class InvalidMetadataError(IndexDomainError):
    """Item metadata is not a JSON object within the depth and size limits."""

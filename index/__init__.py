"""Store and search vectors and their records."""

from index.errors import (
    DuplicateIdError,
    InvalidFilterError,
    InvalidMetadataError,
    ItemNotFoundError,
    ModelMismatchError,
    SnapshotError,
    StorageError,
    TooManyDuplicatesError,
    excerpt,
)
from index.filters import MetadataFilter, parse_filter
from index.metadata import (
    DEFAULT_MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    check_metadata_shape,
    serialized_metadata,
)
from index.planner import IndexOptions
from index.records import KINDS, Kind, Record
from index.store import Hit, IndexInfo, ItemStore, NewItem
from index.vectors import FaissVectorIndex, use_search_threads

__all__ = [
    "DEFAULT_MAX_METADATA_BYTES",
    "KINDS",
    "MAX_METADATA_DEPTH",
    "InvalidMetadataError",
    "check_metadata_shape",
    "excerpt",
    "serialized_metadata",
    "DuplicateIdError",
    "FaissVectorIndex",
    "Hit",
    "IndexInfo",
    "InvalidFilterError",
    "TooManyDuplicatesError",
    "MetadataFilter",
    "IndexOptions",
    "ItemNotFoundError",
    "ItemStore",
    "Kind",
    "ModelMismatchError",
    "NewItem",
    "Record",
    "SnapshotError",
    "StorageError",
    "parse_filter",
    "use_search_threads",
]

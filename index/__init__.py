"""Store and search vectors and their records."""

from index.errors import (
    DuplicateIdError,
    InvalidFilterError,
    ItemNotFoundError,
    ModelMismatchError,
    SnapshotError,
    StorageError,
)
from index.filters import MetadataFilter, parse_filter
from index.planner import IndexOptions
from index.records import KINDS, Kind, Record
from index.store import Hit, IndexInfo, ItemStore, NewItem
from index.vectors import FaissVectorIndex

__all__ = [
    "KINDS",
    "DuplicateIdError",
    "FaissVectorIndex",
    "Hit",
    "IndexInfo",
    "InvalidFilterError",
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
]

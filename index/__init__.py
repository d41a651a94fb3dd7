"""index/ stores and searches vectors and their records.

This top level holds only the values and errors every layer may use (items, records, hits,
filters, options). The stores and backends are imported from their modules (`index.store`,
`index.backends`) where one is opened, so importing `index` loads neither FAISS nor pymilvus;
nothing in index/ imports from app/ or models/.
"""

from index.errors import (
    BlobStoreUnavailableError,
    DatabaseUnavailableError,
    DuplicateIdError,
    GenerationRetiredError,
    InvalidFilterError,
    InvalidMetadataError,
    ItemNotFoundError,
    ModelMismatchError,
    SnapshotError,
    StorageError,
    TooManyDuplicatesError,
    UnavailableError,
    VectorStoreUnavailableError,
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
from index.types import KINDS, Hit, HybridScope, IndexInfo, Kind, NewItem, Record

__all__ = [
    "DEFAULT_MAX_METADATA_BYTES",
    "KINDS",
    "MAX_METADATA_DEPTH",
    "BlobStoreUnavailableError",
    "UnavailableError",
    "VectorStoreUnavailableError",
    "DatabaseUnavailableError",
    "DuplicateIdError",
    "GenerationRetiredError",
    "Hit",
    "HybridScope",
    "IndexInfo",
    "IndexOptions",
    "InvalidFilterError",
    "InvalidMetadataError",
    "ItemNotFoundError",
    "Kind",
    "MetadataFilter",
    "ModelMismatchError",
    "NewItem",
    "Record",
    "SnapshotError",
    "StorageError",
    "TooManyDuplicatesError",
    "check_metadata_shape",
    "excerpt",
    "parse_filter",
    "serialized_metadata",
]

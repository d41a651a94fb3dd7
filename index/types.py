"""What the index package hands out and takes in: items, records, hits, index descriptions.

Plain values with no storage behind them, so that any layer may import them without loading
FAISS, SQLite or Milvus; the checks every vector and label array passes live here too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from index.filters import MetadataFilter
from index.fusion import Fusion

Kind = Literal["image", "text"]
VectorDtype = Literal["float32", "float16"]  # how a record's vector is stored beside it

# (labels, vectors) chunks, read afresh on each call: an index build reads them twice (a
# training sample, then every vector), so it never holds all of them at once
VectorChunks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
KINDS: tuple[Kind, Kind] = ("image", "text")


@dataclass(frozen=True)
class Record:
    """An indexed item as the API shows it (without its vector).

    `label` is the record store's integer key: it grows with every write, and a rewritten item
    gets a new one, so it orders records by write and keys the vector indexes.
    """

    label: int
    id: str
    kind: Kind
    metadata: dict[str, Any] | None
    text: str | None
    content_path: str | None
    content_type: str | None
    content_sha256: str | None
    model: str
    created_at: float
    updated_at: float
    payload_bytes: int = 0  # stored metadata JSON and text: what a response carries of it


@dataclass(frozen=True)
class NewItem:
    """An item to index: its vector plus what to keep beside it."""

    id: str
    kind: Kind
    vector: np.ndarray
    metadata: dict[str, Any] | None = None
    text: str | None = None
    content: bytes | None = None
    content_type: str | None = None
    created_at: float | None = None  # kept from the item's first write (re-embedding carries it)
    thumbnail: bytes | None = None  # an image's small rendition, stored beside its bytes

    @classmethod
    def text_item(
        cls, item_id: str, vector: np.ndarray, text: str, metadata: dict[str, Any] | None = None
    ) -> NewItem:
        return cls(item_id, "text", vector, metadata, text=text)

    @classmethod
    def image_item(
        cls,
        item_id: str,
        vector: np.ndarray,
        content: bytes,
        content_type: str,
        metadata: dict[str, Any] | None = None,
        thumbnail: bytes | None = None,
    ) -> NewItem:
        return cls(
            item_id,
            "image",
            vector,
            metadata,
            content=content,
            content_type=content_type,
            thumbnail=thumbnail,
        )

    @classmethod
    def again(
        cls,
        record: Record,
        vector: np.ndarray,
        content: bytes | None,
        thumbnail: bytes | None = None,
    ) -> NewItem:
        """A stored item with a new vector (a re-embedding): all else as it was."""
        return cls(
            record.id,
            record.kind,
            vector,
            record.metadata,
            text=record.text,
            content=content,
            content_type=record.content_type,
            created_at=record.created_at,
            thumbnail=thumbnail,
        )


@dataclass(frozen=True)
class StoredBlob:
    """Where a blob store put an item's bytes."""

    sha256: str
    path: str


@dataclass(frozen=True)
class RecordWrite:
    """One item as the record store writes it: the item, its checked (dim,) float32 vector and
    where its bytes went (None for a text)."""

    item: NewItem
    vector: np.ndarray
    blob: StoredBlob | None = None
    stored_as: VectorDtype = "float32"

    def vector_bytes(self) -> bytes:
        """The vector as the record keeps it (read back by `records.labelled_vectors`)."""
        return np.ascontiguousarray(self.vector, dtype=self.stored_as).tobytes()


@dataclass
class WriteResult:
    """What one write changed, for the vector indexes to follow."""

    seq: int
    added: dict[Kind, list[tuple[int, np.ndarray]]] = field(
        default_factory=lambda: {"image": [], "text": []}
    )
    removed: dict[Kind, list[int]] = field(default_factory=lambda: {"image": [], "text": []})
    released_blobs: list[StoredBlob] = field(default_factory=list)  # no record uses them now


@dataclass(frozen=True)
class Hit:
    """A ranked item; a hybrid search also says what each side scored it."""

    record: Record
    score: float
    vector_score: float | None = None  # cosine to the query vector
    keyword_score: float | None = None  # BM25; None: the item has none of the query's words


@dataclass(frozen=True)
class HybridScope:
    """A hybrid page: `k` hits after `offset`, matching `where`, fused by `fusion`."""

    k: int
    offset: int = 0
    where: MetadataFilter | None = None
    alpha: float = 0.5  # the vector side's weight; the keyword side gets 1 - alpha
    fusion: Fusion = "relative"


@dataclass(frozen=True)
class IndexInfo:
    """What one vector index is now: its FAISS structure, size, and a rebuild under way."""

    spec: str
    size: int
    building: str | None


def unit_rows(vectors: np.ndarray) -> tuple[np.ndarray, dict[int, str]]:
    """Float32 unit rows (cosine is the contract), and the rows that cannot be: why, by row.

    For vectors made elsewhere (an import); a row that fails is left as zeros."""
    finite = np.isfinite(vectors).all(axis=1)
    norms = np.linalg.norm(np.where(finite[:, None], vectors, 0.0), axis=1)
    bad = {int(r): "the vector holds NaN or infinity" for r in np.flatnonzero(~finite)}
    bad |= {int(r): "the vector is all zeros" for r in np.flatnonzero(finite & (norms == 0))}
    safe = np.where(norms > 0, norms, 1.0)
    unit = np.where(finite[:, None], vectors, 0.0) / safe[:, None]
    return unit.astype(np.float32), bad


def check_vectors(xb: np.ndarray, d: int) -> np.ndarray:
    """Return `xb` as a C-contiguous float32 (n, d) array, or raise TypeError/ValueError."""
    if not isinstance(xb, np.ndarray):
        raise TypeError(f"vectors must be a numpy array, not {type(xb).__name__}")
    if xb.ndim != 2:
        raise ValueError(f"vectors must be 2-d, got shape {xb.shape}")
    if xb.shape[1] != d:
        raise ValueError(f"vectors have dimension {xb.shape[1]}, the index has {d}")
    if not np.isfinite(xb).all():
        raise ValueError("vectors contain NaN or infinity")
    return np.ascontiguousarray(xb, dtype=np.float32)


def check_labels(labels: np.ndarray | list[int], n: int | None = None) -> np.ndarray:
    ids = np.ascontiguousarray(np.asarray(labels, dtype=np.int64).reshape(-1))
    if n is not None and ids.shape[0] != n:
        raise ValueError(f"got {ids.shape[0]} labels for {n} vectors")
    return ids


def no_hits(queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, labels) of `queries` rows with no hit in any of their `k` slots."""
    return (
        np.full((queries, k), -np.inf, dtype=np.float32),
        np.full((queries, k), -1, dtype=np.int64),
    )

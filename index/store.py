"""ItemStore: the records, vectors and bytes of one data directory, opened and kept consistent.

The records are the source of truth and every write commits there first; the vector index of
each kind follows (index/serving.py), is rebuilt into another structure in the background when
it should change (index/rebuild.py) and is snapshotted now and then (index/persistence.py). At
start-up a snapshot is loaded and brought up to date from the records, or rebuilt when it is
missing, corrupt or made by another model. Searches are `store.searches` (index/search.py),
near-duplicates `store.duplicates` (index/duplicates.py), other reads `store.records` and
`store.log`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from index.backends import open_backend
from index.blobs import THUMBNAIL_TYPE, open_blobs, thumbnail_path, with_thumbnails
from index.bulk import BulkLoad
from index.duplicates import Duplicate, DuplicateScan
from index.errors import DuplicateIdError, ItemNotFoundError, StorageError, excerpt
from index.files import remove_stale_temporaries
from index.filters import MetadataFilter
from index.follow import LogFollower
from index.persistence import Snapshots, SnapshotTiming
from index.planner import IndexOptions
from index.rebuild import Rebuilder
from index.records import RecordStore, VectorLog, open_records, store_key
from index.search import StoreSearch
from index.serving import ServingIndexes
from index.types import (
    KINDS,
    IndexInfo,
    Kind,
    NewItem,
    Record,
    RecordWrite,
    WriteResult,
    check_vectors,
)

# How long a blob no record names is kept in a shared store: a record naming it may be on its
# way from another process (blobs are written before the record commits)
SHARED_BLOB_GRACE_S = 3600.0


class ItemStore:
    """Upsert, delete and get items under one data directory; search through `searches`."""

    def __init__(
        self,
        data_dir: Path,
        model_id: str,
        dim: int,
        options: IndexOptions | None = None,
        namespace: str = "",
    ) -> None:
        """`namespace` names the collection (and generation) in a vector store shared by several."""
        self.data_dir = data_dir
        self.model_id = model_id
        self.dim = dim
        self._backend = open_backend(data_dir, model_id, dim, options or IndexOptions(), namespace)
        data_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(data_dir)
        opened = open_records(data_dir, self._backend.options.database_url, namespace)
        self.records: RecordStore = opened.items
        self.log: VectorLog = opened.log
        self.shared = opened.shared
        try:
            self.records.bind_model(model_id, dim)
            if self._backend.options.filter_fields:
                self.records.index_fields(self._backend.options.filter_fields)
            seq = self.log.current_seq()
            self._serving = ServingIndexes(
                {kind: self._backend.open(kind, self.log, seq) for kind in KINDS}, seq
            )
        except BaseException:
            self.records.close()
            raise
        self._blobs = open_blobs(*blob_location(self._backend.options, data_dir, namespace))
        self._rebuilder = Rebuilder(self._serving, self._backend, self.log, dim)
        # with FAISS (or a Milvus Lite file) each process keeps indexes of its own, which follow
        # the others' writes; a shared vector store (a Milvus server) is written by the writer
        # of each record only
        shares_vectors = self._backend.shares_vectors
        self._follower = LogFollower(
            self._serving,
            self.log,
            dim,
            shared=self.shared and not shares_vectors,
            on_change=self._rebuilder.maybe_start,
            shared_store=shares_vectors,
            repair=lambda kind: self._backend.reconcile(self._serving[kind], self.log, kind),
        )
        self._snapshots = Snapshots(
            data_dir / "index",
            self._serving,
            self._rebuilder,
            self._backend,
            self.log,
            (model_id, dim),
        )
        self.searches = StoreSearch(
            self._serving, self.records, self.log, opened.keywords, dim, self._follower.catch_up
        )
        self.duplicates = DuplicateScan(self._serving, self.records, self.log, self.searches, dim)
        self._blobs.remove_unreferenced(
            with_thumbnails(self.records.blob_paths()),
            SHARED_BLOB_GRACE_S if self.shared else 0.0,
        )
        with self._serving.lock:
            for kind in KINDS:
                self._rebuilder.maybe_start(kind)
        self._bulk: BulkLoad | None = None  # inside bulk_load: writes wait for its end
        self._follower.start()

    @property
    def options(self) -> IndexOptions:
        return self._backend.options

    @options.setter
    def options(self, options: IndexOptions) -> None:
        """Plan the next rebuilds by other options (a running one keeps its plan)."""
        self._backend.options = options

    # -- writes ---------------------------------------------------------------------------
    def upsert(self, items: Sequence[NewItem]) -> list[str]:
        """Store items durably and make them searchable; an existing id is replaced."""
        if not items:
            return []
        _check_unique_ids(items)
        with self._serving.lock:
            self._upsert_locked(items)
        return [item.id for item in items]

    def upsert_distinct(
        self, items: Sequence[NewItem], threshold: float
    ) -> tuple[list[str], list[Duplicate]]:
        """Like upsert, but an image whose cosine to a stored image, or to one before it in
        `items`, is at least `threshold` is not stored: its entry in the ids returned is the
        existing item's id, and it is listed among the duplicates."""
        if not items:
            return [], []
        _check_unique_ids(items)
        with self._serving.lock:
            duplicates = self.duplicates.in_write(items, threshold)
            skipped = {d.position for d in duplicates}
            kept = [item for position, item in enumerate(items) if position not in skipped]
            if kept:
                self._upsert_locked(kept)
        existing = {d.position: d.existing_id for d in duplicates}
        return [existing.get(position, item.id) for position, item in enumerate(items)], duplicates

    def _upsert_locked(self, items: Sequence[NewItem]) -> None:
        writes = [self._record_write(item) for item in items]
        self._follow(self.records.upsert(writes, self.model_id))

    def delete(self, item_id: str) -> None:
        """Remove an item; it is gone from search when this returns."""
        with self._serving.lock:
            self._follow(self.records.delete(item_id))

    def merge_tags(
        self, tags: dict[int, dict[str, Any]], max_bytes: int, overwrite: bool = False
    ) -> int:
        """Merge tags into stored items' current metadata (see RecordStore.merge_tags)."""
        with self._serving.lock:
            return self.records.merge_tags(tags, max_bytes, overwrite)

    def _record_write(self, item: NewItem) -> RecordWrite:
        vector = check_vectors(np.asarray(item.vector, dtype=np.float32).reshape(1, -1), self.dim)
        blob = None
        if item.content is not None:
            blob = self._blobs.put(item.content, item.content_type or "")
            if item.thumbnail is not None:
                self._blobs.put_beside(thumbnail_path(blob.path), item.thumbnail, THUMBNAIL_TYPE)
        return RecordWrite(item, vector[0], blob, self.options.record_vectors)

    def _follow(self, result: WriteResult) -> None:
        """The indexes follow a committed write; its released blobs go. Write lock held.

        In a shared store another process may be writing the same bytes again right now (its
        record not committed yet): released blobs are left to the start-up sweep, which removes
        only those unreferenced for SHARED_BLOB_GRACE_S.
        """
        if self._bulk is not None:
            self._bulk.note(result)
        else:
            self._follower.follow(result)
        if not self.shared:
            for blob in result.released_blobs:
                self._blobs.remove(blob.path)
                self._blobs.remove(thumbnail_path(blob.path))

    # -- reads ----------------------------------------------------------------------------
    def get(self, item_id: str) -> Record:
        return self.records.get(item_id)

    def read_content(self, record: Record) -> bytes:
        return self._blobs.read(self._content_path(record))

    def content_stream(self, record: Record) -> Iterator[bytes]:
        """The item's stored bytes in chunks (StorageError if it has none or they are gone)."""
        return self._blobs.stream(self._content_path(record))

    def content_url(self, record: Record, expires_s: int) -> str | None:
        """An address the bytes can be fetched from directly (object storage), or None."""
        return self._blobs.url_for(self._content_path(record), expires_s)

    def thumbnail_stream(self, record: Record) -> Iterator[bytes]:
        """The image's thumbnail in chunks; FileNotFoundError where none was stored (an item
        indexed before thumbnails were made)."""
        return self._blobs.stream(thumbnail_path(self._content_path(record)))

    def store_thumbnail(self, record: Record, thumbnail: bytes) -> None:
        """Keep a thumbnail made after the item was indexed."""
        path = thumbnail_path(self._content_path(record))
        self._blobs.put_beside(path, thumbnail, THUMBNAIL_TYPE)

    def _content_path(self, record: Record) -> str:
        if record.content_path is None:
            raise StorageError(f"item {excerpt(record.id)} has no stored content")
        return record.content_path

    def stored_vector(self, item_id: str) -> tuple[Record, np.ndarray]:
        """An item's record and its vector as stored, (1, dim); ItemNotFoundError if absent."""
        record = self.records.get(item_id)
        _, vectors = self.log.vectors_of(np.array([record.label]), self.dim)
        if len(vectors) == 0:  # deleted between the two reads
            raise ItemNotFoundError(item_id)
        return record, vectors

    def vectors_of_records(self, records: Sequence[Record]) -> tuple[list[int], np.ndarray]:
        """The stored vectors of these records: (labels found, vectors), in label order."""
        labels, vectors = self.log.vectors_of(np.array([r.label for r in records]), self.dim)
        return labels.tolist(), vectors

    def count_matching(
        self, kind: Kind, where: MetadataFilter | None = None, up_to_label: int | None = None
    ) -> int:
        """How many items of `kind` match `where` (with labels up to `up_to_label`)."""
        labels = (
            self.log.all_labels(kind)
            if where is None
            else self.records.labels_matching(kind, where)
        )
        return int((labels <= up_to_label).sum()) if up_to_label is not None else len(labels)

    def counts(self) -> dict[Kind, int]:
        """Vectors searchable now, per kind."""
        return self._serving.counts()

    def record_counts(self) -> dict[Kind, int]:
        return {kind: self.log.count(kind) for kind in KINDS}

    def index_info(self) -> dict[Kind, IndexInfo]:
        """What serves each kind now. Lock-free, like searches: it is read on the event loop
        (metrics, collection descriptions), and writes hold the write lock across fsyncs and
        snapshots across serializing whole indexes."""
        building = self._rebuilder.building()
        return {
            kind: IndexInfo(self._serving[kind].spec, len(self._serving[kind]), building.get(kind))
            for kind in KINDS
        }

    # -- structure and lifetime -----------------------------------------------------------
    @contextlib.contextmanager
    def bulk_load(self) -> Iterator[None]:
        """Writes in this block reach the records only; at its end each index they changed is
        built once from the records, in the structure its size calls for, on every core, and
        saved (index/bulk.py). For a store nothing searches meanwhile: an import into a stopped
        server's data directory. If the block fails, the indexes replay what was written.
        A backend that keeps its own data (Milvus) takes each write as usual."""
        if not self._backend.keeps_snapshots:
            yield
            return
        self._rebuilder.wait(3600)
        bulk = BulkLoad(self._serving, self._backend, self.log, self.dim)
        with self._serving.lock:
            self._bulk = bulk
        try:
            yield
        except BaseException:
            with self._serving.lock:
                self._bulk = None
                self._follower.replay_to(self.log.current_seq())
            raise
        with self._serving.lock:
            self._bulk = None
            bulk.finish(os.cpu_count() or 1)
        self.snapshot()

    def wait_for_builds(self, timeout_s: float = 600.0) -> None:
        """Block until no background index build is running (one may start the next)."""
        self._rebuilder.wait(timeout_s)

    def is_dirty(self) -> bool:
        return self._snapshots.is_dirty()

    def snapshot(self) -> bool:
        """Save the indexes if the records moved on; True if anything was saved."""
        return self._snapshots.save()

    @property
    def last_snapshot(self) -> SnapshotTiming | None:
        """The latest snapshot this store saved: the write lock's share and the bytes."""
        return self._snapshots.last

    def catch_up(self) -> None:
        """Bring the indexes up to the writes other processes made (a shared store)."""
        self._follower.catch_up()

    def close(self, save: bool = True) -> None:
        """Release the store, saving the indexes first unless `save` is False (a store another
        process deleted: nothing of it is to be touched)."""
        self._follower.stop()
        with self._serving.lock:
            self._serving.closing = True
        try:
            if save:
                self.snapshot()
        finally:
            self._serving.close()
            self.records.close()

    def destroy(self) -> None:
        """Close without saving and delete the vectors kept outside the folder (Milvus).

        For a store whose folder is being removed: a deleted collection, a retired generation.
        """
        self._follower.stop()
        with self._serving.lock:
            self._serving.closing = True
        try:
            self._serving.drop()
        finally:
            self.records.destroy()


def blob_location(
    options: IndexOptions, data_dir: Path, namespace: str
) -> tuple[Path | str, str | None]:
    """Where a store keeps its image bytes (and the S3 endpoint): under XMR_BLOB_URL or
    XMR_BLOB_DIR, a place of its own; else its data directory's `blobs` folder."""
    if options.blob_url is not None:
        return f"{options.blob_url.rstrip('/')}/{store_key(namespace)}", options.s3_endpoint_url
    if options.blob_dir is not None:
        return options.blob_dir / store_key(namespace), None
    return data_dir / "blobs", None


def _check_unique_ids(items: Sequence[NewItem]) -> None:
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise DuplicateIdError(f"id {excerpt(item.id)} appears twice in one request")
        seen.add(item.id)

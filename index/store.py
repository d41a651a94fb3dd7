"""ItemStore: records, vectors and image bytes of one data directory, kept consistent.

SQLite is the source of truth and every write commits there first; the two FAISS indexes
(images, texts) follow in memory and are snapshotted to disk now and then. At start-up a
snapshot is loaded and brought up to date from the records, or rebuilt when it is missing,
corrupt or made by another model.

When an index should change structure (it grew past the exact-search threshold, or too much of
an approximate index is deleted), a new one is built from the records in a background thread
while the old one keeps serving; the writes made meanwhile are replayed into it before the swap.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.backends import UNSAVED, VectorIndex, open_backend
from index.blobs import BlobStore
from index.duplicates import Duplicate, DuplicateGroup, Pair, group_pairs
from index.errors import (
    DuplicateIdError,
    ItemNotFoundError,
    ModelMismatchError,
    StorageError,
    TooManyDuplicatesError,
    excerpt,
)
from index.files import remove_stale_temporaries
from index.filters import MetadataFilter
from index.fusion import Fusion, fuse
from index.keywords import KeywordQuery
from index.planner import IndexOptions
from index.records import KINDS, Kind, Record, RecordInput, RecordStore, WriteResult
from index.snapshots import save_snapshot
from index.vectors import check_vectors

logger = logging.getLogger(__name__)

# A filter matching at most this many vectors of an approximate index is searched by brute force
# over them (20,000 x 512-d: about 40 MB read from SQLite and a 10 ms product per query batch):
# the probed lists or graph neighbourhood of an approximate index may hold none of them.
EXACT_FILTER_LIMIT = 20_000
# Bounds of one near-duplicate scan (a request or a job): without them a low threshold over a
# set of 2,000 texts took 47 s and 750 MB, and 20,000 would take an hour and ~75 GB.
MAX_NEIGHBOURS = 1024  # others one item may be a near-duplicate of
MAX_PAIRS = 1_000_000
MAX_GROUP = 10_000
# How many of each side's best a hybrid search fuses: the normalization of relative fusion is
# over these, so a page's scores do not depend on which page it is (up to this depth).
HYBRID_DEPTH = 1000


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
    created_at: float | None = None

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
    ) -> NewItem:
        return cls(item_id, "image", vector, metadata, content=content, content_type=content_type)

    @classmethod
    def again(cls, record: Record, vector: np.ndarray, content: bytes | None) -> NewItem:
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
        )


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


class ItemStore:
    """Upsert, delete, get and search items under one data directory."""

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
        self._records = RecordStore(data_dir / "records.sqlite3")
        try:
            self._records.bind_model(model_id, dim)
        except ModelMismatchError:
            self._records.close()
            raise
        self._blobs = BlobStore(data_dir / "blobs")
        self._snapshot_dir = data_dir / "index"
        # _write_lock guards _indexes (which index serves each kind), _builds, _saved_seq and
        # _closing, and keeps each record write and its index update in one order. Searches
        # read _indexes without it: swapping an entry is atomic, and each index locks itself.
        self._write_lock = threading.Lock()
        # _snapshot_lock: one snapshot at a time, so the files are written in sequence order
        self._snapshot_lock = threading.Lock()
        self._saved_seq: dict[Kind, int] = {}
        self._builds: dict[Kind, tuple[str, int, threading.Thread]] = {}
        self._closing = False
        try:
            self._indexes: dict[Kind, VectorIndex] = {k: self._open_index(k) for k in KINDS}
        except BaseException:
            self._records.close()
            raise
        self._blobs.remove_unreferenced(self._records.blob_paths())
        with self._write_lock:
            for kind in KINDS:
                self._maybe_rebuild(kind)

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
        with self._write_lock:
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
        with self._write_lock:
            duplicates = self._near_duplicates_of(items, threshold)
            skipped = {d.position for d in duplicates}
            kept = [item for position, item in enumerate(items) if position not in skipped]
            if kept:
                self._upsert_locked(kept)
        existing = {d.position: d.existing_id for d in duplicates}
        return [existing.get(position, item.id) for position, item in enumerate(items)], duplicates

    def _upsert_locked(self, items: Sequence[NewItem]) -> None:
        inputs = [self._record_input(item) for item in items]
        self._apply(self._records.upsert(inputs, self.model_id))

    def _near_duplicates_of(self, items: Sequence[NewItem], threshold: float) -> list[Duplicate]:
        """The images among `items` as similar as `threshold` to a stored or an earlier one."""
        positions = [p for p, item in enumerate(items) if item.kind == "image"]
        if not positions:
            return []
        vectors = check_vectors(
            np.stack([np.asarray(items[p].vector, dtype=np.float32) for p in positions]), self.dim
        )
        scores, labels = self._indexes["image"].search(vectors, 1)
        stored = self._records.get_by_labels([int(x) for x in labels[:, 0] if x >= 0])
        among_batch = vectors @ vectors.T
        duplicates: list[Duplicate] = []
        kept: list[int] = []  # rows of `vectors` that will be stored
        for row, position in enumerate(positions):
            best_id, best = None, -np.inf
            if labels[row, 0] >= 0 and int(labels[row, 0]) in stored:
                best_id, best = stored[int(labels[row, 0])].id, float(scores[row, 0])
            for earlier in kept:
                if among_batch[row, earlier] > best:
                    best_id, best = items[positions[earlier]].id, float(among_batch[row, earlier])
            if best_id is not None and best >= threshold:
                duplicates.append(Duplicate(position, best_id, best))
            else:
                kept.append(row)
        return duplicates

    def delete(self, item_id: str) -> None:
        """Remove an item; it is gone from search when this returns."""
        with self._write_lock:
            self._apply(self._records.delete(item_id))

    def _record_input(self, item: NewItem) -> RecordInput:
        vector = check_vectors(np.asarray(item.vector, dtype=np.float32).reshape(1, -1), self.dim)
        sha = path = None
        if item.content is not None:
            sha, path = self._blobs.put(item.content, item.content_type or "")
        return RecordInput(
            id=item.id,
            kind=item.kind,
            vector=vector[0],
            metadata=item.metadata,
            text=item.text,
            content_path=path,
            content_type=item.content_type,
            content_sha256=sha,
            created_at=item.created_at,
        )

    def _apply(self, result: WriteResult) -> None:
        for kind in KINDS:
            index = self._indexes[kind]
            index.remove(result.removed[kind])
            added = result.added[kind]
            if added:
                index.add([label for label, _ in added], np.stack([v for _, v in added]))
            if added or result.removed[kind]:
                self._maybe_rebuild(kind)
        for _, path in result.released_blobs:
            self._blobs.remove(path)

    # -- index structure ------------------------------------------------------------------
    def _maybe_rebuild(self, kind: Kind) -> None:
        """Start a background rebuild if the index should change structure; write lock held."""
        index = self._indexes[kind]
        if kind in self._builds or self._closing:
            return
        spec = self._backend.planned_spec(index)
        if spec is None:
            return
        seq = self._records.current_seq()
        thread = threading.Thread(
            target=self._rebuild_in_background,
            args=(kind, spec, seq),
            name=f"xmr-index-build-{kind}",
            daemon=True,
        )
        self._builds[kind] = (spec, seq, thread)
        logger.info("building a %s %s index of %d vectors", spec, kind, len(index))
        thread.start()

    def _rebuild_in_background(self, kind: Kind, spec: str, seq: int) -> None:
        try:
            chunks = self._records.vectors_after(kind, 0, self.dim, up_to_seq=seq)
            built: VectorIndex | None = self._backend.build(spec, chunks)
        except Exception:  # a failed build leaves the working index in place
            logger.exception("building the %s %s index failed", spec, kind)
            built = None
        with self._write_lock:
            if built is not None and not self._closing:
                # replay what was written while the new index was being built
                built.remove(self._records.tombstones_after(kind, seq))
                for labels, vectors in self._records.vectors_after(kind, seq, self.dim):
                    built.add(labels, vectors)
                self._indexes[kind] = built
                self._saved_seq[kind] = UNSAVED
                logger.info("the %s index is now %s (%d vectors)", kind, spec, len(built))
            self._builds.pop(kind, None)
            if built is not None:
                self._maybe_rebuild(kind)  # the index may have grown past another plan meanwhile

    def wait_for_builds(self, timeout_s: float = 600.0) -> None:
        """Block until no background index build is running (one may start the next)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._write_lock:
                threads = [thread for _, _, thread in self._builds.values()]
            if not threads:
                return
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))

    def index_info(self) -> dict[Kind, IndexInfo]:
        """What serves each kind now. Lock-free, like searches: it is read on the event loop
        (metrics, collection descriptions), and writes hold the write lock across fsyncs and
        snapshots across serializing whole indexes. Copying the dict is one step under the GIL,
        and an entry is swapped whole."""
        builds = self._builds.copy()
        return {
            kind: IndexInfo(
                self._indexes[kind].spec,
                len(self._indexes[kind]),
                builds[kind][0] if kind in builds else None,
            )
            for kind in KINDS
        }

    # -- reads ----------------------------------------------------------------------------
    def get(self, item_id: str) -> Record:
        return self._records.get(item_id)

    def read_content(self, record: Record) -> bytes:
        if record.content_path is None:
            raise StorageError(f"item {excerpt(record.id)} has no stored content")
        return self._blobs.read(record.content_path)

    def stored_vector(self, item_id: str) -> tuple[Record, np.ndarray]:
        """An item's record and its vector as stored, (1, dim); ItemNotFoundError if absent."""
        record = self._records.get(item_id)
        _, vectors = self._records.vectors_of(np.array([record.label]), self.dim)
        if len(vectors) == 0:  # deleted between the two reads
            raise ItemNotFoundError(item_id)
        return record, vectors

    def count_matching(
        self, kind: Kind, where: MetadataFilter | None = None, up_to_label: int | None = None
    ) -> int:
        """How many items of `kind` match `where` (with labels up to `up_to_label`)."""
        labels = (
            self._records.all_labels(kind)
            if where is None
            else self._records.labels_matching(kind, where)
        )
        return int((labels <= up_to_label).sum()) if up_to_label is not None else len(labels)

    def vectors_of_records(self, records: Sequence[Record]) -> tuple[list[int], np.ndarray]:
        """The stored vectors of these records: (labels found, vectors), in label order."""
        labels, vectors = self._records.vectors_of(np.array([r.label for r in records]), self.dim)
        return labels.tolist(), vectors

    def records_after(
        self,
        label: int,
        limit: int,
        kind: Kind | None = None,
        where: MetadataFilter | None = None,
    ) -> list[Record]:
        """Records written after the one with `label`, in write order (a job's cursor), of one
        `kind` and matching `where` if given."""
        return self._records.records_after(label, limit, kind, where)

    def all_ids(self) -> set[str]:
        return self._records.all_ids()

    def count_after(self, label: int) -> int:
        """How many records were written after the one with `label`."""
        return self._records.count_after(label)

    def last_label(self) -> int:
        return self._records.max_label()

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        return self._records.existing_ids(ids)

    def ids_by_content_hash(self, hashes: Sequence[str]) -> dict[str, str]:
        """SHA-256 of image bytes -> the id of a stored image with exactly those bytes."""
        return self._records.ids_by_sha256(hashes)

    def search(
        self,
        kind: Kind,
        queries: np.ndarray,
        k: int,
        where: MetadataFilter | None = None,
        offset: int = 0,
    ) -> list[list[Hit]]:
        """Hits `offset` to `offset + k` of `kind` for each query, best first (cosine scores).

        A filter restricts the candidates inside the vector search, so a filtered page is as
        full as the number of matching items allows.
        """
        scores, labels = self._ranked(kind, queries, k + offset, where)
        scores, labels = scores[:, offset:], labels[:, offset:]
        wanted = sorted({int(x) for x in labels.ravel() if x >= 0})
        records = self._records.get_by_labels(wanted)
        return [
            [
                Hit(records[int(label)], float(score))
                for score, label in zip(row_scores, row_labels, strict=True)
                if int(label) in records
            ]
            for row_scores, row_labels in zip(scores, labels, strict=True)
        ]

    def _ranked(
        self, kind: Kind, queries: np.ndarray, k: int, where: MetadataFilter | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, labels) of the best `k` per query; label -1 where there are fewer."""
        if where is None:
            return self._indexes[kind].search(queries, k)
        allowed = self._records.labels_matching(kind, where)
        if allowed.size == 0:
            return (
                np.full((len(queries), k), -np.inf, dtype=np.float32),
                np.full((len(queries), k), -1, dtype=np.int64),
            )
        return self._search_filtered(kind, queries, k, allowed)

    def keyword_search(
        self,
        kind: Kind,
        query: KeywordQuery,
        k: int,
        where: MetadataFilter | None = None,
        offset: int = 0,
    ) -> list[Hit]:
        """Items of `kind` holding the query's words, by BM25 (best first); no words, no hits."""
        match = query.match_expression()
        if match is None:
            return []
        ranking = self._records.keyword_search(kind, match, k, where, offset)
        records = self._records.get_by_labels([label for label, _ in ranking])
        return [Hit(records[label], score) for label, score in ranking if label in records]

    def hybrid_search(
        self,
        kind: Kind,
        vector: np.ndarray,
        query: KeywordQuery,
        scope: HybridScope,
    ) -> list[Hit]:
        """The vector ranking and the keyword ranking of `kind`, fused (index.fusion).

        Each side contributes its best `max(HYBRID_DEPTH, offset + k)` items matching the
        filter; every hit carries its cosine and its BM25 (None when it has none of the words).
        """
        match = query.match_expression()
        depth = max(HYBRID_DEPTH, scope.offset + scope.k)
        scores, labels = self._ranked(kind, vector.reshape(1, -1), depth, scope.where)
        by_vector = [
            (int(x), float(s)) for s, x in zip(scores[0], labels[0], strict=True) if x >= 0
        ]
        by_keyword = (
            [] if match is None else self._records.keyword_search(kind, match, depth, scope.where)
        )
        fused = fuse(by_vector, by_keyword, scope.alpha, scope.fusion)
        page = fused[scope.offset : scope.offset + scope.k]
        wanted = [label for label, _ in page]
        records = self._records.get_by_labels(wanted)
        cosines = dict(by_vector)
        missing = [label for label in wanted if label not in cosines]
        if missing:
            found, stored = self._records.vectors_of(np.array(missing), self.dim)
            cosines.update(zip(found.tolist(), (stored @ vector.reshape(-1)).tolist(), strict=True))
        bm25 = dict(by_keyword)
        unscored = [label for label in wanted if label not in bm25]
        if unscored and match is not None:
            bm25.update(self._records.keyword_scores(match, unscored))
        return [
            Hit(records[label], score, cosines.get(label), bm25.get(label))
            for label, score in page
            if label in records
        ]

    def near_duplicate_pairs(
        self,
        kind: Kind,
        threshold: float,
        where: MetadataFilter | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        chunk: int = 1024,
    ) -> list[Pair]:
        """Every pair of items of `kind` (matching `where`) with cosine >= `threshold`.

        Each item's neighbours are searched with k doubling until the k-th scores below the
        threshold: a range search on exact indexes. `on_progress(done, total)` after each chunk.
        Bounded: an item with more than MAX_NEIGHBOURS such neighbours, or more than MAX_PAIRS
        pairs in all, is a TooManyDuplicatesError (a low threshold over a large set is n²).
        """
        allowed = None if where is None else self._records.labels_matching(kind, where)
        total = len(self._indexes[kind]) if allowed is None else int(allowed.size)
        found: dict[tuple[int, int], float] = {}
        done = 0
        for labels, vectors in self._records.vectors_after(kind, 0, self.dim, chunk):
            if allowed is not None:
                keep = np.isin(labels, allowed)
                labels, vectors = labels[keep], vectors[keep]
            if len(labels):
                for a, b, score in self._neighbours_above(kind, labels, vectors, threshold, where):
                    found[(a, b)] = score
                if len(found) > MAX_PAIRS:
                    raise TooManyDuplicatesError(
                        f"more than {MAX_PAIRS} pairs of items are at cosine {threshold} or "
                        "more; raise the threshold or narrow the items with a filter"
                    )
            done += len(labels)
            if on_progress is not None:
                on_progress(min(done, total), total)
        return [Pair(a, b, score) for (a, b), score in sorted(found.items())]

    def duplicate_groups(
        self,
        kind: Kind,
        threshold: float,
        where: MetadataFilter | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> list[DuplicateGroup]:
        """Groups of items connected by cosine >= `threshold`, largest first; ids in write order."""
        groups = group_pairs(self.near_duplicate_pairs(kind, threshold, where, on_progress))
        if groups and len(groups[0].labels) > MAX_GROUP:
            raise TooManyDuplicatesError(
                f"a group of more than {MAX_GROUP} items are near-duplicates at cosine "
                f"{threshold}; raise the threshold or narrow the items with a filter"
            )
        records: dict[int, Record] = {}
        wanted = [label for group in groups for label in group.labels]
        for start in range(0, len(wanted), 5000):  # SQLite caps the number of parameters
            records.update(self._records.get_by_labels(wanted[start : start + 5000]))
        return [
            DuplicateGroup(
                [records[label].id for label in group.labels if label in records], group.min_score
            )
            for group in groups
        ]

    def _neighbours_above(
        self,
        kind: Kind,
        labels: np.ndarray,
        vectors: np.ndarray,
        threshold: float,
        where: MetadataFilter | None,
    ) -> Iterator[tuple[int, int, float]]:
        size = len(self._indexes[kind])
        k = min(16, size)
        pending = np.arange(len(labels))
        while len(pending):
            scores, found = self._ranked(kind, vectors[pending], k, where)
            for row, query in enumerate(pending):
                for score, label in zip(scores[row], found[row], strict=True):
                    if label >= 0 and label != labels[query] and score >= threshold:
                        a, b = sorted((int(labels[query]), int(label)))
                        yield a, b, float(score)
            full = (found[:, -1] >= 0) & (scores[:, -1] >= threshold)
            if k >= size:
                return
            if full.any() and k > MAX_NEIGHBOURS:
                raise TooManyDuplicatesError(
                    f"an item has more than {MAX_NEIGHBOURS} others at cosine {threshold} or "
                    "more; raise the threshold or narrow the items with a filter"
                )
            pending, k = pending[full], min(k * 2, size)

    def _search_filtered(
        self, kind: Kind, queries: np.ndarray, k: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k among `allowed`: complete whenever k of them exist, on every index structure.

        Exact indexes filter inside their search. On approximate ones a selective filter is
        searched by brute force over its vectors; a broad one widens the search by how much of
        the index it excludes, and searches everything if that still leaves slots empty.
        """
        index = self._indexes[kind]
        if index.exact:
            return index.search(queries, k, allowed)
        if allowed.size <= EXACT_FILTER_LIMIT:
            return self._search_exactly(queries, k, allowed)
        widen = max(1.0, len(index) / allowed.size)
        scores, labels = index.search(queries, k, allowed, widen=widen)
        expected = min(k, allowed.size)
        if ((labels >= 0).sum(axis=1) < expected).any():
            scores, labels = index.search(queries, k, allowed, widen=math.inf)
        return scores, labels

    def _search_exactly(
        self, queries: np.ndarray, k: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        xq = check_vectors(queries, self.dim)
        labels, xb = self._records.vectors_of(allowed, self.dim)
        scores = np.full((len(xq), k), -np.inf, dtype=np.float32)
        found = np.full((len(xq), k), -1, dtype=np.int64)
        if len(labels) == 0:
            return scores, found
        similarity = xq @ xb.T
        top = min(k, len(labels))
        best = np.argpartition(-similarity, top - 1, axis=1)[:, :top]
        order = np.argsort(-np.take_along_axis(similarity, best, axis=1), axis=1, kind="stable")
        best = np.take_along_axis(best, order, axis=1)
        scores[:, :top] = np.take_along_axis(similarity, best, axis=1)
        found[:, :top] = labels[best]
        return scores, found

    def counts(self) -> dict[Kind, int]:
        return {kind: len(self._indexes[kind]) for kind in KINDS}

    def merge_tags(
        self, tags: dict[int, dict[str, Any]], max_bytes: int, overwrite: bool = False
    ) -> int:
        """Merge tags into stored items' current metadata (see RecordStore.merge_tags)."""
        with self._write_lock:
            return self._records.merge_tags(tags, max_bytes, overwrite)

    def count_with_field(self, kind: Kind, field: str, where: MetadataFilter | None) -> int:
        return self._records.count_with_field(kind, field, where)

    def record_counts(self) -> dict[Kind, int]:
        return {kind: self._records.count(kind) for kind in KINDS}

    # -- persistence ----------------------------------------------------------------------
    def is_dirty(self) -> bool:
        seq = self._records.current_seq()
        with self._write_lock:
            return any(self._saved_seq[kind] < seq for kind in KINDS)

    def snapshot(self) -> bool:
        """Write both FAISS indexes to disk if the records moved on; True if anything was saved.

        The indexes are serialized under the write lock and written to disk outside it; what
        was saved is recorded under it again, for the index that was saved only: a background
        build may have swapped in a new one meanwhile, which still needs saving.
        """
        with self._snapshot_lock:
            with self._write_lock:
                seq = self._records.current_seq()
                indexes = dict(self._indexes)
                if not self._backend.keeps_snapshots:  # the backend keeps its own data
                    self._saved_seq.update({kind: seq for kind in KINDS})
                stale = [
                    kind
                    for kind in KINDS
                    if self._backend.keeps_snapshots and self._saved_seq[kind] < seq
                ]
                payloads = {kind: self._backend.serialize(indexes[kind]) for kind in stale}
                sizes = {kind: indexes[kind].stored for kind in stale}
                specs = {kind: indexes[kind].spec for kind in stale}
            saved: list[Kind] = []
            for kind in stale:
                try:
                    save_snapshot(
                        self._snapshot_dir,
                        kind,
                        payloads[kind],
                        seq,
                        sizes[kind],
                        self.model_id,
                        self.dim,
                        specs[kind],
                    )
                except OSError as e:
                    raise StorageError(
                        f"could not save the {kind} index snapshot: {e.strerror or e}; "
                        "the previous snapshot and all records are intact"
                    ) from e
                saved.append(kind)
            if not saved:
                return False
            with self._write_lock:
                for kind in saved:
                    if self._indexes[kind] is indexes[kind]:
                        self._saved_seq[kind] = max(self._saved_seq[kind], seq)
                # a background build replays the tombstones written after it started
                keep_from = [build_seq for _, build_seq, _ in self._builds.values()]
                prune_to = min([*self._saved_seq.values(), *keep_from])
            self._records.prune_tombstones(prune_to)
            return True

    def close(self) -> None:
        with self._write_lock:
            self._closing = True
        try:
            self.snapshot()
        finally:
            for index in self._indexes.values():
                index.close()
            self._records.close()

    def destroy(self) -> None:
        """Close without saving and delete the vectors kept outside the folder (Milvus).

        For a store whose folder is being removed: a deleted collection, a retired generation.
        """
        with self._write_lock:
            self._closing = True
        try:
            for index in self._indexes.values():
                index.drop()
                index.close()
        finally:
            self._records.close()

    def _open_index(self, kind: Kind) -> VectorIndex:
        index, saved_seq = self._backend.open(kind, self._records)
        self._saved_seq[kind] = saved_seq
        return index


def _check_unique_ids(items: Sequence[NewItem]) -> None:
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise DuplicateIdError(f"id {excerpt(item.id)} appears twice in one request")
        seen.add(item.id)

"""Move a data directory's vectors between backends (FAISS <-> Milvus), or its records from
SQLite into PostgreSQL, and prove it worked.

The records hold every vector, so the target is filled from them; the proof is the same counts
and the same top-10 on sample queries (stored vectors) before and after.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from index.errors import ModelMismatchError, StorageError
from index.files import write_atomic
from index.planner import IndexOptions
from index.records import open_records, store_key, stored_model
from index.store import ItemStore
from index.types import KINDS, Kind, NewItem, Record, RecordWrite, StoredBlob

TOP = 10
SCORE_TOLERANCE = 1e-4  # equal scores may come back in either order


@dataclass
class MigrationReport:
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # kind -> (source, target)
    queries: int = 0
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches and all(a == b for a, b in self.counts.values())


def migrate(
    data_dir: Path,
    source: IndexOptions,
    target: IndexOptions,
    samples: int = 20,
    namespace: str = "",
) -> MigrationReport:
    """Fill `target` from the records of `data_dir` and compare it with `source`.

    `data_dir` is one store's folder (a collection's generation); `namespace` names it in Milvus.
    """
    model_id, dim = _bound_model(data_dir, source.database_url, namespace)
    report = MigrationReport()
    before = ItemStore(data_dir, model_id, dim, source, namespace)
    try:
        before.wait_for_builds()
        baseline = _Baseline.of(before, samples)
    finally:
        before.close()
    after = ItemStore(data_dir, model_id, dim, target, namespace)
    try:
        after.wait_for_builds()
        _compare(report, after, baseline)
    finally:
        after.close()
    return report


@dataclass(frozen=True)
class _Baseline:
    """What the source answers: its counts, and the top-10 of sample queries of each kind."""

    counts: dict[Kind, int]
    queries: dict[Kind, np.ndarray]
    expected: dict[Kind, list[list[tuple[str, float]]]]

    @classmethod
    def of(cls, store: ItemStore, samples: int) -> _Baseline:
        queries = {kind: _sample_vectors(store, kind, store.dim, samples) for kind in KINDS}
        expected = {kind: _top(store, kind, queries[kind]) for kind in KINDS}
        return cls(store.counts(), queries, expected)


def _compare(report: MigrationReport, after: ItemStore, baseline: _Baseline) -> None:
    """Record in `report` how `after` agrees with the counts and rankings taken before."""
    for kind in KINDS:
        report.counts[kind] = (baseline.counts[kind], after.counts()[kind])
        got = _top(after, kind, baseline.queries[kind])
        report.queries += len(got)
        for n, (want, have) in enumerate(zip(baseline.expected[kind], got, strict=True)):
            if not _same_ranking(want, have):
                report.mismatches.append(f"{kind} query {n}: {want} != {have}")


def opposite(options: IndexOptions, milvus_uri: str | None) -> IndexOptions:
    """The same options on the other backend."""
    if options.backend == "milvus":
        return replace(options, backend="faiss")
    return replace(options, backend="milvus", milvus_uri=milvus_uri or options.milvus_uri)


def _bound_model(data_dir: Path, database_url: str | None, namespace: str) -> tuple[str, int]:
    stored = stored_model(data_dir, database_url, namespace)
    if stored is None:
        raise ModelMismatchError(f"{data_dir} holds no indexed data")
    return stored


def _sample_vectors(store: ItemStore, kind: Kind, dim: int, samples: int) -> np.ndarray:
    chunk = next(iter(store.log.vectors_after(kind, 0, dim, chunk=max(samples * 10, 1))), None)
    if chunk is None:
        return np.zeros((0, dim), dtype=np.float32)
    vectors = chunk[1]
    picks = np.random.default_rng(0).permutation(len(vectors))[:samples]
    return vectors[np.sort(picks)]


def _top(store: ItemStore, kind: Kind, queries: np.ndarray) -> list[list[tuple[str, float]]]:
    if len(queries) == 0:
        return []
    hits = store.searches.vector(kind, queries, TOP)
    return [[(h.record.id, h.score) for h in row] for row in hits]


def _same_ranking(want: list[tuple[str, float]], have: list[tuple[str, float]]) -> bool:
    """Same ids in the same order, where ties (scores within tolerance) may swap.

    A tie cut by the top-10 boundary may show different members of the tie.
    """
    if len(want) != len(have):
        return False
    if any(abs(a[1] - b[1]) > SCORE_TOLERANCE for a, b in zip(want, have, strict=True)):
        return False
    groups_want, groups_have = _tie_groups(want), _tie_groups(have)
    if not groups_want:
        return not groups_have
    # the last tie group may be cut by the top-10 boundary: any members of the tie will do
    return groups_want[:-1] == groups_have[:-1] and len(groups_want[-1]) == len(groups_have[-1])


def _tie_groups(ranking: list[tuple[str, float]]) -> list[frozenset[str]]:
    groups: list[set[str]] = []
    last: float | None = None
    for item_id, score in ranking:
        if last is None or abs(score - last) > SCORE_TOLERANCE:
            groups.append(set())
        groups[-1].add(item_id)
        last = score
    return [frozenset(g) for g in groups]


def migrate_to_database(
    store_dir: Path,
    database_url: str,
    namespace: str,
    samples: int = 20,
    blob_dir: Path | None = None,
) -> MigrationReport:
    """Copy one store's records from its SQLite file into the database at `database_url`, and
    prove it: the same counts, and the same top-10 for sample queries from the records in both.

    The SQLite file is left as it was (going back is starting without XMR_DATABASE_URL). The
    store's index snapshots are removed, as their labels are SQLite's: the next start builds
    the indexes from the database. With `blob_dir` (XMR_BLOB_DIR) the image bytes are copied
    into the store's folder there. A store whose schema holds records already is refused.
    """
    model_id, dim = _bound_model(store_dir, None, namespace)
    copy_records(store_dir, database_url, namespace, (model_id, dim), blob_dir)
    report = MigrationReport()
    before = ItemStore(store_dir, model_id, dim, IndexOptions())
    try:
        baseline = _Baseline.of(before, samples)
    finally:
        before.close()
    for snapshot in (store_dir / "index").glob("*"):
        snapshot.unlink()
    with tempfile.TemporaryDirectory() as scratch:  # indexes from the database alone
        target = IndexOptions(database_url=database_url, blob_dir=blob_dir)
        after = ItemStore(Path(scratch), model_id, dim, target, namespace)
        try:
            _compare(report, after, baseline)
        finally:
            after.close()
    return report


def copy_records(
    store_dir: Path,
    database_url: str,
    namespace: str,
    model: tuple[str, int],
    blob_dir: Path | None,
    page: int = 500,
) -> int:
    """Copy every record (metadata, text, vector, bytes' address, creation time) of the SQLite
    store in `store_dir` into the database's store `namespace`; how many were copied."""
    source = open_records(store_dir)
    target = open_records(store_dir, database_url, namespace)
    copied = 0
    try:
        if target.items.max_label() > 0:
            raise StorageError(
                f"the database already holds records for {namespace or 'default'}; "
                "migrate into an empty database"
            )
        target.items.bind_model(*model)
        label = 0
        while records := source.items.records_after(label, page):
            labels, vectors = source.log.vectors_of(np.array([r.label for r in records]), model[1])
            by_label = dict(zip(labels.tolist(), vectors, strict=True))
            writes = [
                _copied_write(record, by_label[record.label], store_dir, blob_dir, namespace)
                for record in records
                if record.label in by_label
            ]
            target.items.upsert(writes, model[0])
            copied += len(writes)
            label = records[-1].label
    finally:
        source.items.close()
        target.items.close()
    return copied


def _copied_write(
    record: Record, vector: np.ndarray, store_dir: Path, blob_dir: Path | None, namespace: str
) -> RecordWrite:
    item = NewItem.again(record, vector, None)
    if record.content_path is None or record.content_sha256 is None:
        return RecordWrite(item, vector)
    if blob_dir is not None:
        source = store_dir / "blobs" / record.content_path
        copy = blob_dir / store_key(namespace) / record.content_path
        if not copy.exists():
            write_atomic(copy, source.read_bytes())
    return RecordWrite(item, vector, StoredBlob(record.content_sha256, record.content_path))

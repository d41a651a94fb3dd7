"""The storage contracts, run against every implementation their factories know: the records
(with their sequence log and keyword index) and the blobs. A new implementation is one more
name in RECORD_STORES or BLOB_STORES, and these tests run on it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from index import ItemNotFoundError, ModelMismatchError, NewItem, parse_filter
from index.blobs import BLOB_STORES, STREAM_CHUNK, BlobStore, blob_name, open_blobs
from index.keywords import KeywordQuery
from index.records import RECORD_STORES, Records, open_records
from index.s3_blobs import MULTIPART_THRESHOLD, S3BlobStore
from index.types import RecordWrite

DIM = 4


@pytest.fixture(params=RECORD_STORES)
def database_url(request: pytest.FixtureRequest) -> str | None:
    """None: SQLite in the data directory; else the throwaway PostgreSQL cluster."""
    return request.getfixturevalue("postgres_url") if request.param == "postgresql" else None


@pytest.fixture
def records(database_url: str | None, tmp_path: Path) -> Iterator[Records]:
    """Each test on a store of its own: a fresh SQLite file, or a fresh PostgreSQL schema."""
    opened = open_records(tmp_path, database_url, namespace=f"test-{uuid.uuid4().hex}")
    opened.items.bind_model("m/1", DIM)
    try:
        yield opened
    finally:
        opened.items.close()


@pytest.fixture(params=BLOB_STORES)
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    """A folder, or a prefix of its own on a real S3 server (Ceph's RADOS Gateway)."""
    if request.param == "local":
        return open_blobs(tmp_path)
    server = request.getfixturevalue("s3_server")
    return S3BlobStore(request.getfixturevalue("s3_url"), client=server.client())


def vector(i: int) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[i % DIM] = 1.0
    return v


def text(item_id: str, i: int, words: str = "", metadata: dict | None = None) -> RecordWrite:
    return RecordWrite(NewItem.text_item(item_id, vector(i), words or item_id, metadata), vector(i))


def test_writes_are_sequenced_and_replayable(records: Records) -> None:
    first = records.items.upsert([text("a", 0), text("b", 1)], "m/1")
    second = records.items.upsert([text("a", 2)], "m/1")  # a rewrite: a new label, a tombstone
    assert second.seq == first.seq + 1 == records.log.current_seq()
    old_a = first.added["text"][0][0]
    assert second.removed["text"] == [old_a]
    assert records.log.tombstones_after("text", first.seq) == [old_a]
    labels, vectors = next(iter(records.log.vectors_after("text", first.seq, DIM)))
    assert labels.tolist() == [second.added["text"][0][0]]
    np.testing.assert_array_equal(vectors[0], vector(2))
    assert records.log.count("text") == 2 and records.log.count("image") == 0
    assert records.log.tombstones_after("text", first.seq, up_to_seq=first.seq) == []
    records.log.prune_tombstones(second.seq)
    # a log shared by several processes keeps recent deletions for those not caught up yet
    left = records.log.tombstones_after("text", first.seq)
    assert left == ([old_a] if records.shared else [])


def test_float16_and_float32_vectors_read_back_alike_even_mixed(records: Records) -> None:
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((6, DIM)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    writes = [
        RecordWrite(NewItem.text_item(f"t{n}", row, f"t{n}"), row, None, dtype)
        for n, (row, dtype) in enumerate(zip(rows, ["float16", "float32"] * 3, strict=True))
    ]
    records.items.upsert(writes[:2], "m/1")  # each chunk read back holds both kinds
    records.items.upsert(writes[2:], "m/1")
    _, vectors = next(iter(records.log.vectors_after("text", 0, DIM)))
    assert vectors.dtype == np.float32 and vectors.shape == (6, DIM)
    np.testing.assert_array_equal(vectors[1::2], rows[1::2])  # float32 as written
    halves = rows[::2].astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(vectors[::2], halves / np.linalg.norm(halves, axis=1)[:, None])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)  # unit again
    assert (np.sum(vectors * rows, axis=1) > 0.9999995).all()


def test_a_shared_log_forgets_deletions_after_its_retention(postgres_url: str) -> None:
    from index.postgres_records import TOMBSTONE_RETENTION_S, open_postgres_records

    records = open_postgres_records(postgres_url, f"test-{uuid.uuid4().hex}")
    try:
        records.items.bind_model("m/1", DIM)
        records.items.upsert([text("a", 0)], "m/1")
        deleted = records.items.delete("a")
        records.log.prune_tombstones(deleted.seq)
        assert records.log.tombstones_after("text", 0) == deleted.removed["text"]
        with records.items._db.transaction() as conn:  # type: ignore[attr-defined]
            conn.execute(
                records.items._db.q("UPDATE {s}.tombstones SET deleted_at = deleted_at - %s"),  # type: ignore[attr-defined]
                (TOMBSTONE_RETENTION_S + 1,),
            )
        records.log.prune_tombstones(deleted.seq - 1)  # not yet reflected by every index
        assert records.log.tombstones_after("text", 0) == deleted.removed["text"]
        records.log.prune_tombstones(deleted.seq)
        assert records.log.tombstones_after("text", 0) == []
    finally:
        records.items.destroy()


PHOTOS = {  # taken_at as photo_facts writes it; places in Berlin, Paris, Fiji, Taveuni (Fiji)
    "june": {
        "exif": {"taken_at": "2025-06-14T10:22:31+02:00", "gps": {"lat": 52.52, "lon": 13.405}}
    },
    "july": {"exif": {"taken_at": "2025-07-31T23:59:59", "gps": {"lat": 48.857, "lon": 2.352}}},
    "august": {
        "exif": {"taken_at": "2025-08-31T08:00:00-05:00", "gps": {"lat": -18.1, "lon": 178.4}}
    },
    "september": {
        "exif": {"taken_at": "2025-09-01T00:00:00", "gps": {"lat": -16.8, "lon": -179.9}}
    },
    "undated": {"exif": {"taken_at": 20250701, "gps": {"lat": "52.52", "lon": 13.4}}},
    "none": {},
}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"exif.taken_at": {"gte": "2025-06-01", "lt": "2025-09-01"}}, {"june", "july", "august"}),
        ({"exif.taken_at": {"gte": "2025-07-01", "lte": "2025-08-31"}}, {"july", "august"}),
        ({"exif.taken_at": {"gt": "2025-07-31"}}, {"august", "september"}),  # all of the 31st out
        ({"exif.taken_at": {"lt": "2025-07-31T23:59:59"}}, {"june"}),
        ({"exif.taken_at": {"lte": "2025-07-31T23:59:59"}}, {"june", "july"}),
        ({"exif.gps": {"near": {"lat": 52.5, "lon": 13.4, "km": 10}}}, {"june"}),
        ({"exif.gps": {"near": {"lat": 52.5, "lon": 13.4, "km": 900}}}, {"june", "july"}),
        (
            {"exif.gps": {"bbox": {"south": 40, "west": 0, "north": 60, "east": 20}}},
            {"june", "july"},
        ),
        (  # across the 180th meridian
            {"exif.gps": {"bbox": {"south": -20, "west": 170, "north": -10, "east": -170}}},
            {"august", "september"},
        ),
        (  # 50 km either side of the 180th meridian, one on each side
            {"exif.gps": {"near": {"lat": -17.5, "lon": 180, "km": 200}}},
            {"august", "september"},
        ),
    ],
)
def test_dates_and_places_filter_alike_in_every_record_store(
    records: Records, raw: dict, expected: set[str]
) -> None:
    writes = [text(name, n, metadata=meta) for n, (name, meta) in enumerate(PHOTOS.items())]
    result = records.items.upsert(writes, "m/1")
    names = {label: name for (label, _), name in zip(result.added["text"], PHOTOS, strict=True)}
    matching = records.items.labels_matching("text", parse_filter(raw))
    assert {names[label] for label in matching.tolist()} == expected


def test_indexed_fields_answer_equality_filters_through_their_index(
    records: Records, database_url: str | None
) -> None:
    writes = [
        text(f"t{n}", n, metadata={"album": f"a{n % 50}", "exif": {"camera": f"c{n % 7}"}})
        for n in range(500)
    ]
    records.items.upsert(writes, "m/1")
    where = parse_filter({"album": "a7", "exif.camera": {"in": ["c0", "c3"]}})
    before = sorted(records.items.labels_matching("text", where).tolist())
    records.items.index_fields(["album", "exif.camera"])
    records.items.index_fields(["album"])  # again: nothing changes
    assert sorted(records.items.labels_matching("text", where).tolist()) == before
    assert len(before) == 3  # a7 is n = 7, 57, ...; of those c0 or c3: 7, 157, 357
    plan = query_plan(records, database_url, {"album": "a7"})
    assert "items_field_album_" in plan, plan
    # the index is searched by the field's value, not only by kind
    assert ("<expr>=?" if database_url is None else "(metadata #> '{album}'") in plan, plan


def query_plan(records: Records, database_url: str | None, raw: dict) -> str:
    """How the store's database runs labels_matching for `raw` (sequential scans off in
    PostgreSQL: on 500 rows it would rightly prefer one)."""
    from index import postgres_records, sqlite

    if database_url is None:
        clause, params = sqlite.where_sql(parse_filter(raw))
        sql = f"EXPLAIN QUERY PLAN SELECT label FROM items WHERE kind = ? AND ({clause})"
        rows = records.items._db.rows(sql, ["text", *params])  # type: ignore[attr-defined]
        return " ".join(str(row[-1]) for row in rows)
    clause, params = postgres_records.where_sql(parse_filter(raw))
    db = records.items._db  # type: ignore[attr-defined]
    with db.pool.connection() as conn, conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        sql = f"EXPLAIN SELECT label FROM {{s}}.items WHERE kind = %s AND ({clause})"
        rows = conn.execute(db.q(sql), ["text", *params]).fetchall()
    return " ".join(str(row[0]) for row in rows)


def test_images_stored_without_bytes_are_counted(records: Records) -> None:
    imported = RecordWrite(NewItem("v", "image", vector(0), {"url": "u"}), vector(0))
    with_bytes = RecordWrite(
        NewItem.image_item("b", vector(1), b"png", "image/png"),
        vector(1),
        blob_name(b"png", "image/png"),
    )
    records.items.upsert([imported, with_bytes, text("t", 2)], "m/1")
    assert records.items.count_images_without_bytes() == 1


def test_items_are_read_by_id_label_cursor_and_filter(records: Records) -> None:
    result = records.items.upsert(
        [text("a", 0, metadata={"album": "x"}), text("b", 1, metadata={"album": "y"})], "m/1"
    )
    a, b = (label for label, _ in result.added["text"])
    assert records.items.get("a").metadata == {"album": "x"}
    assert set(records.items.get_by_labels([a, b, 10**9])) == {a, b}
    assert [r.id for r in records.items.records_after(a, 10)] == ["b"]
    assert records.items.labels_matching("text", parse_filter({"album": "y"})).tolist() == [b]
    assert records.items.count_with_field("text", "album", None) == 2
    assert records.items.max_label() == b and records.items.count_after(a) == 1
    assert records.items.all_ids() == {"a", "b"}
    found, vectors = records.log.vectors_of(np.array([b, a, 10**9]), DIM)
    assert found.tolist() == [a, b] and vectors.shape == (2, DIM)
    records.items.delete("a")
    with pytest.raises(ItemNotFoundError):
        records.items.get("a")
    with pytest.raises(ItemNotFoundError):
        records.items.delete("a")


def test_the_keyword_index_follows_every_write(records: Records) -> None:
    records.items.upsert([text("a", 0, "red fox"), text("b", 1, "blue fox")], "m/1")
    fox = KeywordQuery("fox")
    assert {label for label, _ in records.keywords.search("text", fox, 10)} == set(
        records.log.all_labels("text").tolist()
    )
    records.items.upsert([text("a", 2, "green owl")], "m/1")
    hits = records.keywords.search("text", fox, 10)
    assert [records.items.get_by_labels([label])[label].id for label, _ in hits] == ["b"]
    assert set(records.keywords.scores(fox, [hits[0][0]])) == {hits[0][0]}
    assert records.keywords.search("text", KeywordQuery("fox", exclude="blue"), 10) == []
    assert records.keywords.search("text", KeywordQuery("  "), 10) == []  # no word, no hit


def test_tags_merge_into_current_metadata_and_skip_rewritten_items(records: Records) -> None:
    result = records.items.upsert([text("a", 0, metadata={"keep": 1}), text("b", 1)], "m/1")
    a, b = (label for label, _ in result.added["text"])
    records.items.upsert([text("b", 1, metadata={"new": True})], "m/1")  # b has a new label
    written = records.items.merge_tags({a: {"tag": "cat"}, b: {"tag": "dog"}}, 1000, False)
    assert written == 1
    assert records.items.get("a").metadata == {"keep": 1, "tag": "cat"}
    assert records.items.get("b").metadata == {"new": True}
    assert records.items.merge_tags({a: {"tag": "owl"}}, 1000, False) == 0  # held already
    assert records.items.merge_tags({a: {"tag": "x" * 2000}}, 1000, True) == 0  # too large


def test_a_store_is_bound_to_one_model(records: Records, tmp_path: Path) -> None:
    assert records.items.stored_model() == ("m/1", DIM)
    with pytest.raises(ModelMismatchError):
        records.items.bind_model("m/2", DIM)


def test_a_destroyed_store_leaves_nothing_for_the_next_of_its_name(
    database_url: str | None, tmp_path: Path
) -> None:
    opened = open_records(tmp_path, database_url, namespace="shop/gen-1")
    opened.items.bind_model("m/1", DIM)
    opened.items.upsert([text("a", 0)], "m/1")
    opened.items.destroy()
    (tmp_path / "records.sqlite3").unlink(missing_ok=True)  # SQLite's file goes with its folder
    again = open_records(tmp_path, database_url, namespace="shop/gen-1")
    try:
        assert again.items.stored_model() is None and again.items.all_ids() == set()
        assert again.log.current_seq() == 0
    finally:
        again.items.destroy()


def test_an_unknown_record_store_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown record store 'mongodb'.*sqlite, postgresql"):
        open_records(tmp_path, "mongodb://localhost/xmr")


def test_blobs_are_content_addressed_and_shared(blobs: BlobStore) -> None:
    first = blobs.put(b"bytes", "image/png")
    assert first == blob_name(b"bytes", "image/png") and first.path.endswith(".png")
    assert blobs.put(b"bytes", "image/png") == first
    assert blobs.read(first.path) == b"bytes"
    assert b"".join(blobs.stream(first.path)) == b"bytes"
    other = blobs.put(b"other", "image/jpeg")
    assert blobs.remove_unreferenced({first.path}) == 1
    with pytest.raises(OSError):
        blobs.read(other.path)
    blobs.remove(first.path)
    blobs.remove(first.path)  # gone already: no error
    with pytest.raises(OSError):
        blobs.read(first.path)
    with pytest.raises(OSError):
        blobs.stream(first.path)  # at once, not when the first chunk is read


def test_large_blobs_are_streamed_in_chunks(blobs: BlobStore) -> None:
    data = np.random.default_rng(0).bytes(MULTIPART_THRESHOLD + 3 * STREAM_CHUNK + 17)
    blob = blobs.put(data, "image/png")  # S3: a multipart upload
    chunks = list(blobs.stream(blob.path))
    assert len(chunks) > 1 and max(len(c) for c in chunks) <= STREAM_CHUNK
    assert b"".join(chunks) == data


def test_the_sweep_spares_blobs_written_again_recently(blobs: BlobStore) -> None:
    old = blobs.put(b"old", "image/png")
    time.sleep(1.5)
    fresh = blobs.put(b"fresh", "image/png")
    assert blobs.remove_unreferenced(set(), older_than_s=1.0) == 1
    assert blobs.read(fresh.path) == b"fresh"
    time.sleep(1.5)
    blobs.put(b"fresh", "image/png")  # written again: its time renewed
    assert blobs.remove_unreferenced(set(), older_than_s=1.0) == 0
    with pytest.raises(OSError):
        blobs.read(old.path)


def test_a_blob_path_cannot_escape_the_store(blobs: BlobStore) -> None:
    with pytest.raises(ValueError, match="escapes"):
        blobs.read("../../etc/passwd")


def test_an_unknown_blob_store_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown blob store 'gs://b/p'.*s3://bucket/prefix"):
        open_blobs("gs://b/p")


def test_a_retired_store_refuses_writes_until_it_is_taken_back(records: Records) -> None:
    from index import GenerationRetiredError

    first = records.items.upsert([text("a", 0, metadata={"k": 1})], "m/1")
    records.items.retire()
    with pytest.raises(GenerationRetiredError):
        records.items.upsert([text("b", 1)], "m/1")
    with pytest.raises(GenerationRetiredError):
        records.items.delete("a")
    label = first.added["text"][0][0]
    with pytest.raises(GenerationRetiredError):
        records.items.merge_tags({label: {"tag": "x"}}, 10_000)
    assert records.log.current_seq() == first.seq  # nothing was written
    records.items.unretire()
    assert records.items.upsert([text("b", 1)], "m/1").seq == first.seq + 1


def test_the_shared_vector_store_mark_only_rises(records: Records) -> None:
    assert records.log.vector_store_mark() == 0
    records.log.advance_vector_store_mark(5)
    records.log.advance_vector_store_mark(3)  # a slower writer's older mark: kept at 5
    assert records.log.vector_store_mark() == 5

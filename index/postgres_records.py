"""The record contracts (index/records.py) in PostgreSQL, so that several processes share them.

Each store (a collection's generation) is one schema: its items with their vectors, sequence
numbers and keywords, its tombstones and its model binding. Every write is one transaction that
takes the next sequence number from the schema's `meta` row (a row lock, so writers from any
process are ordered) and commits with `synchronous_commit` on: a write is acknowledged only once
it is durable. Schemas are created under an advisory lock, so processes starting together do not
race.

Keywords are PostgreSQL's own full-text search: each item's text and metadata strings, cut into
the same word tokens as the SQLite store's FTS5 (`\\w+`, accents folded by `unaccent`), kept in a
`tsvector` beside the record in the same transaction, GIN-indexed, ranked by `ts_rank_cd`, not
BM25: scores differ from SQLite's, the words that match do not.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from index.errors import (
    DatabaseUnavailableError,
    GenerationRetiredError,
    ItemNotFoundError,
    ModelMismatchError,
    StorageError,
)
from index.filters import (
    EARTH_RADIUS_KM,
    RANGE_OPERATORS,
    Box,
    Condition,
    MetadataFilter,
    Near,
    field_index_name,
)
from index.keywords import KeywordQuery, searchable_text
from index.records import Records, labelled_vectors, store_key, vectors_in_pages
from index.types import KINDS, Kind, Record, RecordWrite, StoredBlob, WriteResult

_TABLES = """
CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value text NOT NULL);
INSERT INTO {s}.meta VALUES ('seq', '0') ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS {s}.items (
    label bigserial PRIMARY KEY,
    id text NOT NULL UNIQUE,
    kind text NOT NULL CHECK (kind IN ('image', 'text')),
    metadata jsonb,
    text text,
    content_path text,
    content_type text,
    content_sha256 text,
    model text NOT NULL,
    vector bytea NOT NULL,
    seq bigint NOT NULL,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    keywords tsvector NOT NULL
);
CREATE INDEX IF NOT EXISTS items_kind_seq ON {s}.items (kind, seq);
CREATE INDEX IF NOT EXISTS items_sha ON {s}.items (content_sha256);
CREATE INDEX IF NOT EXISTS items_keywords ON {s}.items USING gin (keywords);
CREATE TABLE IF NOT EXISTS {s}.tombstones (
    label bigint NOT NULL,
    kind text NOT NULL,
    seq bigint NOT NULL,
    deleted_at double precision NOT NULL DEFAULT extract(epoch FROM clock_timestamp())
);
ALTER TABLE {s}.tombstones ADD COLUMN IF NOT EXISTS
    deleted_at double precision NOT NULL DEFAULT extract(epoch FROM clock_timestamp());
CREATE INDEX IF NOT EXISTS tombstones_kind_seq ON {s}.tombstones (kind, seq);
"""
_COLUMNS = (
    "label, id, kind, metadata, text, content_path, content_type, content_sha256, model, "
    "created_at, updated_at, coalesce(octet_length(metadata::text), 0) + "
    "coalesce(octet_length(text), 0)"
)
_WORD = re.compile(r"\w+", re.UNICODE)
_SCHEMA_LOCK = 0x786D72  # "xmr": the advisory lock every schema's creation takes
# How long a deletion stays in the shared log after every index saved here reflects it: a
# process that shares the database and has not caught up yet still needs it
TOMBSTONE_RETENTION_S = 3600.0


def schema_name(namespace: str) -> str:
    """The schema of a store: readable, within PostgreSQL's 63 bytes, distinct per namespace."""
    return f"xmr_{store_key(namespace)}"


# How long a request waits for a pooled connection before the database counts as unavailable
POOL_TIMEOUT_S = 5.0
# How long opening a pool waits for its first connection
OPEN_TIMEOUT_S = 30.0
# How long one chain of reconnection attempts lasts once the pool is open. psycopg_pool doubles
# the wait between attempts for `reconnect_timeout` (5 minutes by default), so after an outage of
# T seconds its next attempt could come up to T seconds after the database is back, every request
# a 503 meanwhile. A short chain gives up soon, and the next request that has to wait starts a
# new one that tries at once: the pool serves again within a couple of seconds of the database.
RECONNECT_WINDOW_S = 5.0


def connection_pool(url: str, **kwargs: Any) -> ConnectionPool:
    """A pool of autocommit connections that commit synchronously, each checked before use (so
    that after a database restart no request gets a dead connection), not opened yet."""
    return ConnectionPool(
        url,
        min_size=1,
        max_size=4,
        kwargs={"autocommit": True, "options": "-c synchronous_commit=on", **kwargs},
        check=ConnectionPool.check_connection,
        timeout=POOL_TIMEOUT_S,
        # the first connection is tried for as long as opening waits: no request would start
        # a new chain of attempts for it
        reconnect_timeout=OPEN_TIMEOUT_S,
        open=False,
    )


def open_schema_pool(
    url: str, schema: sql.Identifier, tables: str, extensions: Sequence[str] = (), **kwargs: Any
) -> ConnectionPool:
    """An open pool (see connection_pool) over a database holding `schema` and its `tables`,
    reconnecting soon after an outage."""
    pool = connection_pool(url, **kwargs)
    try:
        pool.open(wait=True, timeout=OPEN_TIMEOUT_S)
        pool.reconnect_timeout = RECONNECT_WINDOW_S  # read by each chain of attempts as it starts
        create_schema(pool, schema, tables, extensions)
    except Exception:
        pool.close()
        raise
    return pool


def database_error(error: psycopg.OperationalError, doing: str) -> StorageError:
    """A database error as the domain's: a full disk is a StorageError, anything else that
    breaks the connection (the server down or restarting) a DatabaseUnavailableError."""
    if isinstance(error, psycopg.errors.DiskFull):
        return StorageError(f"could not {doing} PostgreSQL: {error}")
    return DatabaseUnavailableError(f"PostgreSQL is unavailable ({doing}): {_first_line(error)}")


def create_schema(
    pool: ConnectionPool, schema: sql.Identifier, tables: str, extensions: Sequence[str] = ()
) -> None:
    """Create `schema` and the `;`-separated statements of `tables` (`{s}` naming the schema)
    under one advisory lock: processes starting together create them once."""
    try:
        with pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for extension in extensions:
                conn.execute(
                    sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(extension))
                )
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
            for statement in tables.split(";"):
                if statement.strip():
                    conn.execute(sql.SQL(statement).format(s=schema))
    except psycopg.OperationalError as e:
        raise database_error(e, "create tables in") from e


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


class PostgresDatabase:
    """A connection pool and the schema of one store."""

    def __init__(self, url: str, namespace: str) -> None:
        self.name = schema_name(namespace)
        self.schema = sql.Identifier(self.name)
        self.pool = open_schema_pool(url, self.schema, _TABLES, extensions=("unaccent",))

    def q(self, text: str) -> sql.Composed:
        """`text` with `{s}` naming this store's schema."""
        return sql.SQL(text).format(s=self.schema)

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """One transaction; a database error is a StorageError (nothing of it was written)."""
        try:
            with self.pool.connection() as conn, conn.transaction():
                yield conn
        except psycopg.OperationalError as e:
            raise database_error(e, "write to") from e

    def rows(self, text: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            with self.pool.connection() as conn:
                return conn.execute(self.q(text), params).fetchall()
        except psycopg.OperationalError as e:
            raise database_error(e, "read from") from e

    def close(self) -> None:
        self.pool.close()


def open_postgres_records(url: str, namespace: str) -> Records:
    db = PostgresDatabase(url, namespace)
    return Records(
        PostgresRecordStore(db), PostgresVectorLog(db), PostgresKeywordIndex(db), shared=True
    )


class PostgresRecordStore:
    """The RecordStore contract over one store's schema."""

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db

    def close(self) -> None:
        self._db.close()

    def destroy(self) -> None:
        try:
            with self._db.transaction() as conn:
                conn.execute(self._db.q("DROP SCHEMA IF EXISTS {s} CASCADE"))
        finally:
            self._db.close()

    def bind_model(self, model_id: str, dim: int) -> None:
        with self._db.transaction() as conn:
            for key, value in (("model", model_id), ("dim", str(dim))):
                conn.execute(
                    self._db.q("INSERT INTO {s}.meta VALUES (%s, %s) ON CONFLICT DO NOTHING"),
                    (key, value),
                )
        stored = self.stored_model()
        if stored != (model_id, dim):
            raise ModelMismatchError(
                f"the records in PostgreSQL were indexed with {stored[0] if stored else '?'} "
                f"(dim {stored[1] if stored else '?'}), but the service loaded {model_id} "
                f"(dim {dim}). Start with the same XMR_MODEL/XMR_PRETRAINED, or re-index"
            )

    def stored_model(self) -> tuple[str, int] | None:
        stored = dict(self._db.rows("SELECT key, value FROM {s}.meta"))
        if "model" not in stored:
            return None
        return stored["model"], int(stored["dim"])

    # -- writes ---------------------------------------------------------------------------
    def upsert(self, writes: Sequence[RecordWrite], model_id: str) -> WriteResult:
        now = time.time()
        with self._db.transaction() as conn:
            result = WriteResult(seq=self._next_seq(conn))
            created = self._remove_existing(conn, [write.item.id for write in writes], result)
            rows = [_item_row(write, model_id, result.seq, created, now) for write in writes]
            labels = self._insert_items(conn, rows)
            for write, label in zip(writes, labels, strict=True):
                result.added[write.item.kind].append((label, write.vector))
            self._collect_released_blobs(conn, result)
        return result

    def _insert_items(
        self, conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]
    ) -> list[int]:
        """Insert item rows; their labels. A batch goes in one pipelined round trip (one row
        alone is faster without the pipeline)."""
        insert = self._db.q(_INSERT_ITEM)
        if len(rows) == 1:
            return [_one(conn.execute(insert, rows[0]).fetchone())]
        labels = []
        with conn.cursor() as cursor:
            cursor.executemany(insert, rows, returning=True)
            while True:
                labels.append(_one(cursor.fetchone()))
                if not cursor.nextset():
                    break
        return labels

    def delete(self, item_id: str) -> WriteResult:
        with self._db.transaction() as conn:
            result = WriteResult(seq=self._next_seq(conn))
            if not self._remove_existing(conn, [item_id], result):
                raise ItemNotFoundError(item_id)
            self._collect_released_blobs(conn, result)
        return result

    def retire(self) -> None:
        with self._db.transaction() as conn:
            # the seq row's lock waits out the writes under way; later ones see the mark
            conn.execute(self._db.q("SELECT value FROM {s}.meta WHERE key = 'seq' FOR UPDATE"))
            conn.execute(
                self._db.q("INSERT INTO {s}.meta VALUES ('retired', '1') ON CONFLICT DO NOTHING")
            )

    def unretire(self) -> None:
        with self._db.transaction() as conn:
            conn.execute(self._db.q("DELETE FROM {s}.meta WHERE key = 'retired'"))

    def _next_seq(self, conn: psycopg.Connection[Any]) -> int:
        """The write's sequence number; the row lock orders writers of every process."""
        row = conn.execute(
            self._db.q(
                "UPDATE {s}.meta SET value = (value::bigint + 1)::text WHERE key = 'seq' "
                "RETURNING value::bigint"
            )
        ).fetchone()
        self._check_not_retired(conn)  # read after the lock: a retirement is seen
        return _one(row)

    def _check_not_retired(self, conn: psycopg.Connection[Any]) -> None:
        retired = conn.execute(
            self._db.q("SELECT 1 FROM {s}.meta WHERE key = 'retired'")
        ).fetchone()
        if retired is not None:
            raise GenerationRetiredError("this generation was retired by a switch of model")

    def _remove_existing(
        self, conn: psycopg.Connection[Any], item_ids: list[str], result: WriteResult
    ) -> dict[str, float]:
        """Delete the stored items among `item_ids`, leaving tombstones; their creation times."""
        rows = conn.execute(
            self._db.q(
                "DELETE FROM {s}.items WHERE id = ANY(%s) "
                "RETURNING label, kind, created_at, content_sha256, content_path, id"
            ),
            (item_ids,),
        ).fetchall()
        if not rows:
            return {}
        conn.execute(
            self._db.q(
                "INSERT INTO {s}.tombstones (label, kind, seq) "
                "SELECT label, kind, %s FROM unnest(%s::bigint[], %s::text[]) AS t(label, kind)"
            ),
            (result.seq, [int(row[0]) for row in rows], [row[1] for row in rows]),
        )
        created: dict[str, float] = {}
        for label, kind, created_at, sha, path, item_id in rows:
            result.removed[kind].append(int(label))
            if sha:
                result.released_blobs.append(StoredBlob(sha, path))
            created[item_id] = float(created_at)
        return created

    def _collect_released_blobs(self, conn: psycopg.Connection[Any], result: WriteResult) -> None:
        shas = [blob.sha256 for blob in result.released_blobs]
        if not shas:
            return
        rows = conn.execute(
            self._db.q(
                "SELECT DISTINCT content_sha256 FROM {s}.items WHERE content_sha256 = ANY(%s)"
            ),
            (shas,),
        ).fetchall()
        used = {row[0] for row in rows}
        result.released_blobs = [b for b in result.released_blobs if b.sha256 not in used]

    def merge_tags(
        self, tags: dict[int, dict[str, Any]], max_bytes: int, overwrite: bool = False
    ) -> int:
        written = 0
        now = time.time()
        with self._db.transaction() as conn:
            conn.execute(self._db.q("SELECT value FROM {s}.meta WHERE key = 'seq' FOR SHARE"))
            self._check_not_retired(conn)
            for label, tag in tags.items():
                row = conn.execute(
                    self._db.q("SELECT text, metadata FROM {s}.items WHERE label = %s FOR UPDATE"),
                    (label,),
                ).fetchone()
                if row is None:
                    continue
                current = row[1] or {}
                if not overwrite and any(key in current for key in tag):
                    continue
                merged = {**current, **tag}
                if len(json.dumps(merged, ensure_ascii=False).encode()) > max_bytes:
                    continue
                conn.execute(
                    self._db.q(
                        "UPDATE {s}.items SET metadata = %s, updated_at = %s, "
                        "keywords = to_tsvector('simple', unaccent(%s)) WHERE label = %s"
                    ),
                    (Jsonb(merged), now, keyword_body(row[0], merged), label),
                )
                written += 1
        return written

    # -- reads ----------------------------------------------------------------------------
    def get(self, item_id: str) -> Record:
        rows = self._db.rows(f"SELECT {_COLUMNS} FROM {{s}}.items WHERE id = %s", (item_id,))
        if not rows:
            raise ItemNotFoundError(item_id)
        return _record(rows[0])

    def get_by_labels(self, labels: Sequence[int]) -> dict[int, Record]:
        if not len(labels):
            return {}
        rows = self._db.rows(
            f"SELECT {_COLUMNS} FROM {{s}}.items WHERE label = ANY(%s)", ([int(x) for x in labels],)
        )
        return {int(row[0]): _record(row) for row in rows}

    def ids_by_sha256(self, hashes: Sequence[str]) -> dict[str, str]:
        rows = self._db.rows(
            "SELECT content_sha256, id FROM {s}.items WHERE content_sha256 = ANY(%s)",
            (list(hashes),),
        )
        return {sha: item_id for sha, item_id in rows}

    def records_after(
        self, label: int, limit: int, kind: Kind | None = None, where: MetadataFilter | None = None
    ) -> list[Record]:
        clause, params = where_sql(where)
        kinds = list(KINDS) if kind is None else [kind]
        rows = self._db.rows(
            f"SELECT {_COLUMNS} FROM {{s}}.items WHERE label > %s AND kind = ANY(%s) "
            f"AND ({clause}) ORDER BY label LIMIT %s",
            [label, kinds, *params, limit],
        )
        return [_record(row) for row in rows]

    def labels_matching(
        self, kind: Kind, where: MetadataFilter, limit: int | None = None
    ) -> np.ndarray:
        clause, params = where_sql(where)
        rows = self._db.rows(
            f"SELECT label FROM {{s}}.items WHERE kind = %s AND ({clause}) LIMIT %s",
            [kind, *params, limit],
        )
        return np.array([row[0] for row in rows], dtype=np.int64)

    def matching_among(self, kind: Kind, where: MetadataFilter, labels: np.ndarray) -> np.ndarray:
        clause, params = where_sql(where)
        rows = self._db.rows(
            f"SELECT label FROM {{s}}.items WHERE kind = %s AND ({clause}) AND label = ANY(%s)",
            [kind, *params, [int(x) for x in labels]],
        )
        return np.array([row[0] for row in rows], dtype=np.int64)

    def count_with_field(self, kind: Kind, field: str, where: MetadataFilter | None) -> int:
        clause, params = where_sql(where)
        rows = self._db.rows(
            "SELECT count(*) FROM {s}.items WHERE kind = %s AND jsonb_exists(metadata, %s) "
            f"AND ({clause})",
            [kind, field, *params],
        )
        return int(rows[0][0])

    def count_after(self, label: int) -> int:
        return int(self._db.rows("SELECT count(*) FROM {s}.items WHERE label > %s", (label,))[0][0])

    def count_images_without_bytes(self) -> int:
        sql = "SELECT count(*) FROM {s}.items WHERE kind = 'image' AND content_path IS NULL"
        return int(self._db.rows(sql)[0][0])

    def index_fields(self, fields: Sequence[str]) -> None:
        with self._db.transaction() as conn:
            for field in fields:
                conn.execute(
                    self._db.q(
                        f"CREATE INDEX IF NOT EXISTS {field_index_name(field)} "
                        f"ON {{s}}.items (kind, {field_value_sql(field)})"
                    )
                )

    def all_ids(self) -> set[str]:
        return {row[0] for row in self._db.rows("SELECT id FROM {s}.items")}

    def max_label(self) -> int:
        return int(self._db.rows("SELECT coalesce(max(label), 0) FROM {s}.items")[0][0])

    def blob_paths(self) -> set[str]:
        rows = self._db.rows(
            "SELECT DISTINCT content_path FROM {s}.items WHERE content_path IS NOT NULL"
        )
        return {row[0] for row in rows}


class PostgresVectorLog:
    """The VectorLog contract over one store's items and tombstones."""

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db

    def vector_store_mark(self) -> int:
        rows = self._db.rows("SELECT value::bigint FROM {s}.meta WHERE key = 'vector_mark'")
        return int(rows[0][0]) if rows else 0

    def advance_vector_store_mark(self, mark: int) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                self._db.q(
                    "INSERT INTO {s}.meta VALUES ('vector_mark', %s) ON CONFLICT (key) DO UPDATE "
                    "SET value = greatest(meta.value::bigint, excluded.value::bigint)::text"
                ),
                (str(mark),),
            )

    @contextmanager
    def exclusively(self) -> Iterator[None]:
        """A transaction-scoped advisory lock on this store: released at the end, or when the
        connection of a process that died goes."""
        with self._db.transaction() as conn:
            conn.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_SCHEMA_LOCK, self._db.name)
            )
            yield

    def current_seq(self) -> int:
        return int(self._db.rows("SELECT value::bigint FROM {s}.meta WHERE key = 'seq'")[0][0])

    def count(self, kind: Kind) -> int:
        return int(self._db.rows("SELECT count(*) FROM {s}.items WHERE kind = %s", (kind,))[0][0])

    def all_labels(self, kind: Kind) -> np.ndarray:
        rows = self._db.rows("SELECT label FROM {s}.items WHERE kind = %s", (kind,))
        return np.array([row[0] for row in rows], dtype=np.int64)

    def vectors_after(
        self, kind: Kind, seq: int, dim: int, chunk: int = 10_000, up_to_seq: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        upper = up_to_seq if up_to_seq is not None else 2**62
        return vectors_in_pages(
            lambda after: self._db.rows(
                "SELECT label, vector FROM {s}.items WHERE kind = %s AND seq > %s AND seq <= %s "
                "AND label > %s ORDER BY label LIMIT %s",
                (kind, seq, upper, after, chunk),
            ),
            dim,
        )

    def vectors_of(self, labels: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
        wanted = [int(x) for x in np.unique(np.asarray(labels, dtype=np.int64))]
        rows = self._db.rows(
            "SELECT label, vector FROM {s}.items WHERE label = ANY(%s) ORDER BY label", (wanted,)
        )
        return labelled_vectors(rows, dim)

    def tombstones_after(self, kind: Kind, seq: int, up_to_seq: int | None = None) -> list[int]:
        upper = up_to_seq if up_to_seq is not None else 2**62
        rows = self._db.rows(
            "SELECT label FROM {s}.tombstones WHERE kind = %s AND seq > %s AND seq <= %s",
            (kind, seq, upper),
        )
        return [int(row[0]) for row in rows]

    def prune_tombstones(self, up_to_seq: int) -> None:
        """Only deletions older than TOMBSTONE_RETENTION_S go: the other processes sharing the
        log may not have replayed the newer ones yet (they catch up within a second)."""
        with self._db.transaction() as conn:
            conn.execute(
                self._db.q(
                    "DELETE FROM {s}.tombstones WHERE seq <= %s "
                    "AND deleted_at < extract(epoch FROM clock_timestamp()) - %s"
                ),
                (up_to_seq, TOMBSTONE_RETENTION_S),
            )


class PostgresKeywordIndex:
    """The KeywordIndex contract over the items' tsvectors, ranked by ts_rank_cd."""

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db

    def search(
        self,
        kind: Kind,
        query: KeywordQuery,
        limit: int,
        where: MetadataFilter | None = None,
        offset: int = 0,
    ) -> list[tuple[int, float]]:
        tsquery = ts_query(query)
        if tsquery is None:
            return []
        match, match_params = tsquery
        clause, params = where_sql(where)
        rows = self._db.rows(
            f"WITH query AS (SELECT {match} AS q) "
            "SELECT label, ts_rank_cd(keywords, q) AS score FROM {s}.items, query "
            f"WHERE keywords @@ q AND kind = %s AND ({clause}) "
            "ORDER BY score DESC, label LIMIT %s OFFSET %s",
            [*match_params, kind, *params, limit, offset],
        )
        return [(int(label), float(score)) for label, score in rows]

    def scores(self, query: KeywordQuery, labels: Sequence[int]) -> dict[int, float]:
        tsquery = ts_query(query)
        if tsquery is None or not len(labels):
            return {}
        match, match_params = tsquery
        rows = self._db.rows(
            f"WITH query AS (SELECT {match} AS q) "
            "SELECT label, ts_rank_cd(keywords, q) FROM {s}.items, query "
            "WHERE keywords @@ q AND label = ANY(%s)",
            [*match_params, [int(x) for x in labels]],
        )
        return {int(label): float(score) for label, score in rows}


def keyword_body(text: str | None, metadata: dict[str, Any] | None) -> str:
    """What an item's tsvector is made of: its words as FTS5's unicode61 cuts them."""
    return " ".join(_WORD.findall(searchable_text(text, metadata).lower()))


def ts_query(query: KeywordQuery) -> tuple[str, list[str]] | None:
    """A tsquery expression and its parameters: any of the wanted phrases, none of the others;
    None when nothing is wanted."""
    wanted, unwanted = query.phrases()
    if not wanted:
        return None
    phrase = "phraseto_tsquery('simple', unaccent(%s))"
    expression = "(" + " || ".join([phrase] * len(wanted)) + ")"
    if unwanted:
        expression += " && !!(" + " || ".join([phrase] * len(unwanted)) + ")"
    return f"({expression})", [*wanted, *unwanted]


def where_sql(where: MetadataFilter | None) -> tuple[str, list[Any]]:
    """A WHERE fragment over `metadata` (jsonb) and its parameters; `true` for no filter."""
    if where is None:
        return "true", []
    clauses: list[str] = []
    params: list[Any] = []
    for condition in where.conditions:
        clause, values = _condition_sql(condition)
        clauses.append(clause)
        params += values
    return " AND ".join(clauses) or "true", params


def _number_at(path: list[str]) -> tuple[str, list[Any]]:
    """The number at `path` as float8, NULL where it is not a number (CASE: a cast of a string
    would fail, and AND does not promise to test the type first)."""
    return (
        "(CASE WHEN jsonb_typeof(metadata #> %s) = 'number' THEN (metadata #> %s)::float8 END)",
        [path, path],
    )


def field_value_sql(field: str) -> str:
    """A metadata field's value, its path written out (not a parameter) so that PostgreSQL
    can use an index on the same expression (`index_fields`); braces doubled for the schema's
    format step. Field names are letters, digits, _ and - (index.filters)."""
    return "(metadata #> '{{" + ",".join(field.split(".")) + "}}')"


def _condition_sql(condition: Condition) -> tuple[str, list[Any]]:
    path = condition.field.split(".")
    column = field_value_sql(condition.field)
    if condition.op == "eq":
        return f"{column} = %s", [Jsonb(condition.value)]
    if condition.op == "in":
        return f"{column} = ANY(%s::jsonb[])", [[Jsonb(v) for v in condition.value]]
    if condition.op in ("near", "bbox"):
        lat, lat_params = _number_at([*path, "lat"])
        lon, lon_params = _number_at([*path, "lon"])
        if condition.op == "near":
            near: Near = condition.value
            # haversine, as the SQLite store's xmr_distance_km
            return (
                f"2 * {EARTH_RADIUS_KM} * asin(least(1, sqrt("
                f"power(sin(radians({lat} - %s) / 2), 2) + cos(radians({lat})) * "
                f"cos(radians(%s)) * power(sin(radians({lon} - %s) / 2), 2)))) <= %s",
                [*lat_params, near.lat, *lat_params, near.lat, *lon_params, near.lon, near.km],
            )
        box: Box = condition.value
        inside = f"{lat} BETWEEN %s AND %s AND "
        params = [*lat_params, box.south, box.north]
        if box.west <= box.east:
            return inside + f"{lon} BETWEEN %s AND %s", [*params, *lon_params, box.west, box.east]
        # across the 180th meridian
        return (
            inside + f"({lon} >= %s OR {lon} <= %s)",
            [*params, *lon_params, box.west, *lon_params, box.east],
        )
    operator = RANGE_OPERATORS[condition.op]
    if isinstance(condition.value, str):  # dates: ISO 8601 texts, compared byte by byte
        return (
            f"CASE WHEN jsonb_typeof(metadata #> %s) = 'string' "
            f'THEN (metadata #>> %s) COLLATE "C" END {operator} %s',
            [path, path, condition.value],
        )
    # only numbers take part in a numeric range, as in the SQLite store
    return (
        "CASE WHEN jsonb_typeof(metadata #> %s) = 'number' "
        f"THEN (metadata #> %s)::numeric END {operator} %s",
        [path, path, condition.value],
    )


_INSERT_ITEM = (
    "INSERT INTO {s}.items (id, kind, metadata, text, content_path, content_type, "
    "content_sha256, model, vector, seq, created_at, updated_at, keywords) VALUES (%s, %s, %s, "
    "%s, %s, %s, %s, %s, %s, %s, %s, %s, to_tsvector('simple', unaccent(%s))) RETURNING label"
)


def _item_row(
    write: RecordWrite, model_id: str, seq: int, created: dict[str, float], now: float
) -> tuple[Any, ...]:
    """The values of one item's row: a replaced item keeps its creation time."""
    item, blob = write.item, write.blob
    return (
        item.id,
        item.kind,
        None if item.metadata is None else Jsonb(item.metadata),
        item.text,
        None if blob is None else blob.path,
        item.content_type,
        None if blob is None else blob.sha256,
        model_id,
        write.vector_bytes(),
        seq,
        item.created_at or created.get(item.id) or now,
        now,
        keyword_body(item.text, item.metadata),
    )


def _one(row: tuple[Any, ...] | None) -> int:
    """The integer a RETURNING clause gave back."""
    if row is None:
        raise StorageError("PostgreSQL returned no row for a write")
    return int(row[0])


def _record(row: tuple[Any, ...]) -> Record:
    label, item_id, kind, metadata, text, path, ctype, sha, model, created, updated, size = row
    return Record(
        label=int(label),
        id=item_id,
        kind=kind,
        metadata=metadata,
        text=text,
        content_path=path,
        content_type=ctype,
        content_sha256=sha,
        model=model,
        created_at=float(created),
        updated_at=float(updated),
        payload_bytes=int(size),
    )

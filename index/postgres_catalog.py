"""The collection catalog (index/catalog.py) in PostgreSQL, read by every replica.

One row per collection holds its description as JSON; a `version` row counts the changes, in
the same transaction as each, so that a replica asks one indexed question before a search to
learn whether any collection was created, deleted or switched to another generation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from index.layout import CollectionState
from index.postgres_records import database_error, open_schema_pool

SCHEMA = "xmr_catalog"
_TABLES = """
CREATE TABLE IF NOT EXISTS {s}.collections (name text PRIMARY KEY, state jsonb NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value bigint NOT NULL);
INSERT INTO {s}.meta VALUES ('version', 0) ON CONFLICT DO NOTHING
"""


class PostgresCatalog:
    shared = True

    def __init__(self, url: str) -> None:
        self._s = sql.Identifier(SCHEMA)
        self._pool = open_schema_pool(url, self._s, _TABLES)

    def names(self) -> list[str]:
        return [row[0] for row in self._rows("SELECT name FROM {s}.collections ORDER BY name")]

    def read(self, name: str) -> CollectionState | None:
        rows = self._rows("SELECT state FROM {s}.collections WHERE name = %s", (name,))
        return CollectionState.from_json(rows[0][0]) if rows else None

    def write(self, state: CollectionState) -> None:
        with self._transaction() as conn:
            conn.execute(
                self._q(
                    "INSERT INTO {s}.collections VALUES (%s, %s) "
                    "ON CONFLICT (name) DO UPDATE SET state = excluded.state"
                ),
                (state.name, _jsonb(state)),
            )
            self._bump(conn)

    def create(self, state: CollectionState) -> CollectionState:
        with self._transaction() as conn:
            inserted = conn.execute(
                self._q("INSERT INTO {s}.collections VALUES (%s, %s) ON CONFLICT DO NOTHING"),
                (state.name, _jsonb(state)),
            ).rowcount
            if inserted:
                self._bump(conn)
                return state
            row = conn.execute(
                self._q("SELECT state FROM {s}.collections WHERE name = %s"), (state.name,)
            ).fetchone()
        return CollectionState.from_json(row[0]) if row else state

    def delete(self, name: str) -> None:
        with self._transaction() as conn:
            conn.execute(self._q("DELETE FROM {s}.collections WHERE name = %s"), (name,))
            self._bump(conn)

    def version(self) -> int:
        return int(self._rows("SELECT value FROM {s}.meta WHERE key = 'version'")[0][0])

    def close(self) -> None:
        self._pool.close()

    def _bump(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(self._q("UPDATE {s}.meta SET value = value + 1 WHERE key = 'version'"))

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(s=self._s)

    def _rows(self, text: str, params: tuple[Any, ...] = ()) -> list[Any]:
        try:
            with self._pool.connection() as conn:
                return conn.execute(self._q(text), params).fetchall()
        except psycopg.OperationalError as e:
            raise database_error(e, "read the collection catalog in") from e

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            with self._pool.connection() as conn, conn.transaction():
                yield conn
        except psycopg.OperationalError as e:
            raise database_error(e, "write the collection catalog in") from e


def _jsonb(state: CollectionState) -> Jsonb:
    return Jsonb(json.loads(state.to_json()))

"""SQLite as xmr uses it: one connection per file, WAL, full fsync, explicit transactions."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from index.errors import StorageError
from index.filters import RANGE_OPERATORS, Box, Condition, MetadataFilter, Near, Scalar, distance_km

IN_CHUNK = 5000  # values bound in one `IN (...)`: SQLite caps the number of parameters


def open_database(path: Path, schema: str) -> sqlite3.Connection:
    """Open (creating) `path` in WAL mode with synchronous=FULL: a commit survives power loss."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.create_function("xmr_distance_km", 4, distance_km, deterministic=True)
    conn.executescript(schema)
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, lock: threading.RLock) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT under `lock`, rolled back on any error.

    SQLite's operational errors (disk full, I/O errors) become StorageError.
    """
    with lock:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException as e:
            if conn.in_transaction:  # SQLite ends it by itself on some errors (SQLITE_FULL)
                conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.OperationalError):
                raise StorageError(f"could not write to {_name(conn)}: {e}") from e
            raise


def _name(conn: sqlite3.Connection) -> str:
    row = conn.execute("PRAGMA database_list").fetchone()
    return Path(row[2]).name if row and row[2] else "the database"


class SqliteDatabase:
    """One connection and the lock every statement on it takes."""

    def __init__(self, path: Path, schema: str) -> None:
        self.path = path
        self.conn = open_database(path, schema)
        self.lock = threading.RLock()

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        return transaction(self.conn, self.lock)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self.lock:
            return self.conn.execute(sql, params).fetchall()

    def rows_in(self, sql: str, values: Sequence[Any], before: Sequence[Any] = ()) -> list[Any]:
        """`sql` with `{marks}` for an IN list, run over `values` in chunks."""
        found: list[Any] = []
        for start in range(0, len(values), IN_CHUNK):
            chunk = list(values[start : start + IN_CHUNK])
            found += self.rows(sql.format(marks=",".join("?" * len(chunk))), [*before, *chunk])
        return found

    def close(self) -> None:
        with self.lock:
            self.conn.close()


def where_sql(where: MetadataFilter | None) -> tuple[str, list[Any]]:
    """A WHERE fragment over the items table's `metadata` column (SQLite's JSON functions), and
    its parameters; `1` for no filter."""
    if where is None:
        return "1", []
    clauses: list[str] = []
    params: list[Any] = []
    for condition in where.conditions:
        clause, values = _condition_sql(condition)
        clauses.append(clause)
        params += values
    return " AND ".join(clauses) or "1", params


def _json_path(field: str, *more: str) -> str:
    return "$." + ".".join(f'"{part}"' for part in (*field.split("."), *more))


def field_value_sql(field: str) -> str:
    """The SQL of a metadata field's value, its path written out (not a parameter) so that
    SQLite can use an index on the same expression (RecordStore.index_fields). Field names
    are letters, digits, _ and - (index.filters): nothing in them can end the literal."""
    return f"json_extract(metadata, '{_json_path(field)}')"


def _condition_sql(condition: Condition) -> tuple[str, list[Any]]:
    path = _json_path(condition.field)
    column = field_value_sql(condition.field)
    if condition.op == "eq":
        return f"{column} = ?", [_sql_value(condition.value)]
    if condition.op == "in":
        marks = ",".join("?" * len(condition.value))
        return f"{column} IN ({marks})", [_sql_value(v) for v in condition.value]
    if condition.op == "near":
        near: Near = condition.value
        lat, lon = _json_path(condition.field, "lat"), _json_path(condition.field, "lon")
        return (
            "xmr_distance_km(json_extract(metadata, ?), json_extract(metadata, ?), ?, ?) <= ?",
            [lat, lon, near.lat, near.lon, near.km],
        )
    if condition.op == "bbox":
        return _box_sql(condition.field, condition.value)
    # a range: json_type keeps numbers and texts apart (SQLite orders any text above any
    # number, which would make "abc" > 5 true); texts compare as dates do, character by
    # character
    kinds = "('text')" if isinstance(condition.value, str) else "('integer', 'real')"
    return (
        f"json_type(metadata, ?) IN {kinds} AND {column} {RANGE_OPERATORS[condition.op]} ?",
        [path, condition.value],
    )


def _box_sql(field: str, box: Box) -> tuple[str, list[Any]]:
    lat, lon = _json_path(field, "lat"), _json_path(field, "lon")
    value = "json_extract(metadata, ?)"
    clause = (
        f"json_type(metadata, ?) IN ('integer', 'real') "
        f"AND json_type(metadata, ?) IN ('integer', 'real') AND {value} BETWEEN ? AND ? AND "
    )
    params: list[Any] = [lat, lon, lat, box.south, box.north]
    if box.west <= box.east:
        return clause + f"{value} BETWEEN ? AND ?", [*params, lon, box.west, box.east]
    # across the 180th meridian: east of `west` or west of `east`
    return clause + f"({value} >= ? OR {value} <= ?)", [*params, lon, box.west, lon, box.east]


def _sql_value(value: Scalar) -> Scalar:
    # json_extract returns JSON true/false as 1/0
    return int(value) if isinstance(value, bool) else value

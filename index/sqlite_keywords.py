"""The keyword index in SQLite: FTS5 over `searchable_text`, rows keyed by the item's label,
ranked by BM25."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from index.filters import MetadataFilter
from index.keywords import KeywordQuery, searchable_text
from index.metadata import load_stored_metadata
from index.sqlite import SqliteDatabase, where_sql
from index.types import Kind

# unicode61 splits on anything that is not a letter or a digit: "INV-2024-88317" is the tokens
# inv, 2024, 88317, found as a phrase (below); diacritics are folded so "cafe" finds "café".
SCHEMA = """
CREATE VIRTUAL TABLE IF NOT EXISTS keywords
    USING fts5(body, tokenize = 'unicode61 remove_diacritics 2');
"""
BUILT_KEY = "keywords_built"  # in the records' meta table once every existing item is in it


def add(conn: sqlite3.Connection, label: int, text: str | None, metadata: Any) -> None:
    body = searchable_text(text, metadata)
    if body:
        conn.execute("INSERT INTO keywords (rowid, body) VALUES (?, ?)", (label, body))


def remove(conn: sqlite3.Connection, labels: Sequence[int]) -> None:
    for label in labels:
        conn.execute("DELETE FROM keywords WHERE rowid = ?", (label,))


class SqliteKeywordIndex:
    """The KeywordIndex contract over FTS5; scores are bm25() negated (higher is better)."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    def search(
        self,
        kind: Kind,
        query: KeywordQuery,
        limit: int,
        where: MetadataFilter | None = None,
        offset: int = 0,
    ) -> list[tuple[int, float]]:
        match = fts5_match(query)
        if match is None:
            return []
        clause, params = where_sql(where)
        rows = self._db.rows(
            "SELECT items.label, -bm25(keywords) AS score FROM keywords "
            "JOIN items ON items.label = keywords.rowid "
            f"WHERE keywords MATCH ? AND items.kind = ? AND ({clause}) "
            "ORDER BY score DESC, items.label LIMIT ? OFFSET ?",
            [match, kind, *params, limit, offset],
        )
        return [(int(label), float(score)) for label, score in rows]

    def scores(self, query: KeywordQuery, labels: Sequence[int]) -> dict[int, float]:
        match = fts5_match(query)
        if match is None:
            return {}
        sql = (
            "SELECT rowid, -bm25(keywords) FROM keywords "
            "WHERE keywords MATCH ? AND rowid IN ({marks})"
        )
        rows = self._db.rows_in(sql, [int(x) for x in labels], before=[match])
        return {int(label): float(score) for label, score in rows}


def build_keywords(db: SqliteDatabase) -> None:
    """Fill the keyword index from the items once (a database made before it existed)."""
    if db.rows("SELECT 1 FROM meta WHERE key = ?", (BUILT_KEY,)):
        return
    with db.transaction():
        db.conn.execute("DELETE FROM keywords")
        rows = db.conn.execute("SELECT label, text, metadata FROM items").fetchall()
        for label, text, metadata in rows:
            add(db.conn, label, text, load_stored_metadata(metadata))
        db.conn.execute("INSERT INTO meta VALUES (?, '1')", (BUILT_KEY,))


def fts5_match(query: KeywordQuery) -> str | None:
    """An FTS5 MATCH expression for `query`, or None when it has no word to look for.

    Each whitespace-separated term becomes a quoted phrase of its tokens, so punctuation inside
    a term (an invoice number, a file name) keeps its tokens in order, and nothing a user types
    is read as FTS5 syntax.
    """
    wanted, unwanted = query.phrases()
    if not wanted:
        return None
    expression = " OR ".join(_phrases(wanted))
    if unwanted:
        expression = f"({expression}) NOT ({' OR '.join(_phrases(unwanted))})"
    return expression


def _phrases(terms: list[str]) -> list[str]:
    return [f'"{term}"' for term in terms]

"""The keyword index: SQLite FTS5 over each item's text and its metadata's string values.

It lives in the records' database and is written in the same transactions, so it is exactly as
durable as the records and never disagrees with them. Rows are keyed by the item's label.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from index.filters import MetadataFilter
from index.metadata import load_stored_metadata
from index.sqlite import SqliteDatabase
from index.types import Kind

# unicode61 splits on anything that is not a letter or a digit: "INV-2024-88317" is the tokens
# inv, 2024, 88317, found as a phrase (below); diacritics are folded so "cafe" finds "café".
SCHEMA = """
CREATE VIRTUAL TABLE IF NOT EXISTS keywords
    USING fts5(body, tokenize = 'unicode61 remove_diacritics 2');
"""
BUILT_KEY = "keywords_built"  # in the records' meta table once every existing item is in it

_TOKEN = re.compile(r"\w+", re.UNICODE)
MAX_QUERY_TERMS = 64


@dataclass(frozen=True)
class KeywordQuery:
    """Words to find (any of them, ranked by BM25) and words whose items are left out."""

    include: str
    exclude: str = ""

    def match_expression(self) -> str | None:
        """An FTS5 MATCH expression, or None when the query has no word to look for.

        Each whitespace-separated term becomes a quoted phrase of its tokens, so punctuation
        inside a term (an invoice number, a file name) keeps its tokens in order, and nothing a
        user types is read as FTS5 syntax.
        """
        wanted = _phrases(self.include)
        if not wanted:
            return None
        expression = " OR ".join(wanted)
        unwanted = _phrases(self.exclude)
        if unwanted:
            expression = f"({expression}) NOT ({' OR '.join(unwanted)})"
        return expression


def _phrases(text: str) -> list[str]:
    phrases: list[str] = []
    for term in text.split():
        tokens = _TOKEN.findall(term)
        if tokens:
            phrases.append('"' + " ".join(tokens) + '"')
    return phrases[:MAX_QUERY_TERMS]


def searchable_text(text: str | None, metadata: dict[str, Any] | None) -> str:
    """What the keyword index holds for an item: its text, then every string in its metadata."""
    parts = [text] if text else []
    parts.extend(_strings(metadata))
    return "\n".join(parts)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for entry in value.values():
            yield from _strings(entry)
    elif isinstance(value, list):
        for entry in value:
            yield from _strings(entry)


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
        match: str,
        limit: int,
        where: MetadataFilter | None = None,
        offset: int = 0,
    ) -> list[tuple[int, float]]:
        clause, params = where.sql() if where is not None else ("1", [])
        rows = self._db.rows(
            "SELECT items.label, -bm25(keywords) AS score FROM keywords "
            "JOIN items ON items.label = keywords.rowid "
            f"WHERE keywords MATCH ? AND items.kind = ? AND ({clause}) "
            "ORDER BY score DESC, items.label LIMIT ? OFFSET ?",
            [match, kind, *params, limit, offset],
        )
        return [(int(label), float(score)) for label, score in rows]

    def scores(self, match: str, labels: Sequence[int]) -> dict[int, float]:
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

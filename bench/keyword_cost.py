"""Where a keyword search for a common word spends its time, on a data directory's records file
(SQLite): FTS5's BM25 over every match alone, and with the join to the items that the keyword
index runs for their kind and filter (index/sqlite_keywords.py). Best of 3 each.

    python -m bench.keyword_cost DATA_DIR/records.sqlite3 [--word 7] [--place town123]

The query is the place OR the word, as xmr asks FTS5 for "town123 7". Opened read-only.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from typing import Any

JOINED = (
    "SELECT items.label, -bm25(keywords) AS score FROM keywords "
    "JOIN items ON items.label = keywords.rowid "
    "WHERE keywords MATCH ? AND items.kind = ? ORDER BY score DESC, items.label LIMIT ?"
)
FTS_ONLY = (
    "SELECT rowid, -bm25(keywords) AS score FROM keywords WHERE keywords MATCH ? "
    "ORDER BY score DESC LIMIT ?"
)


def best_ms(db: sqlite3.Connection, sql: str, args: list[Any], runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        db.execute(sql, args).fetchall()
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("records")
    parser.add_argument("--word", default="7")
    parser.add_argument("--place", default="town123")
    parser.add_argument("--limit", type=int, default=1000, help="a hybrid search's depth")
    args = parser.parse_args()
    db = sqlite3.connect(f"file:{args.records}?mode=ro", uri=True)
    match = f'"{args.place}" OR "{args.word}"'
    count = "SELECT count(*) FROM keywords WHERE keywords MATCH ?"
    report = {
        "items_with_the_word": db.execute(count, [f'"{args.word}"']).fetchone()[0],
        "items_with_either": db.execute(count, [match]).fetchone()[0],
        "fts5_bm25_only_ms": best_ms(db, FTS_ONLY, [match, args.limit]),
        "joined_to_items_ms": best_ms(db, JOINED, [match, "image", args.limit]),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

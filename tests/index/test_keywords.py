"""The keyword index (FTS5 beside the records) and the fusion of two rankings."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from index import HybridScope, NewItem
from index.fusion import reciprocal_rank_fusion, relative_score_fusion
from index.keywords import KeywordQuery, searchable_text
from index.sqlite_keywords import fts5_match
from index.store import ItemStore

DIM = 4


def unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def ids(hits: list) -> list[str]:
    return [hit.record.id for hit in hits]


def test_searchable_text_is_the_text_and_every_string_in_the_metadata() -> None:
    metadata = {"file": "a.png", "n": 3, "tags": ["x", {"deep": "y"}], "ok": True, "none": None}
    assert searchable_text("caption", metadata).split("\n") == ["caption", "a.png", "x", "y"]
    assert searchable_text(None, None) == ""


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        ("INV-2024-88317", "", '"INV 2024 88317"'),
        ('red "chair', "", '"red" OR "chair"'),
        ("chair", "plastic wood", '("chair") NOT ("plastic" OR "wood")'),
        ("*** ---", "", None),
        ("NEAR(a b) AND", "", '"NEAR a" OR "b" OR "AND"'),
    ],
)
def test_a_keyword_query_is_quoted_phrases_never_fts5_syntax(
    include: str, exclude: str, expected: str | None
) -> None:
    assert fts5_match(KeywordQuery(include, exclude)) == expected


def test_relative_fusion_normalizes_each_list_then_weights_by_alpha() -> None:
    vector = [(1, 0.9), (2, 0.5), (3, 0.1)]
    keyword = [(3, 12.0), (4, 2.0)]
    fused = dict(relative_score_fusion(vector, keyword, alpha=0.25))
    assert fused == pytest.approx({1: 0.25, 2: 0.125, 3: 0.75, 4: 0.0})
    # one score in a list: it is that list's best
    assert relative_score_fusion([(7, 0.3)], [], 0.5) == [(7, 0.5)]


def test_reciprocal_rank_fusion_sums_weighted_reciprocal_ranks() -> None:
    fused = reciprocal_rank_fusion([(1, 0.9), (2, 0.5)], [(2, 3.0), (3, 1.0)], alpha=0.5)
    assert dict(fused) == pytest.approx({1: 0.5 / 61, 2: 0.5 / 62 + 0.5 / 61, 3: 0.5 / 62})
    assert [label for label, _ in fused] == [2, 1, 3]


def test_keyword_index_follows_writes_and_survives_reopening(tmp_path: Path) -> None:
    store = ItemStore(tmp_path, "m/1", DIM)
    store.upsert(
        [
            NewItem.text_item("a", unit(1, 0, 0, 0), "the quick brown fox"),
            NewItem.text_item("b", unit(0, 1, 0, 0), "a lazy dog", {"tag": "fox"}),
            NewItem.image_item("c", unit(0, 0, 1, 0), b"x", "image/png", {"path": "fox.png"}),
        ]
    )
    fox = KeywordQuery("fox")
    assert set(ids(store.searches.keyword("text", fox, 10))) == {"a", "b"}
    assert ids(store.searches.keyword("image", fox, 10)) == ["c"]
    store.upsert([NewItem.text_item("a", unit(1, 0, 0, 0), "a slow red cat")])
    assert ids(store.searches.keyword("text", fox, 10)) == ["b"]
    store.delete("b")
    store.close()
    with sqlite3.connect(tmp_path / "records.sqlite3") as conn:  # no row outlives its item
        rows = conn.execute("SELECT rowid FROM keywords ORDER BY rowid").fetchall()
        labels = conn.execute("SELECT label FROM items ORDER BY label").fetchall()
    assert rows == labels and len(rows) == 2
    reopened = ItemStore(tmp_path, "m/1", DIM)
    assert ids(reopened.searches.keyword("text", fox, 10)) == []
    assert ids(reopened.searches.keyword("text", KeywordQuery("cat"), 10)) == ["a"]
    reopened.close()


def test_a_database_from_before_the_keyword_index_gets_it_built_at_open(tmp_path: Path) -> None:
    store = ItemStore(tmp_path, "m/1", DIM)
    store.upsert(
        [NewItem.text_item(f"t{i}", unit(1, i, 0, 0), f"word{i} common") for i in range(5)]
    )
    store.close()
    with sqlite3.connect(tmp_path / "records.sqlite3") as conn:  # as the release before left it
        conn.execute("DROP TABLE keywords")
        conn.execute("DELETE FROM meta WHERE key = 'keywords_built'")
    reopened = ItemStore(tmp_path, "m/1", DIM)
    assert ids(reopened.searches.keyword("text", KeywordQuery("word3"), 10)) == ["t3"]
    assert len(reopened.searches.keyword("text", KeywordQuery("common"), 10)) == 5
    reopened.close()


def test_hybrid_scores_every_hit_on_both_sides(tmp_path: Path) -> None:
    store = ItemStore(tmp_path, "m/1", DIM)
    store.upsert(
        [
            NewItem.text_item("close", unit(1, 0.1, 0, 0), "nothing to see"),
            NewItem.text_item("far", unit(-1, 0, 0.2, 0), "the word zebra"),
            NewItem.text_item("mid", unit(1, 1, 0, 0), "zebra zebra zebra"),
        ]
    )
    query = unit(1, 0, 0, 0)
    hits = store.searches.hybrid("text", query, KeywordQuery("zebra"), HybridScope(k=3, alpha=0.5))
    by_id = {hit.record.id: hit for hit in hits}
    for item_id, hit in by_id.items():
        _, stored = store.stored_vector(item_id)
        assert hit.vector_score == pytest.approx(float(stored[0] @ query), abs=1e-6)
    assert by_id["close"].keyword_score is None
    assert by_id["mid"].keyword_score > by_id["far"].keyword_score > 0  # type: ignore[operator]
    assert ids(hits) == ["mid", "close", "far"]  # mid: 0.5 x 0.85 + 0.5 x 1; close: 0.5; far: 0
    store.close()


def test_a_hybrid_page_reaches_past_an_item_deleted_while_it_ran(tmp_path: Path) -> None:
    store = ItemStore(tmp_path / "data", "m/1", DIM)
    axes = [unit(1, 0, 0, 0), unit(0, 1, 0, 0), unit(0, 0, 1, 0)]
    store.upsert([NewItem.text_item(f"t{i}", axes[i % 3], f"zebra {i}") for i in range(9)])
    scope, words, query = HybridScope(k=5, alpha=0.5), KeywordQuery("zebra"), axes[0]
    before = ids(store.searches.hybrid("text", query, words, scope))
    store.records.delete(before[0])  # the record is gone; the vector index has not followed
    after = ids(store.searches.hybrid("text", query, words, scope))
    assert len(after) == 5 and before[0] not in after
    store.close()

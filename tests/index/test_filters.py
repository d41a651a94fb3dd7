"""Metadata filters: what they accept, what they refuse (naming the part), what they match."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from index import InvalidFilterError, NewItem, parse_filter
from index.store import ItemStore

DIM = 8


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([1, 2], "filter: must be a JSON object"),
        ({"a b": 1}, "filter.a b: field names"),
        ({"year": {"gte": "2000"}}, "filter.year.gte: a date is YYYY-MM-DD"),
        ({"year": {"gte": True}}, "filter.year.gte: must be a number or an ISO 8601 date"),
        ({"d": {"lt": "2025-02-30"}}, "filter.d.lt: a date is YYYY-MM-DD"),
        ({"d": {"lt": "2025-06-01T10:00+02:00"}}, "filter.d.lt: a date is YYYY-MM-DD"),
        ({"g": {"near": {"lat": 1, "lon": 2}}}, "filter.g.near: must be an object of lat, lon, km"),
        ({"g": {"near": {"lat": 91, "lon": 2, "km": 1}}}, "filter.g.near: latitudes are -90"),
        ({"g": {"near": {"lat": 1, "lon": 2, "km": 0}}}, "filter.g.near.km: must be above 0"),
        ({"g": {"near": {"lat": "1", "lon": 2, "km": 1}}}, "filter.g.near.lat: must be a number"),
        (
            {"g": {"bbox": {"south": 10, "west": 0, "north": 5, "east": 1}}},
            "filter.g.bbox: south must not be above north",
        ),
        ({"tag": {"in": []}}, "filter.tag.in: must be a non-empty list"),
        ({"tag": {"in": ["a", {"b": 1}]}}, "filter.tag.in[1]: must be a string"),
        ({"tag": {"like": "a%"}}, "filter.tag.like: unknown operator"),
        ({"tag": {}}, "filter.tag: an empty condition"),
        ({"tag": None}, "filter.tag: must be a string, number or boolean"),
        ({"tag": [1]}, "filter.tag: must be a string, number or boolean"),
    ],
)
def test_bad_filters_name_the_bad_part(raw: object, message: str) -> None:
    with pytest.raises(InvalidFilterError) as error:
        parse_filter(raw)
    assert str(error.value).startswith(message)


@pytest.fixture
def store(tmp_path: Path) -> ItemStore:
    store = ItemStore(tmp_path / "data", "m/1", DIM)
    rng = np.random.default_rng(0)
    metadata = [
        {"album": "2024", "year": 2024, "tag": "cat", "camera": {"make": "Canon"}, "fav": True},
        {"album": "2023", "year": 2023, "tag": "dog", "camera": {"make": "Nikon"}, "fav": False},
        {"album": "2024", "year": 2024.5, "tag": "dog"},
        {"album": "old", "year": "nineteen", "tag": "cat"},
        None,
    ]
    store.upsert(
        [
            NewItem(f"i{n}", "image", rng.normal(size=DIM).astype(np.float32), meta)
            for n, meta in enumerate(metadata)
        ]
    )
    return store


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"album": "2024"}, {"i0", "i2"}),
        ({"album": "2024", "tag": "dog"}, {"i2"}),
        ({"tag": {"in": ["cat", "bird"]}}, {"i0", "i3"}),
        ({"year": {"gte": 2024}}, {"i0", "i2"}),
        ({"year": {"gt": 2023, "lt": 2024.2}}, {"i0"}),
        ({"year": {"lt": 3000}}, {"i0", "i1", "i2"}),  # the text "nineteen" is not a number
        ({"camera.make": "Nikon"}, {"i1"}),
        ({"fav": True}, {"i0"}),
        ({"fav": False}, {"i1"}),
        ({"missing": 1}, set()),
        ({}, {"i0", "i1", "i2", "i3", "i4"}),
    ],
)
def test_filters_select_by_metadata(store: ItemStore, raw: dict, expected: set[str]) -> None:
    hits = store.searches.vector("image", np.ones((1, DIM), np.float32), 10, parse_filter(raw))[0]
    assert {h.record.id for h in hits} == expected

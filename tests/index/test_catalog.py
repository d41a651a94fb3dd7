"""The collection catalog contract, on every implementation: collection.json files, and
PostgreSQL shared by replicas."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from index.catalog import CollectionCatalog, open_catalog
from index.layout import Generation, ModelSpec, new_state


@pytest.fixture(params=["folder", "postgresql"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CollectionCatalog]:
    url = request.getfixturevalue("postgres_database") if request.param == "postgresql" else None
    opened = open_catalog(tmp_path, url)
    try:
        yield opened
    finally:
        opened.close()


def generation(dir: str, model: str) -> Generation:
    return Generation(dir, ModelSpec(model), f"{model}/x", 4)


def test_descriptions_are_created_once_written_read_and_deleted(
    catalog: CollectionCatalog,
) -> None:
    first = catalog.version()
    docs = new_state("docs", generation("", "a"))
    assert catalog.create(docs) == docs
    other = new_state("docs", generation("", "b"))
    assert catalog.create(other) == docs  # the first description holds
    assert catalog.names() == ["docs"] and catalog.read("missing") is None
    switching = docs.__class__(
        "docs", docs.current, generation("gen-1", "b"), "job", docs.created_at
    )
    catalog.write(switching)
    assert catalog.read("docs") == switching
    assert catalog.version() != first
    before_delete = catalog.version()
    catalog.delete("docs")
    assert catalog.read("docs") is None and catalog.names() == []
    assert catalog.version() != before_delete


def test_a_shared_catalog_is_seen_by_every_process(
    catalog: CollectionCatalog, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if not catalog.shared:
        pytest.skip("one process reads collection.json files")
    other = open_catalog(tmp_path / "elsewhere", request.getfixturevalue("postgres_database"))
    try:
        seen = other.version()
        catalog.create(new_state("shop", generation("", "a")))
        assert other.version() != seen and other.names() == ["shop"]
    finally:
        other.close()

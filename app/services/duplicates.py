"""Near-duplicate groups among a collection's stored items: the query, its page, the scan.
A small collection is scanned inline (app.services.search); a large one in a job
(app.jobs.duplicates)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from app.services.errors import InvalidInputError
from app.services.threads import run_in
from index import Kind, MetadataFilter, parse_filter
from index.duplicates import DuplicateGroup

if TYPE_CHECKING:
    from index.store import ItemStore

MAX_DUPLICATE_GROUPS_PAGE = 10_000
MIN_DUPLICATE_THRESHOLD = 0.5  # below it nearly every pair is a "duplicate": n² work for nothing


@dataclass(frozen=True)
class DuplicatesQuery:
    """Which groups to find (`target` items with cosine >= `threshold`) and which page."""

    target: Kind
    threshold: float
    filter: dict[str, Any] | None = None
    limit: int = 100
    offset: int = 0

    def __post_init__(self) -> None:
        if not MIN_DUPLICATE_THRESHOLD <= self.threshold <= 1.0:
            raise InvalidInputError(
                f"threshold must be between {MIN_DUPLICATE_THRESHOLD} and 1 (a cosine)"
            )
        if not 1 <= self.limit <= MAX_DUPLICATE_GROUPS_PAGE:
            raise InvalidInputError(f"limit must be between 1 and {MAX_DUPLICATE_GROUPS_PAGE}")
        if self.offset < 0:
            raise InvalidInputError("offset must not be negative")

    @property
    def where(self) -> MetadataFilter | None:
        return None if self.filter is None else parse_filter(self.filter)

    def params(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DuplicatesPage:
    groups: list[DuplicateGroup]  # the page asked for, largest groups first
    total_groups: int

    def as_json(self) -> dict[str, Any]:
        return {
            "groups": [{"ids": g.ids, "min_score": g.min_score} for g in self.groups],
            "total_groups": self.total_groups,
        }


async def find_duplicates(
    store: ItemStore,
    pool: Executor,
    query: DuplicatesQuery,
    on_progress: Callable[[int, int], None] | None = None,
) -> DuplicatesPage:
    groups = await run_in(
        pool, store.duplicates.groups, query.target, query.threshold, query.where, on_progress
    )
    return DuplicatesPage(groups[query.offset : query.offset + query.limit], len(groups))

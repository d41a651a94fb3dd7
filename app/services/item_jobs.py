"""Work over the stored items of a collection: near-duplicate groups, and tagging by zero-shot
labels. Both run inline for a small request or as a background job (app.services.jobs)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from typing import Any

from app.services.classify import ClassifyService, check_labels
from app.services.errors import FieldInUseError, InvalidInputError
from app.services.items import ItemService
from app.services.threads import run_in
from index import ItemStore, Kind, MetadataFilter, parse_filter
from index.duplicates import DuplicateGroup

TAG_BATCH = 256  # stored items labelled and written per step of a tagging job
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
        pool, store.duplicate_groups, query.target, query.threshold, query.where, on_progress
    )
    return DuplicatesPage(groups[query.offset : query.offset + query.limit], len(groups))


@dataclass(frozen=True)
class TagRequest:
    """Write each matching item's best label (and its probability) into its metadata."""

    labels: list[str]
    field: str
    template: str | None = None
    filter: dict[str, Any] | None = None
    target: Kind = "image"
    overwrite: bool = False  # replace the field where items have it (else they keep theirs)

    def __post_init__(self) -> None:
        check_labels(self.labels, self.template)
        if not self.field or len(self.field) > 64 or "." in self.field:
            raise InvalidInputError("the metadata field must be 1 to 64 characters, without '.'")
        if self.filter is not None:
            parse_filter(self.filter)

    @property
    def where(self) -> MetadataFilter | None:
        return None if self.filter is None else parse_filter(self.filter)

    @property
    def probability_field(self) -> str:
        return f"{self.field}_probability"

    def params(self) -> dict[str, Any]:
        return asdict(self)


async def check_tag_field(items: ItemService, request: TagRequest) -> None:
    """Refuse to tag into a key some of the items hold already, unless asked to overwrite."""
    if request.overwrite:
        return
    holding = await items.count_with_field(request.target, request.field, request.where)
    if holding:
        raise FieldInUseError(
            f"{holding} of the items to tag have a metadata field {request.field!r} already; "
            'send "overwrite": true to replace it, or choose another field'
        )


async def items_to_tag(
    store: ItemStore, pool: Executor, request: TagRequest, after_label: int, up_to_label: int
) -> int:
    """How many items a tagging job has left between its cursor and its last label."""
    up_to = await run_in(pool, store.count_matching, request.target, request.where, up_to_label)
    done = await run_in(pool, store.count_matching, request.target, request.where, after_label)
    return up_to - done


async def tag_next(
    store: ItemStore,
    classify: ClassifyService,
    pool: Executor,
    request: TagRequest,
    after_label: int,
    up_to_label: int,
    max_metadata_bytes: int,
) -> tuple[int, int] | None:
    """Tag the next batch of items after `after_label` (up to `up_to_label`: items rewritten
    since the job started are not seen twice). (last label done, items tagged), or None at the
    end.

    Each tag is merged into the item's metadata as it is when written, and only if the item is
    still the one classified (same label): a client's write during the job is never undone.
    """
    records = await run_in(
        pool, store.records_after, after_label, TAG_BATCH, request.target, request.where
    )
    records = [r for r in records if r.label <= up_to_label]
    if not records:
        return None
    labels, vectors = await run_in(pool, store.vectors_of_records, records)
    ranked = await classify.rank(vectors, request.labels, request.template)
    tags = {
        int(label): {
            request.field: row[0].label,
            request.probability_field: row[0].probability,
        }
        for label, row in zip(labels, ranked, strict=True)
    }
    tagged = await run_in(pool, store.merge_tags, tags, max_metadata_bytes, request.overwrite)
    return records[-1].label, tagged

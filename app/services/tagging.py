"""Tagging stored items by zero-shot labels: the request, its checks, and one step of the
work, which a job (app.jobs.tagging) repeats from its cursor."""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from app.services.classify import ClassifyService, check_labels
from app.services.errors import FieldInUseError, InvalidInputError
from app.services.items import ItemService
from app.services.threads import run_in
from index import Kind, MetadataFilter, parse_filter

if TYPE_CHECKING:
    from index.store import ItemStore

TAG_BATCH = 256  # stored items labelled and written per step of a tagging job


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
        pool, store.records.records_after, after_label, TAG_BATCH, request.target, request.where
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

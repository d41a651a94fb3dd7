"""Batch intake: check a batch request's items and stage its uploads before a job is queued.

Nothing is queued unless every item passes (a bad path or id rejects the whole request); the
uploaded images are written to the job's staging folder and synced once. A request of vectors
made elsewhere stages them the same way: checked, normalized, one float32 row an item.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from app.jobs.import_files import check_import_path
from app.jobs.ledger import JobItem
from app.jobs.staging import StagedBlob, StagingWriter
from app.services.errors import ImportPathError, InvalidInputError
from app.services.items import check_item_input, new_item_id
from index import Kind, excerpt
from index.types import unit_rows


@dataclass(frozen=True)
class BatchEntry:
    """One item of a batch request: exactly one of text, image_base64, image_path or upload."""

    id: str | None = None
    metadata: dict[str, Any] | None = None
    text: str | None = None
    image_base64: str | None = None
    image_path: str | None = None
    upload: BinaryIO | None = None


def stage_batch(
    staging: StagingWriter,
    entries: Sequence[BatchEntry],
    import_root: Path | None,
    max_metadata_bytes: int,
) -> list[JobItem]:
    """Check every item and stage the uploaded images with `staging`, made durable once for
    the job (synced, or uploaded)."""
    seen: set[str] = set()
    prepared: list[JobItem] = []
    try:
        for position, entry in enumerate(entries):
            image = entry.text is None
            where = f"items[{position}]"
            check_item_input(entry.id, entry.metadata, where, max_metadata_bytes, image)
            item_id = entry.id if entry.id is not None else new_item_id()
            if item_id in seen:
                raise InvalidInputError(f"items[{position}]: id {excerpt(item_id)} appears twice")
            seen.add(item_id)
            prepared.append(_job_item(staging, import_root, position, item_id, entry))
        staging.commit()
    except BaseException:
        staging.discard()
        raise
    return prepared


@dataclass(frozen=True)
class VectorEntry:
    """One item of a vectors request; its vector is the request's row at the same position."""

    id: str
    kind: Kind = "image"
    text: str | None = None
    metadata: dict[str, Any] | None = None


def stage_vectors(
    staging: StagingWriter,
    vectors: np.ndarray,
    entries: Sequence[VectorEntry],
    dim: int,
    max_metadata_bytes: int,
) -> list[JobItem]:
    """Check every item and its vector (the collection's dimension, finite, not zero), stage
    the normalized rows as one float32 block, made durable once for the job."""
    _check_matrix(vectors, len(entries), dim)
    unit, bad = unit_rows(vectors)
    if bad:
        row = min(bad)
        raise InvalidInputError(f"vectors[{row}]: {bad[row]}")
    seen: set[str] = set()
    for position, entry in enumerate(entries):
        where = f"items[{position}]"
        check_item_input(entry.id, entry.metadata, where, max_metadata_bytes, entry.kind == "image")
        if entry.id in seen:
            raise InvalidInputError(f"{where}: id {excerpt(entry.id)} appears twice")
        seen.add(entry.id)
        if entry.kind == "text" and not (entry.text or "").strip():
            raise InvalidInputError(f"{where}: a text item needs its text")
        if entry.kind == "image" and entry.text is not None:
            raise InvalidInputError(f'{where}: an image item has no text (kind "text" has)')
    row_bytes = dim * 4
    try:
        block = staging.add(unit.tobytes())
        staging.commit()
    except BaseException:
        staging.discard()
        raise
    return [
        JobItem(
            position=position,
            item_id=entry.id,
            kind=entry.kind,
            text=entry.text,
            metadata=entry.metadata,
            source=block.path,
            staged=True,
            offset=block.offset + position * row_bytes,
            length=row_bytes,
        )
        for position, entry in enumerate(entries)
    ]


def _check_matrix(vectors: np.ndarray, rows: int, dim: int) -> None:
    if vectors.dtype.kind != "f" or vectors.ndim != 2:
        raise InvalidInputError(
            f"vectors must be a 2-d array of floats, not {vectors.ndim}-d {vectors.dtype}"
        )
    if len(vectors) != rows:
        raise InvalidInputError(f"{len(vectors)} vectors for {rows} items: one each")
    if vectors.shape[1] != dim:
        raise InvalidInputError(
            f"the vectors have {vectors.shape[1]} dimensions, the collection's model {dim}"
        )


def _job_item(
    staging: StagingWriter,
    import_root: Path | None,
    position: int,
    item_id: str,
    entry: BatchEntry,
) -> JobItem:
    common: dict[str, Any] = {
        "position": position,
        "item_id": item_id,
        "metadata": entry.metadata,
    }
    if entry.text is not None:
        if not entry.text.strip():
            raise InvalidInputError(f"items[{position}]: text is empty")
        return JobItem(kind="text", text=entry.text, **common)
    if entry.image_path is not None:
        try:
            relative = check_import_path(import_root, entry.image_path)
        except ImportPathError as e:
            raise ImportPathError(f"items[{position}]: {e}") from e
        return JobItem(kind="image", source=relative, **common)
    if entry.upload is not None:
        return _staged_item(staging.add(entry.upload), common)
    if entry.image_base64 is not None:
        try:
            data = base64.b64decode(entry.image_base64, validate=True)
        except (binascii.Error, ValueError):
            return JobItem(
                kind="image",
                status="failed",
                error="image_base64 is not valid base64",
                **common,
            )
        return _staged_item(staging.add(data), common)
    raise InvalidInputError(f"items[{position}] needs one of text, image_base64 or image_path")


def _staged_item(blob: StagedBlob, common: dict[str, Any]) -> JobItem:
    return JobItem(
        kind="image",
        source=blob.path,
        staged=True,
        offset=blob.offset,
        length=blob.length,
        **common,
    )

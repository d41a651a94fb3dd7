"""`xmr import-embeddings`: vectors made elsewhere (clip-retrieval's output, or npy + parquet)
into a collection of a stopped server's data directory, without sending a single original
through the encoder.

Each row becomes an image item named by its path or URL, with the row's other columns as its
metadata and no stored bytes (xmr did not see the image: such items cannot be embedded again by
another model, and a re-embedding of their collection refuses). A caption embedded beside it
becomes a text item `<id>#0` linked by `image_id`. Vectors are checked (the collection's
dimension, finite, not zero) and normalized on the way in; a row that fails is reported and
skipped. Items are written by id, so importing twice stores each once, and an import cut short
is finished by running it again. `verify` first re-embeds a sample whose originals can be read
under XMR_IMPORT_ROOT and refuses a folder whose vectors another model made.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from index import NewItem
from index.types import unit_rows
from index.store import ItemStore
from xmr.embedding_files import EmbeddingChunk, Layout, read_embeddings

DEFAULT_MIN_COSINE = 0.98  # the same model in fp16 elsewhere scores above 0.99
CAPTION_SUFFIX = "#0"


class ImportRefusedError(Exception):
    """Nothing was imported: the folder does not fit the collection (the message says why)."""


@dataclass(frozen=True)
class Verification:
    """Cosines between the folder's vectors and the collection model's, for a sample."""

    checked: int
    lowest: float
    median: float


@dataclass
class ImportReport:
    images: int = 0
    texts: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    verification: Verification | None = None


def import_embeddings(
    folder: Path,
    store: ItemStore,
    encoder: Any,
    layout: Layout | None = None,
    id_column: str | None = None,
    verify: int = 0,
    import_root: Path | None = None,
    min_cosine: float = DEFAULT_MIN_COSINE,
    chunk: int = 4096,
) -> ImportReport:
    """Write the folder's rows into `store`, whose model is `encoder`'s."""
    started = time.perf_counter()
    report = ImportReport()
    chunks = read_embeddings(folder, layout, id_column, chunk)
    if verify:
        report.verification = verify_sample(
            read_embeddings(folder, layout, id_column, chunk), encoder, verify, import_root
        )
        if report.verification.lowest < min_cosine:
            raise ImportRefusedError(
                f"the folder's vectors are not this collection's model's: their cosine to "
                f"{encoder.model_id}'s own embedding of the same images is as low as "
                f"{report.verification.lowest:.4f} (median {report.verification.median:.4f}, "
                f"{report.verification.checked} images; at least {min_cosine} is needed)"
            )
    for part in chunks:
        _check_dimension(part, store.dim)
        images, texts = items_of(part, report.failed)
        store.upsert(images + texts)
        report.images += len(images)
        report.texts += len(texts)
    report.seconds = time.perf_counter() - started
    return report


def items_of(
    part: EmbeddingChunk, failed: list[tuple[str, str]]
) -> tuple[list[NewItem], list[NewItem]]:
    """The chunk's image items (and caption items), its bad rows added to `failed`."""
    vectors, bad = unit_rows(part.vectors)
    caption_vectors, bad_captions = (
        unit_rows(part.caption_vectors) if part.caption_vectors is not None else (None, set())
    )
    images: list[NewItem] = []
    texts: list[NewItem] = []
    seen: set[str] = set()
    for row, item_id in enumerate(part.ids):
        if row in bad:
            failed.append((item_id, bad[row]))
            continue
        if item_id in seen:
            failed.append((item_id, "the id appears twice in the folder"))
            continue
        seen.add(item_id)
        images.append(NewItem(item_id, "image", vectors[row], part.metadata[row] or None))
        caption = part.captions[row]
        if caption is not None and caption_vectors is not None and row not in bad_captions:
            texts.append(
                NewItem.text_item(
                    item_id + CAPTION_SUFFIX, caption_vectors[row], caption, {"image_id": item_id}
                )
            )
    return images, texts


def _check_dimension(part: EmbeddingChunk, dim: int) -> None:
    for name, vectors in (("image", part.vectors), ("caption", part.caption_vectors)):
        if vectors is not None and vectors.shape[1] != dim:
            raise ImportRefusedError(
                f"the folder's {name} vectors have {vectors.shape[1]} dimensions, the "
                f"collection's model {dim}"
            )


def verify_sample(
    chunks: Iterator[EmbeddingChunk], encoder: Any, count: int, import_root: Path | None
) -> Verification:
    """Re-embed up to `count` images whose files are under `import_root`; compare."""
    from app.jobs.import_files import read_import_file
    from app.services.errors import InvalidInputError
    from models import ImageDecodeError, decode_image

    if import_root is None:
        raise ImportRefusedError("--verify reads the originals under XMR_IMPORT_ROOT: set it")
    cosines: list[float] = []
    for item_id, vector in islice(_rows(chunks), 100 * count):
        relative = _under(import_root, item_id)
        if relative is None:
            continue
        try:
            image = decode_image(read_import_file(import_root, relative, 256 * 2**20))
        except (InvalidInputError, ImageDecodeError):
            continue
        ours = encoder.encode_prepared([encoder.prepare_image(image)])[0]
        unit, bad = unit_rows(vector[None, :].astype(np.float32))
        if bad or unit.shape[1] != ours.shape[0]:
            continue
        cosines.append(float(unit[0] @ ours))
        if len(cosines) == count:
            break
    if not cosines:
        raise ImportRefusedError(
            "--verify found no original to embed again: the ids must be paths under "
            "XMR_IMPORT_ROOT (absolute, or relative to it)"
        )
    return Verification(len(cosines), min(cosines), statistics.median(cosines))


def _rows(chunks: Iterator[EmbeddingChunk]) -> Iterator[tuple[str, np.ndarray]]:
    for part in chunks:
        yield from zip(part.ids, part.vectors, strict=True)


def _under(root: Path, path: str) -> str | None:
    """`path` relative to `root`, if it is a local path there."""
    if "://" in path:
        return None
    candidate = Path(path)
    if not candidate.is_absolute():
        return candidate.as_posix()
    try:
        return candidate.relative_to(root.resolve()).as_posix()
    except ValueError:
        try:
            return candidate.relative_to(root).as_posix()
        except ValueError:
            return None

"""`xmr import-embeddings`: vectors made elsewhere (clip-retrieval's output, or npy + parquet)
into a collection, without sending a single original through the encoder: through a running
server's `POST .../vectors` (a job a chunk), or into a stopped server's data directory.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from index import NewItem
from index.store import ItemStore
from index.types import unit_rows
from xmr.client import XmrClient, XmrError
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
    if verify:
        embed = local_embedder(encoder)
        check = read_embeddings(folder, layout, id_column, chunk)
        report.verification = _verified(check, embed, verify, import_root, min_cosine, encoder)
    with store.bulk_load():  # the indexes are built once, at the end, on every core
        for part in read_embeddings(folder, layout, id_column, chunk):
            _check_dimension(part, store.dim)
            images, texts = items_of(part, report.failed)
            store.upsert(images + texts)
            report.images += len(images)
            report.texts += len(texts)
    report.seconds = time.perf_counter() - started
    return report


def import_through_server(
    folder: Path,
    client: XmrClient,
    layout: Layout | None = None,
    id_column: str | None = None,
    verify: int = 0,
    import_root: Path | None = None,
    min_cosine: float = DEFAULT_MIN_COSINE,
    chunk: int = 10_000,
) -> ImportReport:
    """Send the folder's rows to a running server's `POST .../vectors`, a job a chunk (the next
    chunk is read and sent while the server stores the one before)."""
    started = time.perf_counter()
    report = ImportReport()
    if verify:
        embed = _server_embedder(client)
        check = read_embeddings(folder, layout, id_column, chunk)
        model = "the collection's model"
        report.verification = _verified(check, embed, verify, import_root, min_cosine, model)
    waiting: tuple[str, int, int] | None = None  # (job id, images, texts)
    for part in read_embeddings(folder, layout, id_column, chunk):
        images, texts = items_of(part, report.failed)
        job_id = client.submit_vectors(*_request_of(images + texts))
        if waiting is not None:
            _finish(client, waiting, report)
        waiting = (job_id, len(images), len(texts))
    if waiting is not None:
        _finish(client, waiting, report)
    report.seconds = time.perf_counter() - started
    return report


def _verified(
    chunks: Iterator[EmbeddingChunk],
    embed: Callable[[bytes], np.ndarray],
    count: int,
    import_root: Path | None,
    min_cosine: float,
    model: Any,
) -> Verification:
    """The sample's cosines, or ImportRefusedError when they say another model made them."""
    verification = verify_sample(chunks, embed, count, import_root)
    if verification.lowest < min_cosine:
        name = getattr(model, "model_id", model)
        raise ImportRefusedError(
            f"the folder's vectors are not this collection's model's: their cosine to "
            f"{name}'s own embedding of the same images is as low as "
            f"{verification.lowest:.4f} (median {verification.median:.4f}, "
            f"{verification.checked} images; at least {min_cosine} is needed)"
        )
    return verification


def _server_embedder(client: XmrClient) -> Callable[[bytes], np.ndarray]:
    def embed(data: bytes) -> np.ndarray:
        try:
            return np.asarray(client.embed_images([data])[0], dtype=np.float32)
        except XmrError as e:
            if e.status in (413, 415, 422):  # not an image the server can read: skipped
                from models import ImageDecodeError

                raise ImageDecodeError(e.detail) from e
            raise

    return embed


def _request_of(items: list[NewItem]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The rows and fields of a `POST .../vectors` request."""
    fields: list[dict[str, Any]] = []
    for item in items:
        entry: dict[str, Any] = {"id": item.id, "kind": item.kind}
        if item.text is not None:
            entry["text"] = item.text
        if item.metadata:
            entry["metadata"] = item.metadata
        fields.append(entry)
    return np.stack([item.vector for item in items]), fields


def _finish(client: XmrClient, job: tuple[str, int, int], report: ImportReport) -> None:
    job_id, images, texts = job
    state = client.wait_for_job(job_id)
    if state["status"] != "done":
        raise ImportRefusedError(f"job {job_id} ended {state['status']}: {state.get('error')}")
    for error in state.get("errors", []):
        report.failed.append((error["id"], error["error"]))
    failed = {error["id"] for error in state.get("errors", [])}
    report.images += images - sum(1 for i in failed if not i.endswith(CAPTION_SUFFIX))
    report.texts += texts - sum(1 for i in failed if i.endswith(CAPTION_SUFFIX))


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


def local_embedder(encoder: Any) -> Callable[[bytes], np.ndarray]:
    """Embed an original's bytes with `encoder` in this process."""
    from models import decode_image

    def embed(data: bytes) -> np.ndarray:
        image = decode_image(data)
        return np.asarray(encoder.encode_prepared([encoder.prepare_image(image)])[0])

    return embed


def verify_sample(
    chunks: Iterator[EmbeddingChunk],
    embed: Callable[[bytes], np.ndarray],
    count: int,
    import_root: Path | None,
) -> Verification:
    """Re-embed up to `count` images whose files are under `import_root`; compare."""
    from app.jobs.import_files import read_import_file
    from app.services.errors import InvalidInputError
    from models import ImageDecodeError

    if import_root is None:
        raise ImportRefusedError("--verify reads the originals under XMR_IMPORT_ROOT: set it")
    cosines: list[float] = []
    for item_id, vector in islice(_rows(chunks), 100 * count):
        relative = _under(import_root, item_id)
        if relative is None:
            continue
        try:
            ours = embed(read_import_file(import_root, relative, 256 * 2**20))
        except (InvalidInputError, ImageDecodeError):
            continue
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

"""Reading embeddings made elsewhere, in chunks, whatever the folder's size.

Two layouts. clip-retrieval's (`clip-retrieval inference` writes it): `img_emb/img_emb_N.npy`,
`text_emb/text_emb_N.npy` (when it embedded captions) and `metadata/metadata_N.parquet`, shard
N's rows in the same order in each; and a plain one: `vectors.npy` with `metadata.parquet`
beside it, row by row. Vectors may be float16 or float32. The arrays are memory-mapped and the
parquet files read a row group at a time, so memory stays bounded by the chunk.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

Layout = Literal["clip-retrieval", "npy"]
ID_COLUMNS = ("image_path", "url", "id")  # the first present names the items, unless told
CAPTION_COLUMN = "caption"
_SHARD = re.compile(r"_(\d+)\.(npy|parquet)$")


class EmbeddingFilesError(Exception):
    """The folder is not in the layout asked for, or its files do not agree."""


@dataclass(frozen=True)
class EmbeddingChunk:
    """Consecutive rows: ids, image vectors (n, dim) float32, each row's metadata, and its
    caption with the caption's vector where the folder has them."""

    ids: list[str]
    vectors: np.ndarray
    metadata: list[dict[str, Any]]
    captions: list[str | None]
    caption_vectors: np.ndarray | None = None


def detect_layout(folder: Path) -> Layout:
    if (folder / "img_emb").is_dir():
        return "clip-retrieval"
    if (folder / "vectors.npy").is_file():
        return "npy"
    raise EmbeddingFilesError(
        f"{folder} holds neither img_emb/ (clip-retrieval) nor vectors.npy (+ metadata.parquet)"
    )


def read_embeddings(
    folder: Path, layout: Layout | None = None, id_column: str | None = None, chunk: int = 4096
) -> Iterator[EmbeddingChunk]:
    """The folder's rows in order, `chunk` at a time."""
    layout = layout or detect_layout(folder)
    for image_file, text_file, metadata_file in _shards(folder, layout):
        images = np.load(image_file, mmap_mode="r")
        texts = np.load(text_file, mmap_mode="r") if text_file is not None else None
        yield from _chunks_of(images, texts, metadata_file, id_column, chunk)


def _shards(folder: Path, layout: Layout) -> list[tuple[Path, Path | None, Path]]:
    if layout == "npy":
        metadata = folder / "metadata.parquet"
        if not (folder / "vectors.npy").is_file() or not metadata.is_file():
            raise EmbeddingFilesError(f"{folder} needs vectors.npy and metadata.parquet")
        return [(folder / "vectors.npy", None, metadata)]
    images = _numbered(folder / "img_emb", "img_emb_*.npy")
    if not images:
        raise EmbeddingFilesError(f"{folder / 'img_emb'} holds no img_emb_N.npy")
    shards = []
    for number, image_file in images.items():
        metadata = folder / "metadata" / f"metadata_{number}.parquet"
        if not metadata.is_file():
            raise EmbeddingFilesError(f"{image_file.name} has no {metadata.name} beside it")
        text = folder / "text_emb" / f"text_emb_{number}.npy"
        shards.append((image_file, text if text.is_file() else None, metadata))
    return shards


def _numbered(folder: Path, pattern: str) -> dict[int, Path]:
    """Shard files by their number, in numeric order (img_emb_10 after img_emb_9)."""
    found = {}
    for path in folder.glob(pattern):
        match = _SHARD.search(path.name)
        if match is not None:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def _chunks_of(
    images: np.ndarray,
    texts: np.ndarray | None,
    metadata_file: Path,
    id_column: str | None,
    chunk: int,
) -> Iterator[EmbeddingChunk]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(metadata_file)
    rows = parquet.metadata.num_rows
    if images.ndim != 2 or len(images) != rows or (texts is not None and len(texts) != rows):
        raise EmbeddingFilesError(
            f"{metadata_file.name} has {rows} rows, its vectors {images.shape[0]}: they must agree"
        )
    column = _id_column(parquet.schema_arrow.names, id_column, metadata_file)
    start = 0
    for batch in parquet.iter_batches(batch_size=chunk):
        records = batch.to_pylist()
        end = start + len(records)
        yield EmbeddingChunk(
            ids=[str(record[column]) for record in records],
            vectors=np.asarray(images[start:end], dtype=np.float32),
            metadata=[_metadata(record) for record in records],
            captions=[_caption(record) for record in records],
            caption_vectors=None if texts is None else np.asarray(texts[start:end], np.float32),
        )
        start = end


def _id_column(names: list[str], wanted: str | None, where: Path) -> str:
    if wanted is not None:
        if wanted not in names:
            raise EmbeddingFilesError(f"{where.name} has no column {wanted!r} (--id-column)")
        return wanted
    for name in ID_COLUMNS:
        if name in names:
            return name
    raise EmbeddingFilesError(
        f"{where.name} has none of the columns {', '.join(ID_COLUMNS)}: name one with --id-column"
    )


def _metadata(record: dict[str, Any]) -> dict[str, Any]:
    """Every column but the caption, where it holds a plain value (NaN, pandas' missing
    value, is left out: metadata numbers are finite)."""
    return {
        key: value
        for key, value in record.items()
        if key != CAPTION_COLUMN
        and isinstance(value, str | int | float | bool)
        and not (isinstance(value, float) and not math.isfinite(value))
    }


def _caption(record: dict[str, Any]) -> str | None:
    caption = record.get(CAPTION_COLUMN)
    return caption if isinstance(caption, str) and caption.strip() else None

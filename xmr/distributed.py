"""Distributed batch embedding on Ray Data, written straight into a data directory.

    xmr index PHOTOS -r --ray [--ray-address auto] --data-dir ./data --workers 2

Reading, hashing, decoding and preprocessing run as Ray tasks spread over the cluster's CPUs;
encoding runs in actors that each hold the model (one GPU each where the cluster has GPUs);
the driver writes the vectors into the configured backend (FAISS or Milvus) in batches, as the
single writer the store wants. Files whose bytes are indexed already are skipped (content
hash), so a run that stopped half-way picks up where it stopped. The items are exactly those
the ordinary path (`xmr index` through the server) makes: id = path relative to the folder,
metadata {"path": id}, the same vectors.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xmr.files import ImageFile

WRITE_BATCH = 256


@dataclass(frozen=True)
class RayIndexReport:
    indexed: int
    skipped: int
    failed: list[tuple[str, str]]
    seconds: float
    dated: int = 0  # images indexed with a capture date (exif.taken_at)


def _hash(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """Ray task: the SHA-256 of each file's bytes."""
    digests = [hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in batch["path"]]
    return {"item_id": batch["item_id"], "sha256": np.array(digests)}


def _read(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """Ray task: the bytes of each file."""
    blobs = [Path(path).read_bytes() for path in batch["path"]]
    return {"item_id": batch["item_id"], "data": np.array(blobs, dtype=object)}


class _Prepare:
    """Ray task pool stage: decode and run the encoder's CPU stage (uint8 pixels)."""

    def __init__(self, model: str, pretrained: str | None, max_pixels: int) -> None:
        from models.open_clip_encoder import OpenClipEncoder
        from models.options import LoadOptions

        # only the transform is used here; the model itself stays in the encoder actors
        self._encoder = OpenClipEncoder.load(
            model, pretrained, LoadOptions(device="cpu", precision="fp32", runtime="torch")
        )
        self._max_pixels = max_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import json

        from models import ImageDecodeError, decode_image
        from models.photos import describe, draft_for_photo

        pixels, errors, thumbnails, facts = [], [], [], []
        size = self._encoder.image_size
        for data in batch["data"]:
            try:
                image = decode_image(data, self._max_pixels, draft_for_photo(size * 2))
                pixels.append(self._encoder.prepare_image(image).numpy())
                photo = describe(data, image)
                thumbnails.append(photo.thumbnail)
                facts.append(json.dumps(photo.facts))
                errors.append("")
            except ImageDecodeError as e:
                pixels.append(np.zeros((3, size, size), dtype=np.uint8))
                thumbnails.append(b"")
                facts.append("{}")
                errors.append(str(e))
        return {
            **batch,
            "pixels": np.stack(pixels),
            "error": np.array(errors),
            "thumbnail": np.array(thumbnails, dtype=object),
            "facts": np.array(facts),
        }


class _Encode:
    """Ray actor: holds the model, encodes batches of prepared pixels."""

    def __init__(
        self, model: str, pretrained: str | None, device: str, precision: str, runtime: str
    ) -> None:
        from models.open_clip_encoder import OpenClipEncoder
        from models.options import LoadOptions

        self._encoder = OpenClipEncoder.load(
            model, pretrained, LoadOptions(device=device, precision=precision, runtime=runtime)
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch

        ok = batch["error"] == ""
        vectors = np.zeros((len(ok), self._encoder.dim), dtype=np.float32)
        if ok.any():
            prepared = [torch.from_numpy(p) for p in batch["pixels"][ok]]
            vectors[ok] = self._encoder.encode_prepared(prepared)
        return {
            "item_id": batch["item_id"],
            "data": batch["data"],
            "error": batch["error"],
            "thumbnail": batch["thumbnail"],
            "facts": batch["facts"],
            "vector": vectors,
        }


def index_with_ray(
    files: Sequence[ImageFile],
    store: Any,  # index.ItemStore: the data directory's store, the one writer
    model: str,
    pretrained: str | None,
    workers: int = 1,
    device: str = "auto",
    precision: str = "auto",
    runtime: str = "auto",
    batch_size: int = 32,
    max_pixels: int = 50_000_000,
    keep_gps: bool = False,
) -> RayIndexReport:
    """Embed `files` on the Ray cluster this process is connected to and store the vectors."""
    import json

    import ray

    from app.services.items import with_photo_facts
    from index import NewItem
    from models.images import CONTENT_TYPES, sniff_image_format

    started = time.perf_counter()
    gpus = int(ray.cluster_resources().get("GPU", 0))
    fresh = _not_indexed_yet(files, store, batch_size)
    if not fresh:
        return RayIndexReport(0, len(files), [], time.perf_counter() - started)
    dataset = _dataset(fresh, batch_size)
    read = dataset.map_batches(_read, batch_size=batch_size)
    prepared = read.map_batches(
        _Prepare,
        fn_constructor_args=(model, pretrained, max_pixels),
        batch_size=batch_size,
        concurrency=max(1, workers),
    )
    encoded = prepared.map_batches(
        _Encode,
        fn_constructor_args=(model, pretrained, "cuda" if gpus else device, precision, runtime),
        batch_size=batch_size,
        concurrency=workers,
        num_gpus=1 if gpus else 0,
    )
    indexed, dated, failed = 0, 0, []
    for batch in encoded.iter_batches(batch_size=WRITE_BATCH, batch_format="numpy"):
        items = []
        for item_id, data, error, vector, thumbnail, facts in zip(
            batch["item_id"],
            batch["data"],
            batch["error"],
            batch["vector"],
            batch["thumbnail"],
            batch["facts"],
            strict=True,
        ):
            if error:
                failed.append((str(item_id), str(error)))
                continue
            content_type = CONTENT_TYPES[sniff_image_format(data)]
            photo = json.loads(str(facts))
            dated += "taken_at" in photo
            metadata = with_photo_facts({"path": str(item_id)}, photo, keep_gps)
            items.append(
                NewItem.image_item(
                    str(item_id), vector, bytes(data), content_type, metadata, bytes(thumbnail)
                )
            )
        if items:
            store.upsert(items)
            indexed += len(items)
    skipped = len(files) - len(fresh)
    return RayIndexReport(indexed, skipped, failed, time.perf_counter() - started, dated)


def _dataset(files: Sequence[ImageFile], batch_size: int) -> Any:
    import ray

    return ray.data.from_items(
        [{"path": str(f.path), "item_id": f.item_id} for f in files],
        override_num_blocks=max(1, min(len(files) // batch_size, 256)),
    )


def _not_indexed_yet(files: Sequence[ImageFile], store: Any, batch_size: int) -> list[ImageFile]:
    """The files whose bytes the store does not hold; hashed on the cluster (the resume)."""
    rows = _dataset(files, batch_size).map_batches(_hash, batch_size=batch_size).take_all()
    digests = {str(row["item_id"]): str(row["sha256"]) for row in rows}
    known: set[str] = set()
    values = list(digests.values())
    for start in range(0, len(values), 1000):
        known |= set(store.records.ids_by_sha256(values[start : start + 1000]))
    return [f for f in files if digests[f.item_id] not in known]

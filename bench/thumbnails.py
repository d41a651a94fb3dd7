"""What thumbnails save a result page, and what making them costs at indexing.

Twenty phone-sized photos (4032x3024 JPEGs at quality 90, with the grain of a photo). A page
of 20 results used to fetch each original; now it fetches each thumbnail: the bytes of both,
summed. At indexing, per image and as xmr does it (one decoding serves the model and the
thumbnail): decoding and the model's preprocessing (the baseline, same run), the photo's facts
and thumbnail on top of that, the model's encoding of the batch, and the store's durable write
with and without thumbnails; the thumbnail's cost is the difference, against the model's encode
and against the whole of indexing an image. Medians of --rounds, in milliseconds per image.

    python -m bench.thumbnails --json-out bench/thumbnails-cpu.json
"""

from __future__ import annotations

import io
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.report import benchmark_parser, emit
from index import NewItem
from index.store import ItemStore
from models.images import decode_image
from models.options import LoadOptions
from models.photos import THUMBNAIL_SIDE, describe, draft_for_photo, make_thumbnail

PAGE = 20
SIZE = (4032, 3024)


def phone_photo(seed: int) -> bytes:
    """A 12-megapixel JPEG that compresses like a photo: smooth shapes plus sensor grain."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (SIZE[1] // 64, SIZE[0] // 64, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize(SIZE, Image.Resampling.BICUBIC))
    grain = rng.normal(0, 6, smooth.shape)
    pixels = np.clip(smooth + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def per_image_ms(work: Callable[[], Any], images: int, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000 / images)
    return statistics.median(times)


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from models.open_clip_encoder import OpenClipEncoder

    encoder = OpenClipEncoder.load(args.model, args.pretrained or "", LoadOptions(device="cpu"))
    photos = [phone_photo(seed) for seed in range(PAGE)]
    model_draft = encoder.image_size * 2  # EncodingService's DRAFT_FACTOR
    photo_draft = draft_for_photo(model_draft)

    def decode_for_model() -> list[Any]:
        return [encoder.prepare_image(decode_image(d, draft_size=model_draft)) for d in photos]

    def decode_for_photo() -> list[Any]:
        out = []
        for data in photos:
            image = decode_image(data, draft_size=photo_draft)
            out.append((encoder.prepare_image(image), describe(data, image)))
        return out

    described = [describe(d, decode_image(d, draft_size=photo_draft)) for d in photos]
    thumbnails = [photo.thumbnail for photo in described]
    prepared = decode_for_model()
    decode_ms = per_image_ms(decode_for_model, PAGE, args.rounds)
    photo_ms = per_image_ms(decode_for_photo, PAGE, args.rounds)
    encode_ms = per_image_ms(lambda: encoder.encode_prepared(prepared), PAGE, args.rounds)
    decoded = [decode_image(d, draft_size=photo_draft) for d in photos]
    alone_ms = per_image_ms(lambda: [make_thumbnail(i) for i in decoded], PAGE, args.rounds)
    vectors = encoder.encode_prepared(prepared)

    def store_ms(with_thumbnails: bool) -> float:
        times = []
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory() as folder:
                store = ItemStore(Path(folder), "bench/1", encoder.dim)
                items = [
                    NewItem.image_item(
                        f"p{n}",
                        vectors[n],
                        photos[n],
                        "image/jpeg",
                        None,
                        thumbnails[n] if with_thumbnails else None,
                    )
                    for n in range(PAGE)
                ]
                started = time.perf_counter()
                store.upsert(items)
                times.append((time.perf_counter() - started) * 1000 / PAGE)
                store.close(save=False)
        return statistics.median(times)

    plain_store_ms, thumbnail_store_ms = store_ms(False), store_ms(True)
    thumbnail_cost = (photo_ms - decode_ms) + (thumbnail_store_ms - plain_store_ms)
    report = {
        "machine": {"cpu": platform.processor() or platform.machine()},
        "model": args.model,
        "photo": {"size": list(SIZE), "mean_kb": round(sum(map(len, photos)) / PAGE / 1024, 1)},
        "page_of_20": {
            "originals_kb": round(sum(map(len, photos)) / 1024, 1),
            "thumbnails_kb": round(sum(map(len, thumbnails)) / 1024, 1),
            "ratio": round(sum(map(len, photos)) / sum(map(len, thumbnails)), 1),
            "thumbnail_side": THUMBNAIL_SIDE,
            "largest_thumbnail_kb": round(max(map(len, thumbnails)) / 1024, 1),
        },
        "indexing_ms_per_image": {
            "decode_and_preprocess_for_the_model": round(decode_ms, 2),
            "the_same_plus_facts_and_thumbnail": round(photo_ms, 2),
            "model_encode": round(encode_ms, 2),
            "store_write_without_thumbnail": round(plain_store_ms, 2),
            "store_write_with_thumbnail": round(thumbnail_store_ms, 2),
            "make_thumbnail_alone": round(alone_ms, 2),
            "thumbnail_cost": round(thumbnail_cost, 2),
            "thumbnail_cost_of_encode": round(thumbnail_cost / encode_ms, 3),
            "thumbnail_cost_of_indexing": round(
                thumbnail_cost / (decode_ms + encode_ms + plain_store_ms), 3
            ),
        },
    }
    return emit(report, args.json_out)


if __name__ == "__main__":
    raise SystemExit(main())

"""Which encoder paths win on this machine, without changing results beyond cosine 0.999.

    .venv/bin/python -m bench.cpu_paths --json-out bench/cpu_paths.json

1. Precision: encode_image / encode_text in fp32 against bf16 (autocast-free: weights and inputs
   in bf16), and against torch.compile of the fp32 model; time per batch and the worst cosine
   between each variant's vectors and fp32's.
2. JPEG draft decoding: decode + open_clip preprocessing of large photos with and without
   Pillow's draft mode, per image, and the worst cosine between the resulting image vectors.
3. Resizing: open_clip's transform (Pillow) against xmr's uint8 tensor path (PyTorch's
   antialiased kernels), per image on 200-640 px JPEGs, and the worst cosine.
4. Decoding beside the model: image batches per second alone, and with one thread decoding
   at the same time (why, on the CPU, decoding and the model take turns).
5. Fixed shapes in bf16: texts/s and memory growth over random batch sizes and text lengths,
   with and without rounding shapes up to buckets (models/buckets.py).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import numpy as np
import torch
from PIL import Image

from bench.report import benchmark_parser, emit
from models import OpenClipEncoder, decode_image
from models.options import LoadOptions
from xmr.shapes import random_scene, render

TEXTS = ["a red circle", "a photo of a dog on the beach", "two people walking at sunset", "cat"]


def timed(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def worst_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(axis=1).min())


def precision_report(args: argparse.Namespace) -> dict[str, Any]:
    fp32 = OpenClipEncoder.load(
        args.model, args.pretrained, LoadOptions(device="cpu", precision="fp32")
    )
    bf16 = OpenClipEncoder.load(
        args.model, args.pretrained, LoadOptions(device="cpu", precision="bf16")
    )
    pixels = torch.randn(args.batch, 3, fp32.image_size, fp32.image_size)
    texts = [TEXTS[i % len(TEXTS)] for i in range(args.batch)]
    reference = (fp32.encode_pixels(pixels), fp32.encode_texts(texts))
    report: dict[str, Any] = {}
    variants: list[tuple[str, OpenClipEncoder]] = [("fp32", fp32), ("bf16", bf16)]
    for name, encoder in variants:
        report[name] = {
            "image_batch_ms": round(timed(lambda e=encoder: e.encode_pixels(pixels), 3), 1),
            "text_batch_ms": round(timed(lambda e=encoder: e.encode_texts(texts), 5), 1),
            "image_min_cosine": round(worst_cosine(encoder.encode_pixels(pixels), reference[0]), 5),
            "text_min_cosine": round(worst_cosine(encoder.encode_texts(texts), reference[1]), 5),
        }
    compiled = torch.compile(fp32._model.encode_image)
    started = time.perf_counter()
    with torch.inference_mode():
        out = compiled(pixels)
    compile_s = time.perf_counter() - started

    def run_compiled() -> None:
        with torch.inference_mode():
            compiled(pixels)

    vectors = torch.nn.functional.normalize(out.float(), dim=-1).numpy()
    report["fp32_compiled"] = {
        "image_batch_ms": round(timed(run_compiled, 3), 1),
        "first_call_s": round(compile_s, 1),
        "image_min_cosine": round(worst_cosine(vectors, reference[0]), 5),
    }
    return report


def photo_jpeg(rng: np.random.Generator, side: int) -> bytes:
    """A large JPEG: a drawn scene with photographic noise, so that it compresses like a photo."""
    scene = random_scene(rng, 2, min_side=side, max_side=side)
    pixels = np.asarray(render(scene, rng), dtype=np.int16)
    pixels = pixels + rng.normal(0, 6, pixels.shape).astype(np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def draft_report(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    photos = [photo_jpeg(rng, args.photo_side) for _ in range(args.photos)]
    report: dict[str, Any] = {"photo_side_px": args.photo_side}
    for model, pretrained in ((args.model, args.pretrained), ("shapes-tiny", None)):
        encoder = OpenClipEncoder.load(model, pretrained, LoadOptions(device="cpu"))
        draft = encoder.image_size * 2
        full_ms = timed(lambda e=encoder: [e.prepare_image(decode_image(p)) for p in photos], 2)
        draft_ms = timed(
            lambda e=encoder, d=draft: [
                e.prepare_image(decode_image(p, draft_size=d)) for p in photos
            ],
            2,
        )
        full = encoder.encode_images([decode_image(p) for p in photos])
        drafted = encoder.encode_images([decode_image(p, draft_size=draft) for p in photos])
        report[model] = {
            "full_decode_prepare_ms_per_image": round(full_ms / len(photos), 1),
            "draft_decode_prepare_ms_per_image": round(draft_ms / len(photos), 1),
            "speedup": round(full_ms / draft_ms, 2),
            "min_cosine": round(worst_cosine(full, drafted), 5),
        }
    return report


def resize_report(args: argparse.Namespace) -> dict[str, Any]:
    from torchvision import transforms

    from models.transforms import pil_to_uint8

    encoder = OpenClipEncoder.load(
        args.model, args.pretrained, LoadOptions(device="cpu", precision="fp32")
    )
    rng = np.random.default_rng(1)
    images = [
        decode_image(photo_jpeg(rng, int(side))) for side in rng.integers(200, 640, args.photos)
    ]
    geometry = transforms.Compose(cast(transforms.Compose, encoder._preprocess).transforms[:-2])
    with torch_threads(1):
        pillow_ms = timed(lambda: [pil_to_uint8(geometry(i)).contiguous() for i in images], 3)
        tensor_ms = timed(lambda: [encoder.prepare_image(i) for i in images], 3)
    reference = encoder.encode_pixels(torch.stack([encoder.preprocess(i) for i in images]))
    ours = encoder.encode_prepared([encoder.prepare_image(i) for i in images])
    return {
        "pillow_ms_per_image": round(pillow_ms / len(images), 3),
        "tensor_ms_per_image": round(tensor_ms / len(images), 3),
        "speedup": round(pillow_ms / tensor_ms, 2),
        "min_cosine": round(worst_cosine(reference, ours), 6),
    }


def contention_report(args: argparse.Namespace) -> dict[str, Any]:
    import threading

    encoder = OpenClipEncoder.load(
        args.model, args.pretrained, LoadOptions(device="cpu", precision="auto")
    )
    rng = np.random.default_rng(2)
    photos = [photo_jpeg(rng, 480) for _ in range(16)]
    batch = [encoder.prepare_image(decode_image(p)) for p in photos] * (args.batch // 16)
    alone_ms = timed(lambda: encoder.encode_prepared(batch), 3)
    stop = threading.Event()
    decoded = 0

    def decode_forever() -> None:
        nonlocal decoded
        torch.set_num_threads(1)
        while not stop.is_set():
            encoder.prepare_image(decode_image(photos[decoded % len(photos)]))
            decoded += 1

    thread = threading.Thread(target=decode_forever)
    thread.start()
    try:
        beside_ms = timed(lambda: encoder.encode_prepared(batch), 3)
    finally:
        stop.set()
        thread.join()
    return {
        "precision": encoder.precision,
        "images_per_s_alone": round(len(batch) / alone_ms * 1000, 1),
        "images_per_s_beside_one_decode_thread": round(len(batch) / beside_ms * 1000, 1),
        "slowdown": round(beside_ms / alone_ms, 2),
    }


def shapes_report(args: argparse.Namespace) -> dict[str, Any]:
    import random

    encoder = OpenClipEncoder.load(
        args.model, args.pretrained, LoadOptions(device="cpu", precision="bf16")
    )
    words = [word for text in TEXTS for word in text.split(" ")]
    report: dict[str, Any] = {}
    for fixed in (True, False):  # fixed first: its few shapes are a subset of the second run's
        encoder.fixed_shapes = fixed
        rng = random.Random(0)
        batches = [
            [" ".join(rng.choices(words, k=rng.randint(1, 30))) for _ in range(rng.randint(1, 40))]
            for _ in range(args.shape_batches)
        ]
        before = rss_mb()
        started = time.perf_counter()
        for texts in batches:
            encoder.encode_texts(texts)
        elapsed = time.perf_counter() - started
        report["fixed_shapes" if fixed else "any_shape"] = {
            "texts_per_s": round(sum(map(len, batches)) / elapsed, 1),
            "rss_growth_mb": round(rss_mb() - before, 1),
        }
    report["batches"] = args.shape_batches
    return report


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with `n` torch threads, as xmr's decode threads do."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--photos", type=int, default=16)
    parser.add_argument("--photo-side", type=int, default=2400)
    parser.add_argument("--shape-batches", type=int, default=400)
    args = parser.parse_args()
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "model": f"{args.model}/{args.pretrained or 'random-init'}",
        "precision": precision_report(args),
        "jpeg_draft": draft_report(args),
        "resize": resize_report(args),
        "decode_beside_model": contention_report(args),
        "bf16_shapes": shapes_report(args),
    }
    return emit(report, args.json_out)


if __name__ == "__main__":
    sys.exit(main())

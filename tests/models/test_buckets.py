"""Fixed shapes for bf16 on the CPU: bounded distinct shapes, unchanged vectors and order."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from models import OpenClipEncoder
from models.buckets import batch_bucket, batch_chunks, text_length_bucket
from models.options import LoadOptions
from tests.conftest import TINY_MODEL


def test_batch_buckets_grow_by_at_most_half() -> None:
    assert [batch_bucket(n) for n in (1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65)] == [
        1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96,
    ]  # fmt: skip
    assert all(n <= batch_bucket(n) <= max(n * 3 // 2, n + 1) for n in range(1, 2000))
    assert len({batch_bucket(n) for n in range(1, 1025)}) == 20
    with pytest.raises(ValueError):
        batch_bucket(0)


def test_batch_chunks_cover_every_item_once_in_bucket_sizes() -> None:
    assert list(batch_chunks(37)) == [(0, 32), (32, 36), (36, 37)]
    assert list(batch_chunks(64)) == [(0, 64)]
    for n in range(1, 600):
        chunks = list(batch_chunks(n))
        assert [start for start, _ in chunks] == [0] + [stop for _, stop in chunks[:-1]]
        assert chunks[-1][1] == n
        assert all(stop - start == batch_bucket(stop - start) for start, stop in chunks)
        assert len(chunks) <= n.bit_length()


def test_text_lengths_round_up_within_the_context() -> None:
    assert [text_length_bucket(n, 77) for n in (1, 8, 9, 33, 64, 65, 77)] == [
        8, 8, 16, 48, 64, 77, 77,
    ]  # fmt: skip
    assert text_length_bucket(12, 20) == 16
    assert text_length_bucket(17, 20) == 20


@pytest.fixture(scope="module")
def bf16_encoder() -> OpenClipEncoder:
    return OpenClipEncoder.load(
        TINY_MODEL, "", LoadOptions(device="cpu", precision="bf16", runtime="torch")
    )


def _record_shapes(module: torch.nn.Module, seen: set[tuple[int, ...]]) -> object:
    return module.register_forward_hook(lambda _m, args, _out: seen.add(tuple(args[0].shape)))


def test_any_mix_of_batch_sizes_and_lengths_meets_few_shapes(
    bf16_encoder: OpenClipEncoder,
) -> None:
    assert bf16_encoder.fixed_shapes
    text_shapes: set[tuple[int, ...]] = set()
    image_shapes: set[tuple[int, ...]] = set()
    hooks = [
        _record_shapes(bf16_encoder.torch_model.transformer, text_shapes),
        _record_shapes(bf16_encoder.torch_model.visual, image_shapes),
    ]
    rng = random.Random(0)
    words = ["a", "red", "blue", "circle", "square", "star", "on", "the", "left", "of", "and"]
    image = Image.new("RGB", (40, 40), "red")
    try:
        for _ in range(60):
            texts = [
                " ".join(rng.choices(words, k=rng.randint(1, 30)))
                for _ in range(rng.randint(1, 40))
            ]
            bf16_encoder.encode_texts(texts)
            bf16_encoder.encode_images([image] * rng.randint(1, 40))
    finally:
        for hook in hooks:
            hook.remove()  # type: ignore[attr-defined]
    # 120 random batches meet at most 11 batch buckets and 5 text-length buckets
    assert len(text_shapes) <= 50
    assert {shape[0] for shape in text_shapes} <= {1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48}
    assert {shape[1] for shape in text_shapes} <= {8, 16, 24, 32, 48}
    assert {shape[0] for shape in image_shapes} <= {1, 2, 3, 4, 6, 8, 12, 16, 24, 32}


def test_fixed_shapes_keep_every_row_and_its_vector(bf16_encoder: OpenClipEncoder) -> None:
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (50, 50, 3), dtype=np.uint8)) for _ in range(7)]
    texts = ["a red circle", "a blue square on the left of a green star and a red circle", "x"]
    batched_images = bf16_encoder.encode_images(images)  # chunks of 6 and 1
    batched_texts = bf16_encoder.encode_texts(texts)  # 3 rows, 16 tokens
    alone_images = np.concatenate([bf16_encoder.encode_images([image]) for image in images])
    alone_texts = np.concatenate([bf16_encoder.encode_texts([text]) for text in texts])
    assert batched_images.shape == (7, bf16_encoder.dim)
    assert batched_texts.shape == (3, bf16_encoder.dim)
    # row by row the same item: bf16 results may differ in the last bits between shapes
    assert float((batched_images * alone_images).sum(axis=1).min()) >= 0.999
    assert float((batched_texts * alone_texts).sum(axis=1).min()) >= 0.999
    assert float((batched_texts[0] * batched_texts[1]).sum()) < 0.999  # rows did not mix

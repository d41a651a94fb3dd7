"""The query cache: a query text asked again skips the model, within a bound in bytes."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from app.services.batcher import BatchTimes
from app.services.encoding import EncodingLimits, EncodingService
from app.services.query_cache import ENTRY_OVERHEAD_BYTES, QueryVectorCache, token_key
from models import OpenClipEncoder


def unit(seed: int, dim: int = 8) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


def entry_bytes(key: bytes, dim: int = 8) -> int:
    return len(key) + 4 * dim + ENTRY_OVERHEAD_BYTES


def test_the_least_recently_used_entries_leave_first_within_the_bound() -> None:
    keys = [bytes([n]) * 8 for n in range(4)]
    cache = QueryVectorCache(max_bytes=3 * entry_bytes(keys[0]))
    for n, key in enumerate(keys[:3]):
        cache.put(key, unit(n))
    assert cache.get(keys[0]) is not None  # now the most recently used
    cache.put(keys[3], unit(3))  # one over the bound: the least recently used (1) leaves
    assert cache.get(keys[1]) is None
    assert [cache.get(k) is not None for k in (keys[0], keys[2], keys[3])] == [True] * 3
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (4, 1, 3)
    assert stats.bytes == 3 * entry_bytes(keys[0])


def test_a_cached_vector_is_a_read_only_copy_and_zero_bytes_keeps_nothing() -> None:
    batch = np.stack([unit(1), unit(2)])
    cache = QueryVectorCache(max_bytes=10_000)
    cache.put(b"k", batch[0])
    batch[0] = 0  # the batch the row came from changes: the cached vector does not
    cached = cache.get(b"k")
    assert cached is not None and np.allclose(cached, unit(1))
    with pytest.raises(ValueError):
        cached[0] = 1.0
    off = QueryVectorCache(max_bytes=0)
    off.put(b"k", unit(1))
    assert not off.enabled and off.get(b"k") is None


def test_padding_is_not_part_of_the_key() -> None:
    assert token_key(np.array([49406, 320, 49407, 0, 0])) == token_key(
        np.array([49406, 320, 49407])
    )
    assert token_key(np.array([49406, 320, 49407])) != token_key(np.array([49406, 321, 49407]))


def run_queries(
    encoder: OpenClipEncoder, cache_bytes: int, queries: list[list[str]]
) -> tuple[list[np.ndarray], int]:
    """Each list of `queries` through EncodingService.encode_queries, in turn; the vectors and
    how many texts the model encoded."""
    encoded = 0

    def count(batch: BatchTimes) -> None:
        nonlocal encoded
        encoded += batch.items

    async def main() -> list[np.ndarray]:
        limits = EncodingLimits(max_image_pixels=10**7, query_cache_bytes=cache_bytes)
        service = EncodingService(encoder, limits, on_batch=count)
        service.start()
        try:
            return [await service.encode_queries(texts) for texts in queries]
        finally:
            await service.stop()
            service.close()

    return asyncio.run(main()), encoded


def test_a_query_asked_again_skips_the_model_and_gets_the_same_vector(
    tiny_encoder: OpenClipEncoder,
) -> None:
    queries = [["a red circle"], ["A  red circle "], ["a blue square", "a red circle"]]
    vectors, encoded = run_queries(tiny_encoder, 2**20, queries)
    assert encoded == 2  # "a red circle" once (the tokenizer reads all three alike), the square
    expected = tiny_encoder.encode_texts(["a red circle", "a blue square"])
    np.testing.assert_allclose(vectors[0][0], expected[0], atol=1e-6)
    np.testing.assert_array_equal(vectors[1][0], vectors[0][0])
    np.testing.assert_allclose(vectors[2], expected[[1, 0]], atol=1e-6)
    _, uncached = run_queries(tiny_encoder, 0, queries)
    assert uncached == 4  # the cache off: every text goes to the model

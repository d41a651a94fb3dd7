"""A few fixed input shapes for backends that keep state per shape.

PyTorch's oneDNN path (bf16 on the CPU) caches kernels and reordered weights for every input
shape it meets; a server that sees every batch size and text length grows by hundreds of MB
(BENCHMARKS.md). Rounding batch sizes and text lengths up to a bucket bounds that to a few
dozen shapes for a small price in padding.
"""

from __future__ import annotations

from collections.abc import Iterator

# text lengths in tokens; a tokenizer's context length is always a bucket of its own
TEXT_LENGTH_BUCKETS = (8, 16, 24, 32, 48, 64)


def batch_bucket(n: int) -> int:
    """The smallest of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (2^k and 3 * 2^k) that holds `n`."""
    if n < 1:
        raise ValueError("a batch holds at least one item")
    power = 1
    while power < n:
        if power >= 2 and power * 3 // 2 >= n:
            return power * 3 // 2
        power *= 2
    return power


def batch_chunks(n: int) -> Iterator[tuple[int, int]]:
    """(start, stop) slices of `n` items whose sizes are buckets, largest first, no padding."""
    start = 0
    while start < n:
        size = _largest_bucket_within(n - start)
        yield start, start + size
        start += size


def text_length_bucket(length: int, context_length: int) -> int:
    """`length` tokens rounded up to a bucket, never past the context length."""
    for bucket in TEXT_LENGTH_BUCKETS:
        if length <= bucket < context_length:
            return bucket
    return context_length


def _largest_bucket_within(n: int) -> int:
    power = 1 << (n.bit_length() - 1)  # the largest power of two <= n
    return power * 3 // 2 if power >= 2 and power * 3 // 2 <= n else power

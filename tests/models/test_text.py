"""Texts are cut to what can reach the context before tokenizing: the same ids as open_clip's
own tokenizer for any ordinary text, long ones included, and bounded work for hostile ones."""

from __future__ import annotations

import random
import string
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from open_clip.tokenizer import _clean_lower

from models import OpenClipEncoder
from models.options import LoadOptions
from models.text import (
    LONGEST_RUN,
    WORD_CACHE_ENTRIES,
    fit_to_context,
    longest_token,
    skip_ftfy_on_plain_text,
    token_rows,
)

REPO = Path(__file__).resolve().parents[2]


def corpus() -> list[str]:
    """Every line and paragraph of the project's prose, run together into long texts too, with
    other scripts, entities, emoji, digits and punctuation mixed in."""
    prose = [
        path.read_text(encoding="utf-8") for path in sorted(REPO.glob("*.md")) + [REPO / "Makefile"]
    ]
    lines = [line for text in prose for line in text.splitlines() if line.strip()]
    paragraphs = [p for text in prose for p in text.split("\n\n") if p.strip()]
    rng = random.Random(7)
    mixed = [
        "Ein Donaudampfschifffahrtsgesellschaftskapitän fährt über die Donau.",
        "naïve café – “quoted” — ½ ﬁne ligatures &amp; entities &lt;b&gt; &#39;x&#39;",
        "東京の夜景はとても美しいです。 北京 上海 서울의 밤 Привет, как дела? مرحبا بالعالم",
        "emoji 🐱🐶🚗 and flags 🇫🇷 🇯🇵, zero‑width\u200bjoiner, tabs\tand\nnewlines",
        "digits 1234567890 3.14159 2026-12-04 +49 (0)30 1234",
        "!!!??? ... --- *** ### $$$ %%% &&& ((( ))) [[[ ]]] {{{ }}}",
        "<start_of_text> literal special <end_of_text> tokens in a user's text",
        "it's they're we've I'm you'll he'd don't",
    ]
    long_texts = [" ".join(rng.sample(lines, 150)) for _ in range(40)]
    spaced = ["word " + " " * 5000 + " after many spaces " * 20]
    return lines + paragraphs + mixed + long_texts + spaced


@pytest.mark.parametrize("model", ["ViT-B-32", "xmr-test-tiny"])
def test_ids_equal_open_clips_own_tokenizer_on_a_varied_corpus(
    model: str, tiny_encoder: OpenClipEncoder
) -> None:
    tokenizer = open_clip.get_tokenizer(model)
    longest = longest_token(tokenizer)
    texts = corpus()
    assert len(texts) > 1000 and sum(len(t) > 10_000 for t in texts) >= 40  # long ones are cut
    cut = [fit_to_context(text, tokenizer.context_length, longest) for text in texts]
    assert any(len(c) < len(t) for c, t in zip(cut, texts, strict=True))
    expected = tokenizer(texts)
    got = tokenizer(cut)
    differing = [texts[i][:80] for i in range(len(texts)) if not (got[i] == expected[i]).all()]
    assert differing == []


@pytest.mark.parametrize("model", ["ViT-B-32", "xmr-test-tiny"])
def test_rows_built_without_torch_hold_open_clips_own_ids(model: str) -> None:
    tokenizer = open_clip.get_tokenizer(model)
    texts = corpus()
    rows = token_rows(tokenizer, byte_pair_encoder=True)(texts)
    expected = tokenizer(texts).numpy()
    assert rows.dtype == np.int64 and rows.shape == expected.shape
    assert any(r[-1] == tokenizer.eot_token_id for r in rows)  # texts cut at the context too
    differing = [texts[i][:80] for i in range(len(texts)) if not (rows[i] == expected[i]).all()]
    assert differing == []
    # any other tokenizer is called as it is
    assert (token_rows(tokenizer, byte_pair_encoder=False)(texts[:50]) == expected[:50]).all()


PRINTABLE_ASCII = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


def _fast_clean() -> Callable[[str], str]:
    tokenizer = open_clip.get_tokenizer("xmr-test-tiny")
    skip_ftfy_on_plain_text(tokenizer)
    return tokenizer.clean_fn  # type: ignore[no-any-return]


FAST_CLEAN = _fast_clean()


@settings(max_examples=2000, deadline=None)
@example("Tom &amp; Jerry &lt;3 &#39;x&#39; &amp;amp;")
@example("  Two   Spaces ,UPPER case  ")
@example("caf\u00e9 \u201cquoted\u201d \ufb01ne")
@given(st.text(alphabet=PRINTABLE_ASCII, max_size=200) | st.text(max_size=60))
def test_the_clean_without_ftfy_on_plain_text_is_open_clips_clean(text: str) -> None:
    assert FAST_CLEAN(text) == _clean_lower(text)


def test_the_clean_without_ftfy_is_put_in_place_of_open_clips_own() -> None:
    tokenizer = open_clip.get_tokenizer("xmr-test-tiny")
    assert tokenizer.clean_fn is _clean_lower
    skip_ftfy_on_plain_text(tokenizer)
    assert tokenizer.clean_fn is not _clean_lower


def test_the_encoder_s_ids_are_open_clips_on_the_corpus(tiny_encoder: OpenClipEncoder) -> None:
    tokenizer = open_clip.get_tokenizer("xmr-test-tiny")  # open_clip's, ftfy on every text
    texts = corpus()
    longest = longest_token(tokenizer)
    expected = tokenizer([fit_to_context(t, tokenizer.context_length, longest) for t in texts])
    assert (tiny_encoder.tokenize(texts) == expected.numpy()).all()


def test_the_encoder_tokenizes_to_an_array(tiny_encoder: OpenClipEncoder) -> None:
    texts = ["a red circle", "TWO   blue squares!", "a caption that goes on " * 100]
    rows = tiny_encoder.tokenize(texts)
    assert isinstance(rows, np.ndarray) and rows.dtype == np.int64
    assert (rows == open_clip.get_tokenizer("xmr-test-tiny")(texts).numpy()).all()
    np.testing.assert_allclose(
        tiny_encoder.encode_tokens(list(rows)),
        tiny_encoder.encode_tokens(list(torch.from_numpy(rows))),  # torch rows are taken too
    )


def test_a_text_of_few_long_runs_is_tokenized_in_milliseconds() -> None:
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    longest = longest_token(tokenizer)
    rng = random.Random(3)
    hostile = [
        "a" * 60_000,
        "".join(rng.choice(string.ascii_lowercase) for _ in range(99_000)),
        "!?" * 50_000,
        " ".join("".join(rng.choice(string.ascii_letters) for _ in range(5000)) for _ in range(20)),
    ]
    for text in hostile:
        started = time.perf_counter()
        tokens = tokenizer([fit_to_context(text, tokenizer.context_length, longest)])
        assert time.perf_counter() - started < 0.5
        assert int(tokens[0, -1]) == tokenizer.eot_token_id  # the context is full
    assert all(len(piece) <= LONGEST_RUN for piece in fit_to_context("b" * 1000, 77).split())


def test_the_word_cache_is_bounded(tiny_encoder: OpenClipEncoder) -> None:
    encoder = OpenClipEncoder.load("xmr-test-tiny", "", LoadOptions(device="cpu", precision="fp32"))
    rng = random.Random(5)
    for _ in range(5):
        words = [
            "".join(rng.choice(string.ascii_lowercase) for _ in range(40)) for _ in range(10_000)
        ]
        encoder.tokenize([" ".join(words[i : i + 50]) for i in range(0, len(words), 50)])
    cache = encoder._tokenizer.cache  # type: ignore[attr-defined]
    assert len(cache) <= WORD_CACHE_ENTRIES + 2
    assert cache["<start_of_text>"] == "<start_of_text>"  # the special tokens are kept

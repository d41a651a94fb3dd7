"""Texts before the tokenizer: only what can reach the model's context, in bounded pieces.

CLIP's byte-pair encoding is super-linear in the length of a word (a 12,000-letter word took
5.5 s, 60,000 letters 27.6 s, on the thread every query waits for), and open_clip's tokenizer
encodes the whole text although only its first `context_length` tokens (77) are used.

The tokenizer splits a text into pieces (runs of letters, single digits, runs of other
non-space characters), and each piece gives at least one token of at most `longest_token`
characters (24 in CLIP's vocabulary). So once runs of white space are one space, the first
`context_length * (longest_token + 1)` characters hold every token that can reach the context,
and the text is cut there. Runs longer than LONGEST_RUN are split, which bounds the BPE's work;
no word of a language written with spaces is that long. Any other text is tokenized exactly as
open_clip would (tests/models/test_text.py compares the ids on a varied corpus).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import regex

LONGEST_RUN = 128  # characters of one letter or punctuation run handed to the BPE at once
DEFAULT_LONGEST_TOKEN = 64  # for a tokenizer whose vocabulary is not at hand
WORD_CACHE_ENTRIES = 20_000  # words whose BPE the tokenizer remembers
# the pieces open_clip's tokenizer splits a text into before the BPE: runs of letters, single
# digits, runs of other non-space characters; only the long runs need splitting
_LONG_RUN = regex.compile(
    rf"\p{{L}}{{{LONGEST_RUN + 1},}}|[^\s\p{{L}}\p{{N}}]{{{LONGEST_RUN + 1},}}"
)


def fit_to_context(
    text: str, context_length: int, longest_token: int = DEFAULT_LONGEST_TOKEN
) -> str:
    """`text` cut to what can reach `context_length` tokens, its over-long runs split."""
    text = _LONG_RUN.sub(_split_run, text)
    budget = context_length * (longest_token + 1)
    if len(text) <= budget:
        return text
    return " ".join(text.split())[:budget]  # as the tokenizer does: a run of spaces is one


def _split_run(match: regex.Match[str]) -> str:
    run = match.group(0)
    return " ".join(run[i : i + LONGEST_RUN] for i in range(0, len(run), LONGEST_RUN))


class BoundedWordCache(dict[str, Any]):
    """open_clip's BPE cache (a dict that grows with every new word for good), with the oldest
    words forgotten past `entries`; the entries it starts with (special tokens) are kept."""

    def __init__(self, initial: dict[str, Any], entries: int = WORD_CACHE_ENTRIES) -> None:
        super().__init__(initial)
        self._pinned = frozenset(initial)
        self._entries = entries + len(initial)

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        while len(self) > self._entries:
            oldest = next(k for k in self if k not in self._pinned)
            del self[oldest]


def skip_ftfy_on_plain_text(tokenizer: Any) -> None:
    """Let open_clip's lower-casing clean (ftfy, HTML entities unescaped twice, runs of white
    space made one, lower case) skip ftfy and the entities on printable ASCII without "&", where
    neither changes anything: ftfy's pass is most of a short query's tokenizing, on the event
    loop. Any other text, and any other clean, is left as open_clip has it."""
    from open_clip import tokenizer as open_clip_tokenizer

    clean = getattr(tokenizer, "clean_fn", None)
    if clean is not getattr(open_clip_tokenizer, "_clean_lower", None) or clean is None:
        return
    tokenizer.clean_fn = _without_ftfy_on_plain_text(clean)


def _without_ftfy_on_plain_text(clean: Callable[[str], str]) -> Callable[[str], str]:
    def cleaned(text: str) -> str:
        if text.isascii() and text.isprintable() and "&" not in text:
            return " ".join(text.split()).lower()
        return clean(text)

    return cleaned


def longest_token(tokenizer: Any) -> int:
    """The most characters one token of `tokenizer` covers (its vocabulary's longest entry)."""
    vocabulary = getattr(tokenizer, "encoder", None)
    if not isinstance(vocabulary, dict) or not vocabulary:
        return DEFAULT_LONGEST_TOKEN
    return max(len(str(token).removesuffix("</w>")) for token in vocabulary)


def bound_word_cache(tokenizer: Any) -> None:
    """Give open_clip's SimpleTokenizer a bounded word cache (other tokenizers keep theirs)."""
    cache = getattr(tokenizer, "cache", None)
    if isinstance(cache, dict) and not isinstance(cache, BoundedWordCache):
        tokenizer.cache = BoundedWordCache(cache)


TokenRows = Callable[[Sequence[str]], np.ndarray]


def token_rows(tokenizer: Any, byte_pair_encoder: bool) -> TokenRows:
    """`tokenizer`'s ids for a list of texts, as an (n, context_length) int64 array.

    open_clip's byte-pair tokenizer (`byte_pair_encoder`: a SimpleTokenizer without a reduction
    strategy) builds its rows here from its own ids, without torch: its call makes a tensor per
    text, and on the event loop, where queries are tokenized, each torch call costs tens of
    microseconds once the model has run through the caches. Other tokenizers are called as
    they are. The same ids either way (tests/models/test_text.py)."""
    if not byte_pair_encoder:
        return lambda texts: np.asarray(tokenizer(list(texts)), dtype=np.int64)
    context_length = int(tokenizer.context_length)
    start, end = int(tokenizer.sot_token_id), int(tokenizer.eot_token_id)

    def rows(texts: Sequence[str]) -> np.ndarray:
        found = np.zeros((len(texts), context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [start, *tokenizer.encode(text), end]
            if len(ids) > context_length:  # cut, and end with the end token, as open_clip does
                ids = ids[:context_length]
                ids[-1] = end
            found[row, : len(ids)] = ids
        return found

    return rows

"""Zero-shot labels: which of the given labels fits each image (or stored item) best.

As CLIP's zero-shot classifier: each label (in a template, "a photo of {}") is embedded as a
text; an image's logits are the model's logit scale times its cosine to each label, and the
probabilities their softmax. Label vectors are cached per model.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from app.services.encoding import EncodingService
from app.services.errors import InvalidInputError
from app.services.threads import run_in

if TYPE_CHECKING:
    from index.store import ItemStore

MIN_LABELS, MAX_LABELS = 2, 1000
MAX_LABEL_CHARS = 1000
MAX_TEMPLATE_CHARS = 1000
LABEL_CACHE_BYTES = 64 * 2**20  # label vectors kept per model, with their texts
MAX_IMAGES = 64
LABEL_CHUNK = 64  # label texts per encoder call


@dataclass(frozen=True)
class LabelScore:
    label: str
    score: float  # cosine
    probability: float


class LabelVectors:
    """Text vectors of labels already embedded by one model, at most `max_bytes` of them with
    their texts (least recently used dropped)."""

    def __init__(self, max_bytes: int = LABEL_CACHE_BYTES) -> None:
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._max_bytes = max_bytes
        self.bytes = 0

    async def of(self, encoding: EncodingService, texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        for start in range(0, len(missing), LABEL_CHUNK):
            chunk = missing[start : start + LABEL_CHUNK]
            vectors = await encoding.encode_texts(chunk, background=True)
            for text, vector in zip(chunk, vectors, strict=True):
                if text not in self._vectors:
                    self.bytes += _cost(text, vector)
                self._vectors[text] = vector
        for text in texts:
            self._vectors.move_to_end(text)
        rows = np.stack([self._vectors[t] for t in texts])
        while self.bytes > self._max_bytes and self._vectors:
            text, vector = self._vectors.popitem(last=False)
            self.bytes -= _cost(text, vector)
        return rows


def _cost(text: str, vector: np.ndarray) -> int:
    return len(text.encode("utf-8")) + vector.nbytes


def check_labels(labels: Sequence[str], template: str | None) -> list[str]:
    """The texts to embed for `labels`; 422 for too few, too many, blank or a bad template."""
    if not MIN_LABELS <= len(labels) <= MAX_LABELS:
        raise InvalidInputError(f"give {MIN_LABELS} to {MAX_LABELS} labels, got {len(labels)}")
    for position, label in enumerate(labels):
        if not label.strip() or len(label) > MAX_LABEL_CHARS:
            raise InvalidInputError(
                f"labels[{position}] must be 1 to {MAX_LABEL_CHARS} characters, not blank"
            )
    if len(set(labels)) != len(labels):
        raise InvalidInputError("labels must not repeat")
    if template is None:
        return list(labels)
    if len(template) > MAX_TEMPLATE_CHARS:
        raise InvalidInputError(f"template must be at most {MAX_TEMPLATE_CHARS} characters")
    if template.count("{}") != 1:
        raise InvalidInputError('template must hold "{}" exactly once, e.g. "a photo of {}"')
    return [template.replace("{}", label) for label in labels]


def ranked_labels(
    vectors: np.ndarray, label_vectors: np.ndarray, labels: Sequence[str], logit_scale: float
) -> list[list[LabelScore]]:
    """Per row of `vectors`: every label with its cosine and softmax probability, best first."""
    scores = vectors @ label_vectors.T
    logits = logit_scale * scores.astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    results = []
    for row_scores, row_probabilities in zip(scores, probabilities, strict=True):
        order = np.argsort(-row_probabilities, kind="stable")
        results.append(
            [
                LabelScore(labels[i], float(row_scores[i]), float(row_probabilities[i]))
                for i in order
            ]
        )
    return results


class ClassifyService:
    def __init__(
        self,
        store: ItemStore,
        encoding: EncodingService,
        label_vectors: LabelVectors,
        logit_scale: float,
        store_pool: Executor,
    ) -> None:
        self.store = store
        self.encoding = encoding
        self.label_vectors = label_vectors
        self.logit_scale = logit_scale
        self._store_pool = store_pool

    async def images(
        self, blobs: Sequence[bytes], labels: Sequence[str], template: str | None
    ) -> list[list[LabelScore]]:
        """Labels for uploaded images, in their order; an undecodable one fails the request."""
        if not 1 <= len(blobs) <= MAX_IMAGES:
            raise InvalidInputError(f"send 1 to {MAX_IMAGES} images, got {len(blobs)}")
        texts = check_labels(labels, template)
        prepared = await self.encoding.prepare_all(blobs)
        vectors = await self.encoding.encode_prepared(prepared)
        return await self._rank(vectors, texts, labels)

    async def items(
        self, item_ids: Sequence[str], labels: Sequence[str], template: str | None
    ) -> list[list[LabelScore]]:
        """Labels for stored items (images or texts), by their stored vectors."""
        if not 1 <= len(item_ids) <= MAX_LABELS:
            raise InvalidInputError(f"send 1 to {MAX_LABELS} items, got {len(item_ids)}")
        texts = check_labels(labels, template)
        rows = [
            (await run_in(self._store_pool, self.store.stored_vector, item_id))[1][0]
            for item_id in item_ids
        ]
        return await self._rank(np.stack(rows), texts, labels)

    async def rank(
        self, vectors: np.ndarray, labels: Sequence[str], template: str | None
    ) -> list[list[LabelScore]]:
        """Labels for vectors already at hand (stored ones), each row best first."""
        return await self._rank(vectors, check_labels(labels, template), labels)

    async def _rank(
        self, vectors: np.ndarray, texts: list[str], labels: Sequence[str]
    ) -> list[list[LabelScore]]:
        label_vectors = await self.label_vectors.of(self.encoding, texts)
        return ranked_labels(vectors, label_vectors, labels, self.logit_scale)

"""The contract every encoder fulfils: images and texts in, L2-normalized float32 rows out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from PIL import Image

from models.tower_run import Tower, TowerRun


class Encoder(Protocol):
    """A dual encoder mapping images and texts into one space of `dim` dimensions.

    Images are encoded in two stages so that a server can overlap them: `prepare_image` is the
    CPU work for one image (resize, normalize) and may run in any thread; `encode_prepared` runs
    the model on a batch of prepared images. Texts likewise: `tokenize`, then `encode_tokens`.
    """

    @property
    def model_id(self) -> str:
        """Identity of the weights, e.g. `ViT-B-32/laion2b_s34b_b79k`; stored with every vector."""
        ...

    @property
    def dim(self) -> int: ...

    @property
    def device(self) -> str: ...

    @property
    def precision(self) -> str:
        """fp32, fp16 or bf16: the dtype of the weights and inputs."""
        ...

    @property
    def runtime(self) -> str:
        """What runs the model: torch, onnxruntime or openvino; or two, text first, joined by
        + where each tower runs in its own (openvino+torch)."""
        ...

    @property
    def tower_runs(self) -> dict[Tower, TowerRun]:
        """Per tower ("text", "image"), the runtime and the precision that run it."""
        ...

    @property
    def logit_scale(self) -> float:
        """The temperature of zero-shot classification: logits = logit_scale * cosine."""
        ...

    @property
    def image_size(self) -> int:
        """The side of the square input the image tower takes (decoders may stop above it)."""
        ...

    def prepare_image(self, image: Image.Image) -> Any:
        """The per-image CPU stage; its output goes to `encode_prepared`."""
        ...

    def encode_prepared(self, prepared: Sequence[Any]) -> np.ndarray:
        """Encode prepared images to a float32 array of shape (n, dim) with unit-norm rows."""
        ...

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Both stages at once: RGB images to a float32 (n, dim) array with unit-norm rows."""
        ...

    def tokenize(self, texts: Sequence[str]) -> Any:
        """The per-text CPU stage (bounded work per text, any thread): one row per text, for
        `encode_tokens`. Raises EmptyTextError for an empty or blank text."""
        ...

    def encode_tokens(self, rows: Sequence[Any]) -> np.ndarray:
        """Encode rows of `tokenize` to a float32 array of shape (n, dim) with unit-norm rows."""
        ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Both stages at once: texts to a float32 (n, dim) array with unit-norm rows."""
        ...

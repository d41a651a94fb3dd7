"""The contract every encoder fulfils: images and texts in, L2-normalized float32 rows out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from PIL import Image


class Encoder(Protocol):
    """A dual encoder mapping images and texts into one space of `dim` dimensions."""

    @property
    def model_id(self) -> str:
        """Identity of the weights, e.g. `ViT-B-32/laion2b_s34b_b79k`; stored with every vector."""
        ...

    @property
    def dim(self) -> int: ...

    @property
    def device(self) -> str: ...

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Encode RGB images to a float32 array of shape (n, dim) with unit-norm rows."""
        ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Encode texts to a float32 array of shape (n, dim) with unit-norm rows."""
        ...

"""The check another runtime passes before it is used: its vectors for fixed probe texts and
images must match PyTorch fp32's within MIN_COSINE."""

from __future__ import annotations

import numpy as np
import torch

from models.buckets import text_length_bucket
from models.tower_run import TOWERS, Tower
from models.towers import TorchTowers, Towers, text_length
from models.transforms import SplitTransform

MIN_COSINE = {"fp32": 0.99999, "bf16": 0.9999}
IMAGE_PROBES = 3


class Probes:
    """Fixed texts and images on which another runtime must reproduce PyTorch fp32."""

    def __init__(
        self,
        probe_tokens: torch.Tensor,
        split: SplitTransform | None,
        image_side: int,
        short_text: bool,
    ) -> None:
        context = probe_tokens.shape[1]
        self.full_tokens = probe_tokens
        # each probe alone at its own (bucketed) length, then all at the longest
        self.text_inputs = [
            row[:, : text_length_bucket(text_length(row), context)] if short_text else row
            for row in probe_tokens.split(1)
        ] + [probe_tokens]
        rng = np.random.default_rng(0)
        shape = (IMAGE_PROBES, 3, image_side, image_side)
        if split is not None:
            noise = rng.integers(0, 256, shape, dtype=np.uint8)
            ramp = np.linspace(0, 255, image_side, dtype=np.float32).astype(np.uint8)
            noise[0] = np.broadcast_to(ramp, (3, image_side, image_side))  # one smooth image
            noise[1] = np.array([200, 40, 40], dtype=np.uint8)[:, None, None]  # one flat colour
            self.pixels = torch.from_numpy(noise)
        else:
            self.pixels = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))

    def reference(self, reference: TorchTowers) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            text = reference.model.encode_text(self.full_tokens)
        return {"text": _unit_rows(text.float().numpy()), "image": reference.image(self.pixels)}

    def agreement(
        self, towers: Towers, expected: dict[str, np.ndarray], which: tuple[Tower, ...] = TOWERS
    ) -> float:
        """The lowest cosine between `towers`' vectors and PyTorch fp32's over the probes of
        the towers `which`."""
        cosines = []
        if "text" in which:
            texts = [towers.text(tokens) for tokens in self.text_inputs]
            cosines.append(_min_cosine(np.concatenate(texts[:-1]), expected["text"]))
            cosines.append(_min_cosine(texts[-1], expected["text"]))
        if "image" in which:
            cosines.append(_min_cosine(towers.image(self.pixels[:1]), expected["image"][:1]))
            cosines.append(_min_cosine(towers.image(self.pixels), expected["image"]))
        return min(cosines)


def _unit_rows(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.maximum(norms, 1e-12)).astype(np.float32)


def _min_cosine(actual: np.ndarray, expected: np.ndarray) -> float:
    return float((_unit_rows(actual) * _unit_rows(expected)).sum(axis=1).min())

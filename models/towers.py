"""The two towers of a dual encoder as one runtime runs them: PyTorch here, others in runtimes.py.

An encoder tokenizes texts and prepares images; its towers turn the resulting batches into
unit-norm float32 rows. Each runtime says what inputs it wants: whether text tokens may be cut
to the batch's longest text (`short_text`), whether inputs should be rounded up to a few fixed
shapes (`fixed_shapes`: runtimes that keep state per shape), and image batches as `uint8`
pixels (normalized by the towers) or as already normalized floats when the model's transform
cannot be split that way.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np
import open_clip
import torch

from models.tower_run import Tower, TowerRun, one_run
from models.transforms import SplitTransform

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# the trimmed text path equals the full one mathematically; these allow for rounding per dtype
SHORT_TEXT_MIN_COSINE = {"fp32": 0.99999, "fp16": 0.9999, "bf16": 0.999}
SHORT_TEXT_PROBES = ("a", "a photo of a dog on the beach at sunset", "x " * 200)


class Towers(Protocol):
    """The image and text towers of one model, run by one runtime."""

    @property
    def runtime(self) -> str:
        """torch, onnxruntime or openvino."""
        ...

    @property
    def precision(self) -> str:
        """The arithmetic the runtime does: fp32, fp16 or bf16."""
        ...

    @property
    def runs(self) -> dict[Tower, TowerRun]:
        """Per tower it runs, the runtime and the precision."""
        ...

    @property
    def fixed_shapes(self) -> bool: ...

    @property
    def short_text(self) -> bool: ...

    def image(self, pixels: torch.Tensor) -> np.ndarray:
        """(n, 3, H, W) uint8 pixels (or normalized floats) to (n, dim) unit rows."""
        ...

    def text(self, tokens: torch.Tensor) -> np.ndarray:
        """(n, length) token ids to (n, dim) unit rows; length < context only if short_text."""
        ...


class TorchTowers:
    """The open_clip model itself, in eval mode, in the given dtype, on the given device."""

    runtime = "torch"

    def __init__(
        self,
        model: Any,
        device: torch.device,
        precision: str,
        split: SplitTransform | None,
        probe_tokens: torch.Tensor | None = None,
    ) -> None:
        """`probe_tokens`: SHORT_TEXT_PROBES tokenized, to check the trimmed text path on."""
        self._device = device
        self._precision = precision
        self._dtype = DTYPES[precision]
        self._model: Any = model.eval().to(device=device, dtype=self._dtype)
        if device.type == "cuda":
            self._model = self._model.to(memory_format=torch.channels_last)
        self._split = split
        # oneDNN (bf16 on the CPU) keeps state per input shape: see models.buckets
        self.fixed_shapes = device.type == "cpu" and precision == "bf16"
        self.short_text = supports_short_text(self._model) and (
            probe_tokens is None or self._short_text_matches(probe_tokens)
        )

    @property
    def precision(self) -> str:
        return self._precision

    @property
    def runs(self) -> dict[Tower, TowerRun]:
        return one_run(self.runtime, self._precision)

    @property
    def model(self) -> Any:
        return self._model

    def image(self, pixels: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            if pixels.dtype == torch.uint8:
                if self._split is None:
                    raise ValueError(
                        "uint8 pixels need a transform that ends in ToTensor, Normalize"
                    )
                if self._device.type == "cuda":
                    pixels = pixels.pin_memory().to(self._device, non_blocking=True)
                pixels = self._split.normalize(pixels)
            return self.pixels(pixels)

    def pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Encode an already normalized (n, 3, H, W) float batch."""
        with torch.inference_mode():
            if self._device.type == "cuda":
                if pixels.device.type == "cpu":
                    # pinned host memory lets the copy run asynchronously to the host thread
                    pixels = pixels.pin_memory().to(self._device, non_blocking=True)
                pixels = pixels.to(dtype=self._dtype, memory_format=torch.channels_last)
            else:
                pixels = pixels.to(dtype=self._dtype)
            return normalized_numpy(self._model.encode_image(pixels))

    def text(self, tokens: torch.Tensor) -> np.ndarray:
        tokens = tokens.to(self._device)
        with torch.inference_mode():
            if self.short_text and tokens.shape[1] < self._model.attn_mask.shape[0]:
                return normalized_numpy(encode_text_trimmed(self._model, tokens))
            return normalized_numpy(self._model.encode_text(tokens))

    def _short_text_matches(self, tokens: torch.Tensor) -> bool:
        """Check on probe texts that the trimmed path reproduces encode_text; else never use it."""
        tokens = tokens.to(self._device)
        with torch.inference_mode():
            full = torch.nn.functional.normalize(self._model.encode_text(tokens).float(), dim=-1)
            trimmed = encode_text_trimmed(self._model, tokens[:, : text_length(tokens)]).float()
            trimmed = torch.nn.functional.normalize(trimmed, dim=-1)
        agreement = float((full * trimmed).sum(dim=-1).min())
        if agreement < SHORT_TEXT_MIN_COSINE[self._precision]:
            logger.warning("short-query text encoding disabled: cosine %.6f", agreement)
            return False
        return True


class TowerPair:
    """The text tower run by one runtime, the image tower by another (models.runtimes.selection
    picks each where it measured fastest); each runtime holds only its own tower's weights."""

    def __init__(self, text: Towers, image: Towers) -> None:
        self._text = text
        self._image = image
        self.short_text = text.short_text
        # the encoder pads or splits both towers' inputs to fixed shapes if either keeps state
        # per shape; every pair `auto` makes (OpenVINO, PyTorch bf16 on the CPU) does
        self.fixed_shapes = text.fixed_shapes or image.fixed_shapes

    @property
    def runtime(self) -> str:
        """`<text runtime>+<image runtime>`, e.g. openvino+torch."""
        return f"{self._text.runtime}+{self._image.runtime}"

    @property
    def precision(self) -> str:
        text, image = self._text.precision, self._image.precision
        return text if text == image else f"{text}+{image}"

    @property
    def runs(self) -> dict[Tower, TowerRun]:
        return {"text": self._text.runs["text"], "image": self._image.runs["image"]}

    @property
    def text_towers(self) -> Towers:
        return self._text

    @property
    def image_towers(self) -> Towers:
        return self._image

    def image(self, pixels: torch.Tensor) -> np.ndarray:
        return self._image.image(pixels)

    def text(self, tokens: torch.Tensor) -> np.ndarray:
        return self._text.text(tokens)


def drop_tower(model: Any, tower: Tower) -> None:
    """Free `tower`'s weights from an open_clip model whose other tower alone is run by it.

    CLIP keeps its text tower as several attributes, CustomTextCLIP as `text`; both keep the
    image tower as `visual`. A model of another shape keeps both (and says so).
    """
    if tower == "image":
        names = ["visual"]
    elif isinstance(model, open_clip.CLIP):
        names = ["transformer", "token_embedding", "positional_embedding", "ln_final"]
        names += ["text_projection", "attn_mask"]
    else:
        names = ["text"]
    if not all(hasattr(model, name) for name in names):
        logger.warning("kept the %s tower of a %s in PyTorch too", tower, type(model).__name__)
        return
    for name in names:
        setattr(model, name, None)


def normalized_numpy(features: torch.Tensor) -> np.ndarray:
    features = features.float()
    features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return features.cpu().numpy().astype(np.float32, copy=False)


def supports_short_text(model: Any) -> bool:
    """open_clip's own text tower with a causal mask, pooled at the end-of-text token."""
    return (
        isinstance(model, open_clip.CLIP)
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) in ("argmax", "eos")
    )


def text_length(tokens: torch.Tensor) -> int:
    """The longest text's length in tokens, its padding (token 0) not counted."""
    return max(int((tokens != 0).sum(dim=1).max()), 1)


def encode_text_trimmed(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """encode_text over tokens cut short of the context length (to the batch's longest text).

    Under the causal mask no position attends to a later one, so cutting padding after the
    longest text leaves every kept position, the end-of-text token included, unchanged.
    """
    length = tokens.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = open_clip.transformer.text_global_pool(
        x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None)
    )
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection if model.text_projection is not None else x


def image_side(model: Any) -> int:
    """The side of the square input the vision tower takes."""
    size = getattr(model.visual, "image_size", 224)
    return int(size[0] if isinstance(size, tuple | list) else size)

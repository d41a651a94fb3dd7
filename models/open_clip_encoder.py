"""The open_clip implementation of the Encoder protocol."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import open_clip
import torch
from PIL import Image

from models.errors import EmptyTextError, ModelLoadError
from models.registry import WeightsSource, model_id_for, resolve_weights

logger = logging.getLogger(__name__)

RANDOM_INIT_SEED = 0  # random weights are seeded so that a restart yields the same model
SHORT_TEXT_MIN_COSINE = 0.99999


def resolve_device(requested: str) -> torch.device:
    """`auto` picks CUDA when available, else CPU; anything else is passed to torch."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as e:
        raise ModelLoadError(f"XMR_DEVICE={requested!r} is not a torch device") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("XMR_DEVICE asks for CUDA, but no CUDA device is available")
    return device


class OpenClipEncoder:
    """An open_clip model with exactly open_clip's own eval transform and tokenizer."""

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[..., torch.Tensor],
        model_id: str,
        device: torch.device,
    ) -> None:
        self._model: Any = model.eval()  # open_clip's CLIP / CustomTextCLIP
        self._preprocess = preprocess
        self._tokenizer = tokenizer
        self._model_id = model_id
        self._device = device
        self._dim = _embedding_dim(model)
        self.short_text = _supports_short_text(self._model) and self._short_text_matches()

    @classmethod
    def load(
        cls,
        model_name: str,
        pretrained: str | None,
        device: str = "auto",
        cache_dir: str | None = None,
    ) -> OpenClipEncoder:
        """Build the model through open_clip's normal loading path."""
        source = resolve_weights(model_name, pretrained, cache_dir)
        torch_device = resolve_device(device)
        try:
            model, preprocess = _create(model_name, source, torch_device, cache_dir)
        except (RuntimeError, OSError, ValueError, KeyError) as e:
            raise ModelLoadError(f"could not load {model_name} with {source.label}: {e}") from e
        tokenizer = open_clip.get_tokenizer(source.open_clip_name or model_name)
        model_id = model_id_for(model_name, source)
        logger.info("loaded %s on %s", model_id, torch_device)
        return cls(model, preprocess, tokenizer, model_id, torch_device)

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def context_length(self) -> int:
        return int(getattr(self._tokenizer, "context_length", 77))

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """open_clip's eval transform for this model: (3, H, W) float tensor."""
        return self._preprocess(image)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self._dim), dtype=np.float32)
        pixels = torch.stack([self._preprocess(image) for image in images])
        return self.encode_pixels(pixels)

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Encode an already preprocessed (n, 3, H, W) batch."""
        with torch.inference_mode():
            features = self._model.encode_image(pixels.to(self._device))
            return _normalized_numpy(features)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        if any(not text.strip() for text in texts):
            raise EmptyTextError("a text to encode is empty or only whitespace")
        tokens = self._tokenizer(list(texts))
        with torch.inference_mode():
            if self.short_text:
                features = _encode_text_trimmed(self._model, tokens.to(self._device))
            else:
                features = self._model.encode_text(tokens.to(self._device))
            return _normalized_numpy(features)

    def _short_text_matches(self) -> bool:
        """Check on probe texts that the trimmed path reproduces encode_text; else never use it."""
        probes = ["a", "a photo of a dog on the beach at sunset", "x " * 200]
        tokens = self._tokenizer(probes).to(self._device)
        with torch.inference_mode():
            full = torch.nn.functional.normalize(self._model.encode_text(tokens).float(), dim=-1)
            trimmed = _encode_text_trimmed(self._model, tokens).float()
            trimmed = torch.nn.functional.normalize(trimmed, dim=-1)
        agreement = float((full * trimmed).sum(dim=-1).min())
        if agreement < SHORT_TEXT_MIN_COSINE:
            logger.warning("short-query text encoding disabled: cosine %.6f", agreement)
            return False
        return True


def _create(
    model_name: str, source: WeightsSource, device: torch.device, cache_dir: str | None
) -> tuple[torch.nn.Module, Any]:
    name = source.open_clip_name or model_name
    pretrained = None if source.open_clip_name or source.kind == "random" else source.value
    with _seeded_init(), _hub_offline(source.kind in ("tag", "hub") and source.cached):
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, device=device, cache_dir=cache_dir
        )
    return model, preprocess


@contextlib.contextmanager
def _seeded_init() -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        yield


@contextlib.contextmanager
def _hub_offline(enabled: bool) -> Iterator[None]:
    """Serve cached hub weights without network round trips (no etag checks and retries)."""
    if not enabled:
        yield
        return
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def _embedding_dim(model: Any) -> int:
    projection = getattr(model, "text_projection", None)
    if isinstance(projection, torch.Tensor):
        return int(projection.shape[-1])
    if isinstance(projection, torch.nn.Linear):
        return int(projection.out_features)
    with torch.inference_mode():
        return int(model.encode_text(torch.zeros((1, 77), dtype=torch.long)).shape[-1])


def _normalized_numpy(features: torch.Tensor) -> np.ndarray:
    features = features.float()
    features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return features.cpu().numpy().astype(np.float32, copy=False)


def _supports_short_text(model: Any) -> bool:
    """open_clip's own text tower with a causal mask, pooled at the end-of-text token."""
    return (
        isinstance(model, open_clip.CLIP)
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) in ("argmax", "eos")
    )


def _encode_text_trimmed(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """encode_text over the real tokens only (the batch cut to its longest, not the context).

    Under the causal mask no position attends to a later one, so cutting the padding after the
    longest text leaves every kept position, the end-of-text token included, unchanged.
    """
    length = max(int((tokens != 0).sum(dim=1).max()), 1)
    tokens = tokens[:, :length]
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

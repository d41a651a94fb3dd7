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
from models.shapes import batch_bucket, batch_chunks, text_length_bucket
from models.transforms import split_transform

logger = logging.getLogger(__name__)

RANDOM_INIT_SEED = 0  # random weights are seeded so that a restart yields the same model
# the trimmed text path equals the full one mathematically; these allow for rounding per dtype
SHORT_TEXT_MIN_COSINE = {"fp32": 0.99999, "fp16": 0.9999, "bf16": 0.999}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX), not by emulation."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)


def resolve_precision(requested: str, device: torch.device, native_bf16: bool | None = None) -> str:
    """`auto`: fp16 on CUDA; on the CPU bf16 where it has bf16 instructions, else fp32.

    bf16 on such a CPU encodes 3-4x faster than fp32 within cosine 0.9999 (BENCHMARKS.md);
    without them it is emulated and slower than fp32.
    """
    if requested == "auto":
        if device.type == "cuda":
            return "fp16"
        native = cpu_has_native_bf16() if native_bf16 is None else native_bf16
        return "bf16" if native else "fp32"
    if requested not in DTYPES:
        raise ModelLoadError(f"XMR_PRECISION={requested!r} is not one of auto, fp32, fp16, bf16")
    if requested == "fp16" and device.type == "cpu":
        raise ModelLoadError("fp16 is for CUDA; on the CPU use fp32 or bf16")
    return requested


class OpenClipEncoder:
    """An open_clip model with exactly open_clip's own eval transform and tokenizer.

    Images go through two stages: `prepare_image` (open_clip's transform, CPU, any thread) and
    `encode_prepared` (the model), so that decoding and preprocessing overlap with inference.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[..., torch.Tensor],
        model_id: str,
        device: torch.device,
        precision: str = "fp32",
    ) -> None:
        self._device = device
        self._precision = resolve_precision(precision, device)
        self._dtype = DTYPES[self._precision]
        self._model: Any = model.eval().to(device=device, dtype=self._dtype)
        if device.type == "cuda":
            self._model = self._model.to(memory_format=torch.channels_last)
        self._preprocess = preprocess
        self._split = split_transform(preprocess)
        self._tokenizer = tokenizer
        self._model_id = model_id
        self._dim = _embedding_dim(model)
        # oneDNN (bf16 on the CPU) keeps state per input shape: see models.shapes
        self.fixed_shapes = device.type == "cpu" and self._precision == "bf16"
        self.short_text = _supports_short_text(self._model) and self._short_text_matches()

    @classmethod
    def load(
        cls,
        model_name: str,
        pretrained: str | None,
        device: str = "auto",
        cache_dir: str | None = None,
        precision: str = "auto",
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
        encoder = cls(model, preprocess, tokenizer, model_id, torch_device, precision)
        logger.info("loaded %s on %s in %s", model_id, torch_device, encoder.precision)
        return encoder

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
    def precision(self) -> str:
        return self._precision

    @property
    def image_size(self) -> int:
        """The side of the square input the vision tower takes."""
        size = getattr(self._model.visual, "image_size", 224)
        return int(size[0] if isinstance(size, tuple | list) else size)

    @property
    def context_length(self) -> int:
        return int(getattr(self._tokenizer, "context_length", 77))

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """open_clip's eval transform for this model: (3, H, W) float tensor."""
        return self._preprocess(image)

    def prepare_image(self, image: Image.Image) -> torch.Tensor:
        """The CPU stage of image encoding; safe to run in any thread.

        open_clip's transform up to its tensor conversion: a (3, H, W) uint8 tensor, which
        `encode_prepared` scales and normalizes for the whole batch at once (a quarter of the
        bytes to hold and to copy to a GPU); see models.transforms. Transforms of another shape
        are run whole.
        """
        if self._split is None:
            return self._preprocess(image)
        return self._split.to_uint8(image)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.encode_prepared([self.prepare_image(image) for image in images])

    def encode_prepared(self, prepared: Sequence[torch.Tensor]) -> np.ndarray:
        """Encode the outputs of `prepare_image` as one batch."""
        if not prepared:
            return np.zeros((0, self._dim), dtype=np.float32)
        batch = torch.stack(list(prepared))
        if batch.dtype != torch.uint8:
            return self.encode_pixels(batch)
        if self._split is None:
            raise ValueError("uint8 pixels need a transform that ends in ToTensor, Normalize")
        with torch.inference_mode():
            if self._device.type == "cuda":
                batch = batch.pin_memory().to(self._device, non_blocking=True)
            return self.encode_pixels(self._split.normalize(batch))

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Encode an already preprocessed (n, 3, H, W) float batch."""
        with torch.inference_mode():
            if self._device.type == "cuda":
                if pixels.device.type == "cpu":
                    # pinned host memory lets the copy run asynchronously to the host thread
                    pixels = pixels.pin_memory().to(self._device, non_blocking=True)
                pixels = pixels.to(dtype=self._dtype, memory_format=torch.channels_last)
            else:
                pixels = pixels.to(dtype=self._dtype)
            if not self.fixed_shapes:
                return _normalized_numpy(self._model.encode_image(pixels))
            # split, not padded: every padded image would cost as much as a real one
            return np.concatenate(
                [
                    _normalized_numpy(self._model.encode_image(pixels[start:stop]))
                    for start, stop in batch_chunks(len(pixels))
                ]
            )

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        if any(not text.strip() for text in texts):
            raise EmptyTextError("a text to encode is empty or only whitespace")
        tokens = self._tokenizer(list(texts)).to(self._device)
        length = _text_length(tokens) if self.short_text else tokens.shape[1]
        if self.fixed_shapes:
            # padding rows and tokens is cheap next to a new shape's cache entry
            tokens = _pad_rows(tokens, batch_bucket(len(texts)))
            length = text_length_bucket(length, tokens.shape[1])
        with torch.inference_mode():
            if length < tokens.shape[1]:
                features = _encode_text_trimmed(self._model, tokens[:, :length])
            else:
                features = self._model.encode_text(tokens)
            return _normalized_numpy(features[: len(texts)])

    def _short_text_matches(self) -> bool:
        """Check on probe texts that the trimmed path reproduces encode_text; else never use it."""
        probes = ["a", "a photo of a dog on the beach at sunset", "x " * 200]
        tokens = self._tokenizer(probes).to(self._device)
        with torch.inference_mode():
            full = torch.nn.functional.normalize(self._model.encode_text(tokens).float(), dim=-1)
            trimmed = _encode_text_trimmed(self._model, tokens[:, : _text_length(tokens)]).float()
            trimmed = torch.nn.functional.normalize(trimmed, dim=-1)
        agreement = float((full * trimmed).sum(dim=-1).min())
        if agreement < SHORT_TEXT_MIN_COSINE[self._precision]:
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


def _text_length(tokens: torch.Tensor) -> int:
    """The longest text's length in tokens, its padding (token 0) not counted."""
    return max(int((tokens != 0).sum(dim=1).max()), 1)


def _pad_rows(tokens: torch.Tensor, rows: int) -> torch.Tensor:
    """`tokens` with copies of its first row appended up to `rows` rows."""
    if rows == len(tokens):
        return tokens
    return torch.cat([tokens, tokens[:1].expand(rows - len(tokens), -1)])


def _encode_text_trimmed(model: Any, tokens: torch.Tensor) -> torch.Tensor:
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

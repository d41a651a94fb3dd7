"""The open_clip implementation of the Encoder protocol."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import open_clip
import torch
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image

from models.buckets import batch_bucket, batch_chunks, text_length_bucket
from models.errors import EmptyTextError, ModelLoadError
from models.memory import release_free_memory
from models.options import LoadOptions
from models.registry import WeightsSource, model_id_for, resolve_weights
from models.runtimes.selection import TowerInputs, build_towers, runtime_plan
from models.text import (
    bound_word_cache,
    fit_to_context,
    longest_token,
    skip_ftfy_on_plain_text,
    token_rows,
)
from models.tower_run import Tower, TowerRun
from models.towers import (
    DTYPES,
    SHORT_TEXT_PROBES,
    TorchTowers,
    TowerPair,
    Towers,
    image_side,
    text_length,
)
from models.transforms import split_transform

logger = logging.getLogger(__name__)

RANDOM_INIT_SEED = 0  # random weights are seeded so that a restart yields the same model


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
    The towers run in PyTorch or, on the CPU, in ONNX Runtime or OpenVINO (models.runtimes).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[..., torch.Tensor],
        model_id: str,
        device: torch.device,
        options: LoadOptions,
    ) -> None:
        """`device` is `options.device` resolved; the towers run as `options` asks."""
        self._device = device
        self._preprocess = preprocess
        self._split = split_transform(preprocess)
        self._tokenizer = tokenizer
        byte_pair = isinstance(tokenizer, SimpleTokenizer) and tokenizer.reduction_fn is None
        self._token_rows = token_rows(tokenizer, byte_pair)
        bound_word_cache(tokenizer)
        skip_ftfy_on_plain_text(tokenizer)
        self._longest_token = longest_token(tokenizer)
        self._model_id = model_id
        self._dim = _embedding_dim(model)
        self._image_size = image_side(model)
        self._logit_scale = _logit_scale(model)
        inputs = TowerInputs(model, self._split, tokenizer(list(SHORT_TEXT_PROBES)), model_id)
        precision = resolve_precision(options.precision, device)
        self._towers: Towers = build_towers(inputs, device, precision, options)
        self.fixed_shapes = self._towers.fixed_shapes
        self.short_text = self._towers.short_text

    @classmethod
    def load(
        cls,
        model_name: str,
        pretrained: str | None,
        options: LoadOptions | None = None,
    ) -> OpenClipEncoder:
        """Build the model through open_clip's normal loading path, then pick its runtime."""
        options = options or LoadOptions()
        cache_dir = options.model_cache_dir
        source = resolve_weights(model_name, pretrained, cache_dir)
        torch_device = resolve_device(options.device)
        runtime_plan(options.runtime, torch_device)  # a bad setting fails before loading
        try:
            # in fp32: on the CPU another runtime is exported from, and checked against, them
            model, preprocess = _create(model_name, source, torch_device, cache_dir)
        except (RuntimeError, OSError, ValueError, KeyError) as e:
            # the inner text names server paths and library internals: the log keeps it
            logger.error("could not load %s with %s: %s", model_name, source.label, e)
            raise ModelLoadError(
                f"could not load {model_name} with {source.label} ({type(e).__name__}); "
                "see the server log"
            ) from e
        tokenizer = open_clip.get_tokenizer(source.open_clip_name or model_name)
        model_id = model_id_for(model_name, source)
        encoder = cls(model, preprocess, tokenizer, model_id, torch_device, options)
        del model  # another runtime holds its own copy; PyTorch's fp32 one is then garbage
        release_free_memory()
        logger.info(
            "loaded %s on %s: %s in %s", model_id, torch_device, encoder.runtime, encoder.precision
        )
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
        return self._towers.precision

    @property
    def runtime(self) -> str:
        """Which runtime runs the towers: torch, onnxruntime or openvino, or two joined by +
        (text first) where each tower runs in its own: openvino+torch."""
        return self._towers.runtime

    @property
    def tower_runs(self) -> dict[Tower, TowerRun]:
        """Per tower, the runtime and precision that run it."""
        return self._towers.runs

    @property
    def torch_model(self) -> Any | None:
        """The open_clip module where PyTorch runs it (another runtime holds its own copy); where
        PyTorch runs one tower only, the module without the other tower's weights."""
        towers = self._towers
        if isinstance(towers, TowerPair):
            towers = (
                towers.image_towers
                if towers.runs["image"].runtime == "torch"
                else towers.text_towers
            )
        return towers.model if isinstance(towers, TorchTowers) else None

    @property
    def image_size(self) -> int:
        """The side of the square input the vision tower takes."""
        return self._image_size

    @property
    def logit_scale(self) -> float:
        """The model's learned temperature: zero-shot logits are this times the cosine."""
        return self._logit_scale

    @property
    def context_length(self) -> int:
        return int(getattr(self._tokenizer, "context_length", 77))

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """open_clip's eval transform for this model: (3, H, W) float tensor."""
        return self._preprocess(image)

    def prepare_image(self, image: Image.Image) -> torch.Tensor:
        """The CPU stage of image encoding; safe to run in any thread.

        open_clip's transform up to its tensor conversion: a (3, H, W) uint8 tensor, which
        the towers scale and normalize for the whole batch at once (a quarter of the bytes to
        hold and to copy to a GPU); see models.transforms. Transforms of another shape are run
        whole.
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
        if batch.dtype == torch.uint8 and self._split is None:
            raise ValueError("uint8 pixels need a transform that ends in ToTensor, Normalize")
        if not self.fixed_shapes:
            return self._towers.image(batch)
        # split, not padded: every padded image would cost as much as a real one
        return np.concatenate(
            [self._towers.image(batch[start:stop]) for start, stop in batch_chunks(len(batch))]
        )

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Encode an already normalized (n, 3, H, W) float batch (open_clip's whole transform).

        PyTorch runs only: another runtime's graph starts from the uint8 pixels.
        """
        towers = self._towers.image_towers if isinstance(self._towers, TowerPair) else self._towers
        if not isinstance(towers, TorchTowers):
            raise ValueError(f"encode_pixels needs the torch runtime, not {self.runtime}")
        return towers.pixels(pixels)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode_tokens(list(self.tokenize(texts)))

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """The text stage, for any thread, torch-free: (n, context_length) int64 token ids,
        each text cut first to what can reach the context (models.text)."""
        if any(not text.strip() for text in texts):
            raise EmptyTextError("a text to encode is empty or only whitespace")
        if not texts:
            return np.zeros((0, self.context_length), dtype=np.int64)
        context, longest = self.context_length, self._longest_token
        return self._token_rows([fit_to_context(text, context, longest) for text in texts])

    def encode_tokens(self, rows: Sequence[np.ndarray | torch.Tensor]) -> np.ndarray:
        """Encode rows of `tokenize`'s output to a float32 (n, dim) array with unit-norm rows."""
        if not rows:
            return np.zeros((0, self._dim), dtype=np.float32)
        tokens = torch.from_numpy(np.stack([np.asarray(row, dtype=np.int64) for row in rows]))
        length = text_length(tokens) if self.short_text else tokens.shape[1]
        if self.fixed_shapes:
            # padding rows and tokens is cheap next to a new shape's cache entry
            tokens = _pad_rows(tokens, batch_bucket(len(rows)))
            length = text_length_bucket(length, tokens.shape[1])
        return self._towers.text(tokens[:, :length])[: len(rows)]


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


def _pad_rows(tokens: torch.Tensor, rows: int) -> torch.Tensor:
    """`tokens` with copies of its first row appended up to `rows` rows."""
    if rows == len(tokens):
        return tokens
    return torch.cat([tokens, tokens[:1].expand(rows - len(tokens), -1)])


def _logit_scale(model: torch.nn.Module) -> float:
    """exp(logit_scale) as CLIP uses it (100 for OpenAI's CLIP); 1 for a model without one."""
    scale = getattr(model, "logit_scale", None)
    if not isinstance(scale, torch.Tensor):
        return 1.0
    return float(scale.detach().float().exp().item())

"""The ONNX export of a model's towers, made once into a folder keyed by the model id, a digest
of its weights and the exporter's versions, and reused by every later start."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch

from models.export_cache import default_cache_dir, export_slug
from models.towers import encode_text_trimmed, image_side
from models.transforms import SplitTransform

logger = logging.getLogger(__name__)

EXPORT_FORMAT = 1  # bump when the exported graphs change
ONNX_OPSET = 18
MAX_EXPORT_BATCH = 4096  # XMR_MAX_BATCH's bound


class _ImageGraph(torch.nn.Module):
    """uint8 pixels to unit rows: ToTensor and Normalize's arithmetic, then encode_image."""

    def __init__(self, model: Any, split: SplitTransform | None) -> None:
        super().__init__()
        self.model = model
        self.mean: torch.Tensor | None = split.mean.clone() if split is not None else None
        self.std: torch.Tensor | None = split.std.clone() if split is not None else None

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.mean is not None and self.std is not None:
            pixels = (pixels.to(torch.float32) / 255 - self.mean) / self.std
        features = self.model.encode_image(pixels)
        return features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class _TextGraph(torch.nn.Module):
    def __init__(self, model: Any, short_text: bool) -> None:
        super().__init__()
        self.model = model
        self.short_text = short_text

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.short_text:
            features = encode_text_trimmed(self.model, tokens)
        else:
            features = self.model.encode_text(tokens)
        return features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@dataclass(frozen=True)
class Export:
    """What the ONNX export of one model's towers depends on, and where it is kept."""

    model: Any
    split: SplitTransform | None
    short_text: bool
    context_length: int
    model_id: str
    cache_dir: Path | None

    @functools.cached_property
    def path(self) -> Path:
        """The export's folder: a digest of the weights is part of its name."""
        root = self.cache_dir or default_cache_dir()
        return export_folder(self.model, self.split, self.short_text, self.model_id, root)

    def folder(self, replace: bool = False) -> tuple[Path, bool]:
        """The folder holding `text.onnx` and `image.onnx`, and whether it was there already.

        Exported when missing, or anew when `replace`.
        """
        folder = self.path
        if replace:
            shutil.rmtree(folder, ignore_errors=True)
        elif (folder / "export.json").is_file():
            return folder, True
        logger.info("exporting %s to ONNX (once; later starts read %s)", self.model_id, folder)
        started = time.perf_counter()
        with made_whole(folder, (folder / "export.json").is_file) as partial:
            _export(self.model, self.split, self.short_text, self.context_length, partial)
        elapsed = time.perf_counter() - started
        logger.info("exported %s to ONNX in %.1f s (%s)", self.model_id, elapsed, folder)
        return folder, False


def export_folder(
    model: Any, split: SplitTransform | None, short_text: bool, model_id: str, root: Path
) -> Path:
    key = json.dumps(
        [
            EXPORT_FORMAT,
            ONNX_OPSET,
            torch.__version__,
            open_clip.__version__,
            model_id,
            weights_digest(model),
            split is not None,
            short_text,
        ]
    )
    return root / f"{export_slug(model_id)}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def weights_digest(model: Any) -> str:
    """A digest of every parameter and buffer: the export belongs to these exact weights."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        flat = tensor.detach().cpu().contiguous().flatten()
        digest.update(flat.view(torch.uint8).numpy().data)
    return digest.hexdigest()


def _export(
    model: Any, split: SplitTransform | None, short_text: bool, context_length: int, folder: Path
) -> None:
    side = image_side(model)
    tokens = torch.ones((2, 8 if short_text else context_length), dtype=torch.long)
    tokens[:, -1] = 2  # argmax pooling traces the same graph whatever the values are
    pixel_type = torch.uint8 if split is not None else torch.float32
    pixels = torch.zeros((2, 3, side, side), dtype=pixel_type)
    batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
    text_dims = {0: batch, 1: torch.export.Dim("length", min=2, max=context_length)}
    with warnings.catch_warnings(), _quiet("onnxscript", "onnx_ir", "torch.onnx", "torch.export"):
        warnings.simplefilter("ignore")
        _onnx_export(
            _TextGraph(model, short_text),
            tokens,
            "tokens",
            text_dims if short_text else {0: batch},
            folder / "text.onnx",
        )
        _onnx_export(_ImageGraph(model, split), pixels, "pixels", {0: batch}, folder / "image.onnx")
    manifest = {"format": EXPORT_FORMAT, "short_text": short_text, "uint8": split is not None}
    (folder / "export.json").write_text(json.dumps(manifest))


def _onnx_export(
    graph: torch.nn.Module, example: torch.Tensor, name: str, dims: dict[int, Any], path: Path
) -> None:
    """torch.export's graph, which keeps the symbolic batch and text length (the TorchScript
    exporter turned the length into a constant inside nn.MultiheadAttention)."""
    program = torch.onnx.export(
        graph.eval(),
        (example,),
        dynamo=True,
        input_names=[name],
        output_names=["vectors"],
        dynamic_shapes={name: dims},
        opset_version=ONNX_OPSET,
        verbose=False,
    )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(path))


@contextlib.contextmanager
def made_whole(target: Path, complete: Callable[[], bool]) -> Iterator[Path]:
    """An empty folder to fill, renamed to `target` once filled: whole or not at all.

    A concurrent maker may have renamed its own first; `complete` says whether `target` is.
    """
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}-{threading.get_ident()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
        try:
            partial.rename(target)
        except OSError:
            if not complete():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """The exporter's libraries log every optimization pass at INFO: keep warnings only."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.setLevel(max(each.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for each, level in zip(loggers, levels, strict=True):
            each.setLevel(level)


def onnx_graphs(folder: Path) -> dict[str, Path]:
    return {tower: folder / f"{tower}.onnx" for tower in ("text", "image")}

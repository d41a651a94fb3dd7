"""open_clip's eval transform, split so that images travel as uint8 and resize fast.

open_clip builds `Compose([Resize, CenterCrop, convert to RGB, ToTensor, Normalize])`. Here
it becomes two stages: a per-image stage that yields a (3, H, W) uint8 tensor, and the
ToTensor/Normalize arithmetic, done once per batch by the encoder. The per-image stage runs
Resize and CenterCrop on the uint8 tensor with PyTorch's antialiased kernels, which are about
about 4 times faster than Pillow's and differ from it by a level of 255 here and there (bounds
in tests/models/test_transforms.py; vectors within cosine 0.99999 on photos, BENCHMARKS.md). A
transform of any other shape keeps Pillow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as tensor_ops
from PIL import Image
from torchvision import transforms

Stage = Callable[[torch.Tensor], torch.Tensor]

_RGB_CONVERSIONS = ("MaybeConvertMode", "_convert_to_rgb")


@dataclass(frozen=True)
class SplitTransform:
    """`to_uint8` per image, then `(pixels / 255 - mean) / std` per batch."""

    to_uint8: Callable[[Image.Image], torch.Tensor]
    mean: torch.Tensor  # (1, 3, 1, 1) float32
    std: torch.Tensor

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """Exactly ToTensor's and Normalize's arithmetic, for a (n, 3, H, W) uint8 batch."""
        mean, std = self.mean.to(batch.device), self.std.to(batch.device)
        return batch.to(torch.float32).div_(255).sub_(mean).div_(std)


def split_transform(preprocess: Callable[[Image.Image], torch.Tensor]) -> SplitTransform | None:
    """open_clip's Compose(..., ToTensor, Normalize) as a SplitTransform; None for other shapes."""
    stages = getattr(preprocess, "transforms", None)
    if not isinstance(stages, list) or len(stages) < 2:
        return None
    to_tensor, normalize = stages[-2], stages[-1]
    if type(to_tensor).__name__ not in ("ToTensor", "MaybeToTensor") or not isinstance(
        normalize, transforms.Normalize
    ):
        return None
    mean = torch.tensor(normalize.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(normalize.std, dtype=torch.float32).view(1, -1, 1, 1)
    geometry = stages[:-2]
    tensor_stages = _tensor_stages(geometry)
    if tensor_stages is not None:
        return SplitTransform(_tensor_pipeline(tensor_stages), mean, std)
    return SplitTransform(_pillow_pipeline(transforms.Compose(geometry)), mean, std)


def pil_to_uint8(image: Image.Image) -> torch.Tensor:
    """An image as a (3, H, W) uint8 tensor, converted to RGB first where needed."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
    return pixels.view(image.size[1], image.size[0], 3).permute(2, 0, 1)


def _tensor_stages(geometry: list[object]) -> list[Stage] | None:
    """The same Resize and CenterCrop on uint8 tensors; None if any stage is something else."""
    stages: list[Stage] = []
    for stage in geometry:
        if isinstance(stage, transforms.Resize):
            stages.append(_resize(stage))
        elif isinstance(stage, transforms.CenterCrop):
            stages.append(_center_crop(list(stage.size)))
        elif _name(stage) not in _RGB_CONVERSIONS:  # the tensor is RGB by construction
            return None
    return stages


def _resize(stage: transforms.Resize) -> Stage:
    size = [stage.size] if isinstance(stage.size, int) else list(stage.size)
    interpolation, max_size = stage.interpolation, stage.max_size

    def resize(pixels: torch.Tensor) -> torch.Tensor:
        # Pillow, which open_clip's transform runs on, always antialiases
        return tensor_ops.resize(
            pixels, size, interpolation=interpolation, max_size=max_size, antialias=True
        )

    return resize


def _center_crop(size: list[int]) -> Stage:
    def center_crop(pixels: torch.Tensor) -> torch.Tensor:
        return tensor_ops.center_crop(pixels, size)

    return center_crop


def _tensor_pipeline(stages: list[Stage]) -> Callable[[Image.Image], torch.Tensor]:
    def to_uint8(image: Image.Image) -> torch.Tensor:
        pixels = pil_to_uint8(image)
        for stage in stages:
            pixels = stage(pixels)
        return pixels.contiguous()

    return to_uint8


def _pillow_pipeline(
    geometry: Callable[[Image.Image], Image.Image],
) -> Callable[[Image.Image], torch.Tensor]:
    def to_uint8(image: Image.Image) -> torch.Tensor:
        return pil_to_uint8(geometry(image)).contiguous()

    return to_uint8


def _name(stage: object) -> str:
    return getattr(stage, "__name__", type(stage).__name__)

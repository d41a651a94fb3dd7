"""The split image transform: uint8 per image, normalized per batch, resized by PyTorch."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from torchvision import transforms

from models import OpenClipEncoder
from models.transforms import pil_to_uint8, split_transform


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(7)
    noise = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in ((30, 90), (200, 200), (480, 640), (1000, 300), (225, 223))
    ]
    smooth = Image.linear_gradient("L").resize((700, 500)).convert("RGB")
    return [*noise, smooth, noise[2].convert("L"), noise[1].convert("RGBA")]


@pytest.mark.parametrize("image_size", [224, 64])
def test_tensor_resize_agrees_with_open_clips_pillow_resize(image_size: int) -> None:
    """open_clip's transform runs Pillow; ours PyTorch's antialiased kernels on uint8.

    The two round differently and run their two passes in different orders, so values differ
    by a level here and there; on pure noise, where bicubic overshoot is clipped between the
    passes, a few pixels of a tall image differ more.
    """
    preprocess = open_clip.image_transform(image_size, is_train=False)
    split = split_transform(preprocess)
    assert split is not None
    geometry = transforms.Compose(preprocess.transforms[:-2])
    for image in _images():
        ours = split.to_uint8(image)
        pillow = pil_to_uint8(geometry(image))
        assert ours.dtype == torch.uint8
        assert ours.shape == pillow.shape == (3, image_size, image_size)
        difference = (ours.int() - pillow.int()).abs().float()
        assert float(difference.mean()) <= 0.3
        assert float((difference > 1).float().mean()) <= 0.01
        expected = preprocess(image)
        normalized = split.normalize(ours.unsqueeze(0))[0]
        assert float((normalized - expected).abs().mean()) <= 0.3 / 255 / 0.26


def test_vectors_agree_with_open_clips_transform(
    tiny_encoder: OpenClipEncoder, torch_encoder: OpenClipEncoder
) -> None:
    whole = torch.stack([tiny_encoder.preprocess(image) for image in _images()])
    ours = tiny_encoder.encode_prepared([tiny_encoder.prepare_image(i) for i in _images()])
    cosines = (ours * torch_encoder.encode_pixels(whole)).sum(axis=1)
    assert float(cosines.min()) >= 0.9999


def test_unknown_stages_keep_pillow_exactly() -> None:
    preprocess = open_clip.image_transform(64, is_train=False)
    flipped = transforms.Compose([transforms.RandomHorizontalFlip(p=1.0), *preprocess.transforms])
    split = split_transform(flipped)
    assert split is not None
    image = _images()[2]
    torch.testing.assert_close(
        split.normalize(split.to_uint8(image).unsqueeze(0))[0], flipped(image), atol=1e-6, rtol=0
    )


def test_transforms_without_totensor_normalize_are_not_split() -> None:
    assert split_transform(transforms.Compose([transforms.Resize(64)])) is None
    assert split_transform(lambda image: torch.zeros(3, 8, 8)) is None  # type: ignore[arg-type]

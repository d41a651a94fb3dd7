"""models/ turns images and texts into L2-normalized vectors with a CLIP-style dual encoder.
Nothing here imports from app/ or index/.

Importing this package does not import PyTorch: `OpenClipEncoder` (and with it torch and
open_clip) is loaded on first use, so that app/ modules which only need the protocol, the
errors and image decoding stay free of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from models.encoder import Encoder
from models.errors import (
    EmptyTextError,
    ImageDecodeError,
    ImageTooLargeError,
    ModelError,
    ModelLoadError,
    UnsupportedImageFormatError,
)
from models.images import decode_image
from models.threads import use_threads

if TYPE_CHECKING:
    from models.open_clip_encoder import OpenClipEncoder

__all__ = [
    "EmptyTextError",
    "Encoder",
    "ImageDecodeError",
    "ImageTooLargeError",
    "ModelError",
    "ModelLoadError",
    "OpenClipEncoder",
    "UnsupportedImageFormatError",
    "decode_image",
    "use_threads",
]


def __getattr__(name: str) -> Any:
    if name == "OpenClipEncoder":
        from models.open_clip_encoder import OpenClipEncoder

        return OpenClipEncoder
    raise AttributeError(f"module 'models' has no attribute {name!r}")

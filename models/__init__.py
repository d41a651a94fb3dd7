"""Turn images and texts into L2-normalized vectors with a CLIP-style dual encoder."""

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
]

"""Decode uploaded bytes into RGB Pillow images, safely and with EXIF orientation applied."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from models.errors import ImageDecodeError, ImageTooLargeError, UnsupportedImageFormatError

ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"})
DEFAULT_MAX_PIXELS = 50_000_000  # about 7000x7000; larger images are refused before decoding

CONTENT_TYPES = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}

_BACKGROUND = (255, 255, 255)


def sniff_image_format(data: bytes) -> str:
    """The Pillow format name of `data`, read without decoding pixels; else ImageDecodeError."""
    if not data:
        raise ImageDecodeError("the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image_format = image.format or "unknown"
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(
            f"the image declares too many pixels to decode safely ({e})"
        ) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError("the file is not a recognised image") from e
    if image_format not in ALLOWED_FORMATS:
        allowed = ", ".join(sorted(ALLOWED_FORMATS - {"MPO"}))
        raise UnsupportedImageFormatError(
            f"image format {image_format} is not accepted (allowed: {allowed})"
        )
    return image_format


def decode_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None
) -> Image.Image:
    """Decode `data` into an RGB image: first frame, EXIF-rotated, alpha flattened onto white.

    With `draft_size`, a JPEG is decoded by libjpeg at 1/2, 1/4 or 1/8 scale where both sides
    stay at least `draft_size` pixels: several times faster for photos much larger than the
    model input, which is resized down from it anyway.
    """
    sniff_image_format(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width <= 0 or height <= 0:
                    raise ImageDecodeError("the image has no pixels")
                if width * height > max_pixels:
                    raise ImageTooLargeError(
                        f"the image declares {width}x{height} pixels, more than the "
                        f"{max_pixels} allowed"
                    )
                image.seek(0)
                if draft_size is not None and image.format in ("JPEG", "MPO"):
                    image.draft(image.mode, (draft_size, draft_size))
                image.load()
                # a new image (turned, or copied), so it outlives the file closing here
                oriented = ImageOps.exif_transpose(image)
                return oriented if oriented.mode == "RGB" else to_rgb(oriented)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(
            f"the image declares too many pixels to decode safely ({e})"
        ) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageDecodeError(f"the image is truncated or corrupt ({e})") from e


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, scaling high-bit-depth data instead of clipping it."""
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _high_depth_to_rgb(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = float(pixels.max()) if pixels.size and pixels.max() > 1.0 else 1.0
        scaled = np.clip(pixels / top, 0.0, 1.0) * 255.0
    else:
        # 16-bit data (PNG/TIFF) opens as I or I;16; values above 255 mean the full 16-bit range.
        scale = 257.0 if pixels.size and pixels.max() > 255 else 1.0
        scaled = np.clip(pixels / scale, 0.0, 255.0)
    gray = Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    return gray.convert("RGB")

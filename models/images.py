"""Decode uploaded bytes into RGB Pillow images, safely and with EXIF orientation applied."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError

from models.errors import ImageDecodeError, ImageTooLargeError, UnsupportedImageFormatError

# HEIC/HEIF (what phones save) through libheif; AVIF is Pillow's own (Pillow 11.2 and later).
# Registered once, at import: Pillow's plugin registry is process-wide.
pillow_heif.register_heif_opener()

ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF"})
DEFAULT_MAX_PIXELS = 50_000_000  # about 7000x7000; larger images are refused before decoding
# what the decoded samples may take: a 16-bit RGBA pixel is 8 bytes, an 8-bit RGB one 3
DEFAULT_MAX_DECODED_BYTES = 256 * 2**20

CONTENT_TYPES = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "HEIF": "image/heic",
    "AVIF": "image/avif",
}


_BACKGROUND = (255, 255, 255)


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header declares, read without decoding pixels."""

    format: str
    width: int
    height: int
    bytes_per_pixel: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decoded_bytes(self) -> int:
        return self.pixels * self.bytes_per_pixel


def sniff_image_format(data: bytes) -> str:
    """The Pillow format name of `data`, read without decoding pixels; else ImageDecodeError."""
    return read_header(data).format


def read_header(data: bytes) -> ImageHeader:
    """Format, size and sample size of `data` from its header; else ImageDecodeError."""
    if not data:
        raise ImageDecodeError("the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image_format = image.format or "unknown"
                width, height = image.size
                bytes_per_pixel = _bytes_per_pixel(image)
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(
            f"the image declares too many pixels to decode safely ({e})"
        ) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, RuntimeError) as e:
        # RuntimeError: libavif's and libheif's plugins report a broken file so
        raise ImageDecodeError("the file is not a recognised image") from e
    if image_format not in ALLOWED_FORMATS:
        allowed = ", ".join(sorted(ALLOWED_FORMATS - {"MPO"}))
        raise UnsupportedImageFormatError(
            f"image format {image_format} is not accepted (allowed: {allowed})"
        )
    return ImageHeader(image_format, width, height, bytes_per_pixel)


def _bytes_per_pixel(image: Image.Image) -> int:
    """Bytes of one decoded pixel, at the sample size the file stores (16-bit counts twice)."""
    if image.mode in ("I", "F"):
        return 4
    if image.mode.startswith("I;16"):
        return 2
    sixteen_bit = any(";16" in str(tile.args) for tile in getattr(image, "tile", ()))
    return len(image.getbands()) * (2 if sixteen_bit else 1)


def check_decodable(
    header: ImageHeader, max_pixels: int, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
) -> None:
    """ImageTooLargeError for an image whose pixels or decoded bytes pass the limits."""
    if header.width <= 0 or header.height <= 0:
        raise ImageDecodeError("the image has no pixels")
    size = f"{header.width}x{header.height}"
    if header.pixels > max_pixels:
        raise ImageTooLargeError(
            f"the image declares {size} pixels, more than the {max_pixels} allowed"
        )
    if header.decoded_bytes > max_decoded_bytes:
        raise ImageTooLargeError(
            f"the image would take {header.decoded_bytes / 2**20:.0f} MB decoded ({size}, "
            f"{header.bytes_per_pixel} bytes a pixel), more than the "
            f"{max_decoded_bytes / 2**20:.0f} MB allowed"
        )


def decode_image(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> Image.Image:
    """Decode `data` into an RGB image: first frame, EXIF-rotated, alpha flattened onto white.

    With `draft_size`, a JPEG is decoded by libjpeg at 1/2, 1/4 or 1/8 scale where both sides
    stay at least `draft_size` pixels: several times faster for photos much larger than the
    model input, which is resized down from it anyway. Other formats are decoded whole and
    then reduced by a whole factor to that size, before any conversion copies them.
    """
    check_decodable(read_header(data), max_pixels, max_decoded_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked above
            with Image.open(io.BytesIO(data)) as image:
                image.seek(0)
                if draft_size is not None and image.format in ("JPEG", "MPO"):
                    image.draft(image.mode, (draft_size, draft_size))
                image.load()
                loaded = image if draft_size is None else reduce_to(image, draft_size)
                # a new image (turned, or copied), so it outlives the file closing here
                oriented = ImageOps.exif_transpose(loaded)
                return oriented if oriented.mode == "RGB" else to_rgb(oriented)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(
            f"the image declares too many pixels to decode safely ({e})"
        ) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, RuntimeError) as e:
        raise ImageDecodeError(f"the image is truncated or corrupt ({e})") from e


def reduce_to(image: Image.Image, size: int) -> Image.Image:
    """`image` shrunk by the largest whole factor that keeps both sides at least `size`.

    A box filter, like libjpeg's draft scaling; the model's own antialiased resize follows.
    """
    factor = min(image.size) // size
    if factor < 2:
        return image
    try:
        return image.reduce(factor)
    except ValueError:  # a mode reduce does not handle (palette, 1-bit): keep it whole
        return image


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

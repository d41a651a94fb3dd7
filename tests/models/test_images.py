"""Image decoding: every accepted format, orientation, colour modes, and refusals."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from models.errors import ImageDecodeError, ImageTooLargeError, UnsupportedImageFormatError
from models.images import decode_image, sniff_image_format
from tests.conftest import image_bytes


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "HEIF", "AVIF"])
def test_common_formats_decode_to_rgb(fmt: str) -> None:
    image = decode_image(image_bytes((200, 30, 30), fmt, (40, 30)))
    assert image.mode == "RGB"
    assert image.size == (40, 30)
    r, g, b = image.getpixel((20, 15))
    assert r > 150 and g < 80 and b < 80


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (20, 20), c) for c in ("red", "blue", "green")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    image = decode_image(buffer.getvalue())
    r, g, b = image.getpixel((10, 10))
    assert r > 200 and b < 50


def test_exif_orientation_is_applied() -> None:
    source = Image.new("RGB", (60, 20), "white")
    source.paste(Image.new("RGB", (10, 20), "black"), (0, 0))  # black strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    buffer = io.BytesIO()
    source.save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
    image = decode_image(buffer.getvalue())
    assert image.size == (20, 60)
    assert sum(image.getpixel((10, 2))) < 120  # the strip is now at the top
    assert sum(image.getpixel((10, 57))) > 600


def test_palette_with_transparency_is_flattened_on_white() -> None:
    paletted = Image.new("P", (10, 10), 0)
    paletted.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    paletted.paste(1, (0, 0, 5, 10))
    buffer = io.BytesIO()
    paletted.save(buffer, "PNG", transparency=0)  # palette entry 0 (black) is transparent
    image = decode_image(buffer.getvalue())
    assert image.getpixel((2, 5)) == (255, 0, 0)
    assert image.getpixel((8, 5)) == (255, 255, 255)


def test_rgba_transparent_pixels_become_white() -> None:
    image = decode_image(image_bytes((0, 0, 255, 0), "PNG", mode="RGBA"))
    assert image.getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_jpeg_converts_to_rgb() -> None:
    image = decode_image(image_bytes((0, 255, 255, 0), "JPEG", mode="CMYK"))
    r, g, b = image.getpixel((5, 5))
    assert image.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_16_bit_grayscale_is_scaled_not_clipped() -> None:
    pixels = np.full((8, 8), 32768, dtype=np.uint16)  # mid grey in 16 bits
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    image = decode_image(buffer.getvalue())
    assert 120 <= image.getpixel((4, 4))[0] <= 135


def test_empty_bytes_are_refused() -> None:
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")


def test_not_an_image_is_refused() -> None:
    with pytest.raises(ImageDecodeError, match="not a recognised image"):
        decode_image(b"hello, this is text")


def test_truncated_png_is_refused() -> None:
    data = image_bytes("red", "PNG", (200, 200))
    with pytest.raises(ImageDecodeError):
        decode_image(data[: len(data) // 2])


def test_format_outside_allow_list_is_refused() -> None:
    with pytest.raises(UnsupportedImageFormatError, match="PPM"):
        sniff_image_format(image_bytes("red", "PPM"))


def _png_header_only(width: int, height: int, bit_depth: int = 8, color_type: int = 2) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding() -> None:
    with pytest.raises(ImageTooLargeError, match="pixels"):
        decode_image(_png_header_only(20000, 20000))
    with pytest.raises(ImageTooLargeError, match="9000x9000"):
        decode_image(_png_header_only(9000, 9000))  # under Pillow's own limit, over ours


def test_jpeg_draft_decodes_smaller_but_never_below_the_asked_size() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (1200, 1600, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    full = decode_image(buffer.getvalue())
    drafted = decode_image(buffer.getvalue(), draft_size=448)
    assert full.size == (1600, 1200)
    assert drafted.size == (800, 600)  # libjpeg's 1/2 scale: 1/4 would give 300 < 448
    assert drafted.mode == "RGB"
    small = decode_image(buffer.getvalue(), draft_size=2000)
    assert small.size == (1600, 1200)  # never upscaled, never below the asked size


def test_other_formats_are_reduced_by_whole_factors_never_below_the_asked_size() -> None:
    data = image_bytes((10, 200, 10), "PNG", (900, 700))
    assert decode_image(data, draft_size=100).size == (129, 100)  # 700 // 100 = 7, edges kept
    assert decode_image(data, draft_size=448).size == (900, 700)  # 700 // 448 = 1: whole
    assert decode_image(data).size == (900, 700)


def test_decoded_bytes_are_bounded_by_the_bytes_of_a_pixel() -> None:
    """A 16-bit RGBA pixel takes 8 bytes: fewer pixels than the pixel cap may still be too many."""
    rgba16 = _png_header_only(3000, 3000, bit_depth=16, color_type=6)
    with pytest.raises(ImageTooLargeError, match="69 MB decoded .3000x3000, 8 bytes a pixel"):
        decode_image(rgba16, max_decoded_bytes=64 * 2**20)
    rgb8 = image_bytes("red", "PNG", (3000, 3000))  # 26 MB decoded: under the same bound
    assert decode_image(rgb8, max_decoded_bytes=64 * 2**20).size == (3000, 3000)

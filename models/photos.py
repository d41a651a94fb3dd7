"""What a photo says besides its pixels, and a small rendition of it for result grids.

`photo_facts` reads the capture date, camera, lens, place and size from the file's EXIF (JPEG,
HEIC, AVIF, WebP, PNG and TIFF keep it there), without decoding pixels; `make_thumbnail`
renders an already decoded (and turned upright) image at THUMBNAIL_SIDE on its longest side,
as JPEG.
A photo's EXIF is whatever the camera or the last editor wrote: every field is optional, and a
malformed one is left out, never an error.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from models.images import decode_image

THUMBNAIL_SIDE = 384  # pixels on the longest side
THUMBNAIL_QUALITY = 80  # JPEG; a 384 px photo is about 15-35 KB
MAX_TEXT_CHARS = 64  # camera and lens names are cut to this
EXIF_MAX_BYTES = 512  # what the `exif` object can take of an item's metadata, at most

_FORMATS = {
    "JPEG": "jpeg",
    "MPO": "jpeg",
    "PNG": "png",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tiff",
    "HEIF": "heic",
    "AVIF": "avif",
}
# EXIF tags (CIPA DC-008): IFD0, the Exif IFD and the GPS IFD
_MAKE, _MODEL, _ORIENTATION = 0x010F, 0x0110, 0x0112
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_DATE_ORIGINAL, _DATE_DIGITIZED = 0x9003, 0x9004
_OFFSET_ORIGINAL, _OFFSET_DIGITIZED = 0x9011, 0x9012
_LENS_MAKE, _LENS_MODEL = 0xA433, 0xA434
_GPS_LAT_REF, _GPS_LAT, _GPS_LON_REF, _GPS_LON = 1, 2, 3, 4
_EXIF_DATE = re.compile(r"^(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_OFFSET = re.compile(r"^[+-]\d{2}:\d{2}$")
_TURNED = (5, 6, 7, 8)  # orientations shown with width and height swapped


@dataclass(frozen=True)
class Photo:
    """A photo's facts (the `exif` metadata object) and its thumbnail (JPEG)."""

    facts: dict[str, Any]
    thumbnail: bytes


def describe(data: bytes, image: Image.Image) -> Photo:
    """The photo `data` is, from its header and its decoded (upright) `image`, which must be
    decoded at `draft_for_photo` or larger."""
    return Photo(photo_facts(data), make_thumbnail(image))


def draft_for_photo(draft_size: int | None) -> int | None:
    """A decoding size (see `decode_image`) large enough for the model and the thumbnail."""
    return None if draft_size is None else max(draft_size, THUMBNAIL_SIDE)


def thumbnail_of(data: bytes) -> bytes:
    """The thumbnail of an image's bytes (one stored before thumbnails were made)."""
    return make_thumbnail(decode_image(data, draft_size=THUMBNAIL_SIDE))


def make_thumbnail(image: Image.Image, side: int = THUMBNAIL_SIDE) -> bytes:
    """`image` (RGB, upright) shrunk to `side` on its longest side (never enlarged), as JPEG.

    Reduced by a whole factor first (a box filter, cheap), then resized bicubically, and
    encoded as JPEG: a fifth of what a Lanczos pass and WebP cost at indexing (BENCHMARKS.md).
    """
    longest = max(image.size)
    small = image
    if longest > side:
        factor = longest // side
        reduced = image.reduce(factor) if factor > 1 else image
        scale = side / longest
        small = shrink(
            reduced, max(1, round(image.width * scale)), max(1, round(image.height * scale))
        )
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    return buffer.getvalue()


def shrink(image: Image.Image, width: int, height: int) -> Image.Image:
    """`image` resized down to `width` x `height`, bicubic and antialiased as Pillow's resize
    (within two levels in 255), by torchvision's vectorized uint8 kernel: `make_thumbnail`
    4.14 -> 2.39 ms on 12 MP photos (BENCHMARKS.md, thumbnails)."""
    # imported here: app/ reads photo facts through this module without loading PyTorch
    # (tests/app/test_layering.py); thumbnails are made where the model runs anyway
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as tensor_ops

    from models.transforms import pil_to_uint8

    pixels = tensor_ops.resize(
        pil_to_uint8(image),
        [height, width],
        interpolation=InterpolationMode.BICUBIC,
        antialias=True,
    )
    return Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy())


def photo_facts(source: bytes | Path) -> dict[str, Any]:
    """taken_at, camera, lens, gps, width, height and format, where the file (its bytes, or
    a path) says them; only its header is read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # corrupt EXIF warns; it is left out below
            opened = io.BytesIO(source) if isinstance(source, bytes) else source
            with Image.open(opened) as image:
                facts: dict[str, Any] = {"format": _FORMATS.get(image.format or "", "unknown")}
                exif = _exif_of(image)
                width, height = image.size
    except Exception:  # the image itself is refused where it is decoded
        return {}
    if exif is not None:
        facts.update(_exif_facts(exif))
    if _orientation(exif) in _TURNED:
        width, height = height, width
    facts["width"], facts["height"] = width, height
    return facts


def _exif_of(image: Image.Image) -> Image.Exif | None:
    try:
        exif = image.getexif()
    except Exception:  # a malformed EXIF block: the photo is still a photo
        return None
    return exif if len(exif) else None


def _orientation(exif: Image.Exif | None) -> int:
    if exif is None:
        return 1
    value = exif.get(_ORIENTATION, 1)
    return value if isinstance(value, int) else 1


def _exif_facts(exif: Image.Exif) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    details = _ifd(exif, _EXIF_IFD)
    taken_at = _taken_at(details)
    if taken_at is not None:
        facts["taken_at"] = taken_at
    camera = _camera(_text(exif.get(_MAKE)), _text(exif.get(_MODEL)))
    if camera:
        facts["camera"] = camera
    lens = _camera(_text(details.get(_LENS_MAKE)), _text(details.get(_LENS_MODEL)))
    if lens:
        facts["lens"] = lens
    gps = _gps(_ifd(exif, _GPS_IFD))
    if gps is not None:
        facts["gps"] = gps
    return facts


def _ifd(exif: Image.Exif, tag: int) -> dict[int, Any]:
    try:
        return dict(exif.get_ifd(tag))
    except Exception:  # a broken pointer to a sub-IFD
        return {}


def _taken_at(details: dict[int, Any]) -> str | None:
    """DateTimeOriginal (else DateTimeDigitized) in ISO 8601, with its offset when recorded.

    Local time as the camera's clock showed it: that is what "taken in June" means.
    """
    for date_tag, offset_tag in (
        (_DATE_ORIGINAL, _OFFSET_ORIGINAL),
        (_DATE_DIGITIZED, _OFFSET_DIGITIZED),
    ):
        match = _EXIF_DATE.match(_text(details.get(date_tag)))
        if match is None:
            continue
        year, month, day, hour, minute, second = (int(part) for part in match.groups())
        if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
            continue  # "0000:00:00 00:00:00" is what cameras write for no date
        offset = _text(details.get(offset_tag))
        stamp = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{min(second, 59):02d}"
        return stamp + (offset if _OFFSET.match(offset) else "")
    return None


def _camera(make: str, model: str) -> str:
    """ "Canon" + "Canon EOS R5" is "Canon EOS R5", not "Canon Canon EOS R5"."""
    name = model if model.lower().startswith(make.lower()) else f"{make} {model}".strip()
    return name[:MAX_TEXT_CHARS]


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return ""
    return " ".join(value.replace("\x00", " ").split())


def _gps(gps: dict[int, Any]) -> dict[str, float] | None:
    lat = _degrees(gps.get(_GPS_LAT), _text(gps.get(_GPS_LAT_REF)), "S")
    lon = _degrees(gps.get(_GPS_LON), _text(gps.get(_GPS_LON_REF)), "W")
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return {"lat": round(lat, 6), "lon": round(lon, 6)}


def _degrees(value: Any, ref: str, negative: str) -> float | None:
    """Degrees, minutes and seconds (three rationals) as signed decimal degrees."""
    try:
        degrees, minutes, seconds = (float(part) for part in value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    total = degrees + minutes / 60 + seconds / 3600
    if total != total:  # NaN from a 0/0 rational
        return None
    return -total if ref.upper() == negative else total

"""Photos for the tests, made as cameras make them: EXIF with a date, camera, lens, place and
orientation; JPEGs with the grain of a photo."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, TiffImagePlugin

ORIENTATION, EXIF_IFD, GPS_IFD = 0x0112, 0x8769, 0x8825


def camera_exif(
    taken: str | None = None,
    offset: str | None = None,
    gps: tuple[float, float] | None = None,
    orientation: int | None = None,
) -> bytes:
    """EXIF as a camera writes it: Make/Model, DateTimeOriginal (+ offset), lens, GPS."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "Canon EOS R5"
    if orientation is not None:
        exif[ORIENTATION] = orientation
    details = exif.get_ifd(EXIF_IFD)
    details[0xA434] = "RF24-105mm F4 L IS USM"
    if taken is not None:
        details[0x9003] = taken
    if offset is not None:
        details[0x9011] = offset
    if gps is not None:
        place = exif.get_ifd(GPS_IFD)
        lat, lon = gps
        place[1], place[2] = ("N" if lat >= 0 else "S"), _dms(lat)
        place[3], place[4] = ("E" if lon >= 0 else "W"), _dms(lon)
    return exif.tobytes()


def _dms(value: float) -> tuple[TiffImagePlugin.IFDRational, ...]:
    value = abs(value)
    degrees, minutes = int(value), int(abs(value) * 60) % 60
    seconds = round((value - degrees - minutes / 60) * 3600 * 1000)
    rational = TiffImagePlugin.IFDRational
    return rational(degrees, 1), rational(minutes, 1), rational(seconds, 1000)


def encoded(image: Image.Image, fmt: str, exif: bytes | None = None, **options: object) -> bytes:
    buffer = io.BytesIO()
    if exif is not None:
        options["exif"] = exif
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noisy_photo(seed: int, size: tuple[int, int] = (1600, 1200)) -> bytes:
    """A JPEG that compresses like a photo, not like a flat colour."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    noise = rng.normal(0, 12, (size[1], size[0], 3))
    pixels = np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    return encoded(Image.fromarray(pixels), "JPEG", quality=90)

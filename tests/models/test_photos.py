"""Photo facts from EXIF, as cameras and editors write it (and break it), and thumbnails."""

from __future__ import annotations

import io
import random
import warnings

import numpy as np
import pytest
from PIL import Image

from models.photos import THUMBNAIL_SIDE, make_thumbnail, photo_facts, shrink
from tests.photos import camera_exif, encoded


@pytest.mark.parametrize("fmt", ["JPEG", "HEIF", "AVIF", "WEBP", "PNG", "TIFF"])
def test_every_format_that_keeps_exif_gives_the_same_facts(fmt: str) -> None:
    exif = camera_exif("2025:06:14 10:22:31", "+02:00", gps=(-33.8568, 151.2153))
    facts = photo_facts(encoded(Image.new("RGB", (120, 80), "red"), fmt, exif))
    assert facts["taken_at"] == "2025-06-14T10:22:31+02:00"
    assert (facts["camera"], facts["lens"]) == ("Canon EOS R5", "RF24-105mm F4 L IS USM")
    assert facts["gps"] == {"lat": -33.8568, "lon": 151.2153}
    assert (facts["width"], facts["height"]) == (120, 80)


def test_a_photo_without_exif_has_its_size_and_format_only() -> None:
    data = encoded(Image.new("RGB", (30, 20), "red"), "PNG")
    assert photo_facts(data) == {"format": "png", "width": 30, "height": 20}


def test_a_turned_photo_reports_its_size_as_shown() -> None:
    data = encoded(Image.new("RGB", (120, 80), "red"), "JPEG", camera_exif(orientation=8))
    assert (photo_facts(data)["width"], photo_facts(data)["height"]) == (80, 120)


@pytest.mark.parametrize(
    ("taken", "offset", "expected"),
    [
        ("2025:06:14 10:22:31", None, "2025-06-14T10:22:31"),
        ("2025:06:14 10:22:31", "-05:00", "2025-06-14T10:22:31-05:00"),
        ("2025:06:14 10:22:31", "   ", "2025-06-14T10:22:31"),  # a blank offset: none
        ("0000:00:00 00:00:00", None, None),  # what cameras write for no date
        ("2025:13:01 10:00:00", None, None),
        ("yesterday", None, None),
    ],
)
def test_capture_dates_are_read_as_written_or_left_out(
    taken: str, offset: str | None, expected: str | None
) -> None:
    facts = photo_facts(encoded(Image.new("RGB", (8, 8)), "JPEG", camera_exif(taken, offset)))
    assert facts.get("taken_at") == expected


def test_broken_exif_is_left_out_never_an_error() -> None:
    exif = camera_exif("2025:06:14 10:22:31", gps=(1.5, 2.5))
    good = encoded(Image.new("RGB", (40, 30), "red"), "JPEG", exif)
    at = good.find(b"Exif\x00\x00")
    rng = random.Random(0)
    pillow_failed = 0
    for _ in range(300):  # bytes of the EXIF block changed at random, as a bad editor does
        broken = bytearray(good)
        for _ in range(6):
            broken[rng.randrange(at + 6, at + 300)] = rng.randrange(256)
        pillow_failed += not _pillow_reads_all_of(bytes(broken))
        facts = photo_facts(bytes(broken))  # {}: Pillow cannot open the file at all
        assert facts == {} or (facts["width"], facts["height"]) == (40, 30)
    assert pillow_failed > 0  # some of these break Pillow's own EXIF reading
    assert photo_facts(b"not an image") == {}


def _pillow_reads_all_of(data: bytes) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exif = Image.open(io.BytesIO(data)).getexif()
            for ifd in (0x8769, 0x8825):
                [str(value) for value in exif.get_ifd(ifd).values()]
    except Exception:
        return False
    return True


def test_make_and_model_are_not_said_twice() -> None:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "NIKON CORPORATION", "NIKON Z 6"
    facts = photo_facts(encoded(Image.new("RGB", (8, 8)), "JPEG", exif.tobytes()))
    assert facts["camera"] == "NIKON CORPORATION NIKON Z 6"
    exif[0x010F], exif[0x0110] = "Apple", "iPhone 15 Pro\x00"
    facts = photo_facts(encoded(Image.new("RGB", (8, 8)), "JPEG", exif.tobytes()))
    assert facts["camera"] == "Apple iPhone 15 Pro"
    exif[0x010F], exif[0x0110] = "Canon", "Canon EOS R5"
    facts = photo_facts(encoded(Image.new("RGB", (8, 8)), "JPEG", exif.tobytes()))
    assert facts["camera"] == "Canon EOS R5"


@pytest.mark.parametrize(
    ("size", "expected"), [((1600, 900), (384, 216)), ((100, 300), (100, 300))]
)
def test_thumbnails_fit_the_side_and_are_never_enlarged(
    size: tuple[int, int], expected: tuple[int, int]
) -> None:
    thumbnail = Image.open(io.BytesIO(make_thumbnail(Image.new("RGB", size, "red"))))
    assert thumbnail.format == "JPEG" and thumbnail.size == expected
    assert max(expected) <= THUMBNAIL_SIDE or max(size) <= THUMBNAIL_SIDE


@pytest.mark.parametrize(("size", "to"), [((640, 480), (384, 288)), ((501, 1003), (192, 384))])
def test_thumbnails_are_shrunk_as_pillow_shrinks_them(
    size: tuple[int, int], to: tuple[int, int]
) -> None:
    """The thumbnail's resize runs on torchvision's kernel for speed; what it draws is Pillow's
    antialiased bicubic, to within a level or two of 255 (never a blur or an aliased shrink)."""
    rng = np.random.default_rng(7)
    coarse = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    photo = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
    ours = np.asarray(shrink(photo, *to), dtype=np.int16)
    pillows = np.asarray(photo.resize(to, Image.Resampling.BICUBIC), dtype=np.int16)
    assert ours.shape == pillows.shape
    assert np.abs(ours - pillows).max() <= 2
    assert np.abs(ours - pillows).mean() < 0.3

"""The folder walk every indexing path shares: which files it takes as images."""

from __future__ import annotations

from pathlib import Path

from xmr.files import find_images


def test_the_folder_walk_takes_phone_formats_too(tmp_path: Path) -> None:
    names = ["a.jpg", "b.JPEG", "c.heic", "d.HEIF", "e.avif", "f.png", "notes.txt", "g.mov"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    found = sorted(f.item_id for f in find_images([tmp_path], recursive=False))
    assert found == ["a.jpg", "b.JPEG", "c.heic", "d.HEIF", "e.avif", "f.png"]

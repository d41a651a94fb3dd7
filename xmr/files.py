"""Finding image files to index, and their content hashes (shared by every indexing path)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)


class MissingPathError(Exception):
    """A path given to index does not exist."""


@dataclass(frozen=True)
class ImageFile:
    path: Path
    item_id: str  # the path relative to the folder it was found in, with / separators


def find_images(paths: Sequence[Path], recursive: bool) -> list[ImageFile]:
    """Image files named directly, or found in folders (their subfolders with `recursive`)."""
    found: dict[Path, ImageFile] = {}
    for given in paths:
        if given.is_file():
            found.setdefault(given.resolve(), ImageFile(given, given.name))
        elif given.is_dir():
            pattern = "**/*" if recursive else "*"
            for path in sorted(given.glob(pattern)):
                if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                    item_id = path.relative_to(given).as_posix()
                    found.setdefault(path.resolve(), ImageFile(path, item_id))
        else:
            raise MissingPathError(f"{given} does not exist")
    return list(found.values())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

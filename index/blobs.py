"""Content-addressed storage of the original image bytes, so they can be served back."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

from index.errors import StorageError
from index.files import write_atomic

_EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
    "image/tiff": ".tiff",
}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    """Files under `root`, named by the SHA-256 of their bytes; paths returned are relative."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes, content_type: str) -> tuple[str, str]:
        """Store `data` durably; return (sha256, relative path). Identical bytes share a file."""
        sha = sha256_hex(data)
        relative = f"{sha[:2]}/{sha}{_EXTENSIONS.get(content_type, '.bin')}"
        path = self.root / relative
        if not path.is_file():
            try:
                write_atomic(path, data)
            except OSError as e:
                raise StorageError(f"could not store the image bytes: {e.strerror or e}") from e
        return sha, relative

    def read(self, relative: str) -> bytes:
        return self._resolve(relative).read_bytes()

    def remove(self, relative: str) -> None:
        with contextlib.suppress(OSError):
            self._resolve(relative).unlink()

    def remove_unreferenced(self, referenced: set[str]) -> int:
        """Delete files no record points to (left by a crash between write and commit)."""
        removed = 0
        for path in self.root.glob("*/*"):
            relative = path.relative_to(self.root).as_posix()
            if path.is_file() and relative not in referenced:
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed += 1
        return removed

    def _resolve(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"blob path {relative!r} escapes the blob store")
        return path

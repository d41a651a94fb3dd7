"""The blob contract (an item's original bytes, kept so they can be served back) and the one
factory that opens a blob store: `LocalBlobStore` keeps them in a folder, content-addressed;
`index/s3_blobs.py` in S3 or any S3-compatible object store."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from index.errors import StorageError
from index.files import write_atomic
from index.types import StoredBlob

BLOB_STORES = ("local", "s3")
STREAM_CHUNK = 256 * 1024
_EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
    "image/tiff": ".tiff",
    "image/heic": ".heic",
    "image/avif": ".avif",
}


class BlobStore(Protocol):
    """Bytes named by their SHA-256; identical bytes are kept once."""

    def put(self, data: bytes, content_type: str) -> StoredBlob:
        """Store `data` durably (StorageError if it cannot be) and say where it went."""
        ...

    def put_beside(self, path: str, data: bytes, content_type: str) -> None:
        """Store `data` durably under `path`, a name derived from a stored blob's (its
        thumbnail): written before the record that needs it commits."""
        ...

    def read(self, path: str) -> bytes: ...

    def stream(self, path: str) -> Iterator[bytes]:
        """The bytes in chunks, never all in memory; a missing blob fails here, not later."""
        ...

    def url_for(self, path: str, expires_s: int) -> str | None:
        """An address a client may fetch the bytes from directly for `expires_s` (a presigned
        URL), or None where there is none."""
        ...

    def remove(self, path: str) -> None:
        """Delete a blob no record uses; one already gone is no error."""
        ...

    def remove_unreferenced(self, referenced: set[str], older_than_s: float = 0.0) -> int:
        """Delete blobs no record points to (left by a crash between write and commit, or
        released in a shared store), last written more than `older_than_s` ago."""
        ...


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


THUMBNAIL_SUFFIX = ".thumb.jpg"
THUMBNAIL_TYPE = "image/jpeg"


def thumbnail_path(content_path: str) -> str:
    """Where the thumbnail of the blob at `content_path` is kept: beside it, so the same bytes
    indexed again (under any id) find theirs."""
    folder, _, name = content_path.rpartition("/")
    stem = name.split(".", 1)[0]  # the SHA-256
    return f"{folder}/{stem}{THUMBNAIL_SUFFIX}" if folder else stem + THUMBNAIL_SUFFIX


def with_thumbnails(paths: set[str]) -> set[str]:
    """`paths` and their thumbnails' (what a sweep must leave alone)."""
    return paths | {thumbnail_path(path) for path in paths}


def blob_name(data: bytes, content_type: str) -> StoredBlob:
    """The content address of `data`: its SHA-256 and a path with the type's extension."""
    sha = sha256_hex(data)
    return StoredBlob(sha, f"{sha[:2]}/{sha}{_EXTENSIONS.get(content_type, '.bin')}")


class LocalBlobStore:
    """Files under `root`, named by the SHA-256 of their bytes; paths returned are relative."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes, content_type: str) -> StoredBlob:
        blob = blob_name(data, content_type)
        path = self.root / blob.path
        try:
            if path.is_file():
                os.utime(path)  # written again: a sweep of old unreferenced blobs passes it by
            else:
                write_atomic(path, data)
        except OSError as e:
            raise StorageError(f"could not store the image bytes: {e.strerror or e}") from e
        return blob

    def put_beside(self, path: str, data: bytes, content_type: str) -> None:
        target = self._resolve(path)
        try:
            if target.is_file():  # the same bytes indexed again: made from them already
                os.utime(target)
            else:
                write_atomic(target, data)
        except OSError as e:
            raise StorageError(f"could not store the thumbnail: {e.strerror or e}") from e

    def read(self, path: str) -> bytes:
        return self._resolve(path).read_bytes()

    def stream(self, path: str) -> Iterator[bytes]:
        return _file_chunks(self._resolve(path).open("rb"))

    def url_for(self, path: str, expires_s: int) -> str | None:
        return None  # served by the process

    def remove(self, path: str) -> None:
        with contextlib.suppress(OSError):
            self._resolve(path).unlink()

    def remove_unreferenced(self, referenced: set[str], older_than_s: float = 0.0) -> int:
        removed = 0
        written_before = time.time() - older_than_s
        for path in self.root.glob("*/*"):
            relative = path.relative_to(self.root).as_posix()
            if relative in referenced:
                continue
            with contextlib.suppress(OSError):
                if path.is_file() and path.stat().st_mtime <= written_before:
                    path.unlink()
                    removed += 1
        return removed

    def _resolve(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"blob path {relative!r} escapes the blob store")
        return path


def _file_chunks(file: io.BufferedReader) -> Iterator[bytes]:
    with file:
        while chunk := file.read(STREAM_CHUNK):
            yield chunk


def open_blobs(location: Path | str, endpoint_url: str | None = None) -> BlobStore:
    """The blob store at `location`: a folder, or `s3://bucket/prefix` (boto3, at
    `endpoint_url` for a store other than AWS)."""
    if isinstance(location, str) and "://" in location:
        if location.startswith("s3://"):
            from index.s3_blobs import S3BlobStore  # boto3: only where S3 is used

            return S3BlobStore(location, endpoint_url)
        raise ValueError(
            f"unknown blob store {location!r}; expected a folder or s3://bucket/prefix"
        )
    return LocalBlobStore(Path(location))

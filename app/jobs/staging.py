"""Uploaded batch images kept on disk until their job has indexed them.

Every image of a job is appended to a few large files (`staging/<job>/<n>.blobs`), each item
remembering its offset and length, and each file is synced once before the job is recorded.
A file and an fsync per item made a 100,000-image JSON batch take five minutes to accept.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from index.files import fsync_dir

CHUNK_BYTES = 256 * 2**20  # a new staging file past this size


@dataclass(frozen=True)
class StagedBlob:
    path: str
    offset: int
    length: int


class StagingWriter:
    """Appends a job's images to its staging files; `commit` makes them durable."""

    def __init__(self, folder: Path, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.folder = folder
        self._chunk_bytes = chunk_bytes
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self._written: list[Path] = []

    def add(self, data: bytes | BinaryIO) -> StagedBlob:
        out, path = self._current()
        offset = out.tell()
        if isinstance(data, bytes):
            out.write(data)
        else:
            shutil.copyfileobj(data, out, 1 << 20)
        return StagedBlob(str(path), offset, out.tell() - offset)

    def commit(self) -> None:
        """Flush and fsync every staging file of the job, and the folder that lists them."""
        self._close_current()
        for path in self._written:
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        if self._written:
            fsync_dir(self.folder)

    def discard(self) -> None:
        self._close_current()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _current(self) -> tuple[BinaryIO, Path]:
        if self._file is not None and self._path is not None:
            if self._file.tell() < self._chunk_bytes:
                return self._file, self._path
            self._close_current()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._path = self.folder / f"{len(self._written)}.blobs"
        self._file = open(self._path, "wb")  # noqa: SIM115 - closed in commit or discard
        self._written.append(self._path)
        return self._file, self._path

    def _close_current(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_staged(path: str, offset: int | None, length: int | None) -> bytes:
    """A staged image; offset None is a whole file (staged by an older release)."""
    with open(path, "rb") as f:
        if offset is None or length is None:
            return f.read()
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise OSError(f"staged image truncated: {len(data)} of {length} bytes")
    return data

"""Uploaded batch images kept until their job has indexed them.

Every image of a job is appended to a few large files (`staging/<job>/<n>.blobs`), each item
remembering its offset and length, and each file is synced once before the job is recorded.
A file and an fsync per item made a 100,000-image JSON batch take five minutes to accept.

`Staging` is where those files live: a folder (`LocalStaging`; shared by the replicas when it is
under XMR_BLOB_DIR), or object storage (`app/jobs/s3_staging.py`), so that a job another replica
takes over can read its uploads.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

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
        return StagedBlob(self.location(path), offset, out.tell() - offset)

    def location(self, path: Path) -> str:
        """Where a staging file will be read from by the job (its `source`)."""
        return str(path)

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


class Staging(Protocol):
    """Where jobs' uploads are kept between the request that sent them and the job's end."""

    def writer(self, job_id: str) -> StagingWriter: ...

    def read(self, source: str, offset: int | None, length: int | None) -> bytes: ...

    def remove(self, job_id: str) -> None:
        """Forget a job's uploads (it ended, or was never recorded)."""
        ...

    def job_ids(self) -> list[str]:
        """The jobs that have uploads staged."""
        ...


class LocalStaging:
    """A folder per job under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def writer(self, job_id: str) -> StagingWriter:
        return StagingWriter(self.root / job_id)

    def read(self, source: str, offset: int | None, length: int | None) -> bytes:
        return read_staged(source, offset, length)

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.root / job_id, ignore_errors=True)

    def job_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return [folder.name for folder in self.root.iterdir() if folder.is_dir()]


def open_staging(
    folder: Path, blob_url: str | None, endpoint_url: str | None, spool: Path
) -> Staging:
    """In object storage under `blob_url`/staging when there is one, else in `folder`."""
    if blob_url is None:
        return LocalStaging(folder)
    from app.jobs.s3_staging import S3Staging  # boto3: only where S3 is used

    return S3Staging(f"{blob_url.rstrip('/')}/staging", endpoint_url, spool)

"""Files named by batch items (`image_path`), read from under XMR_IMPORT_ROOT and nowhere else.

A path is checked twice. At submission, by its text alone: relative, and `..` may not climb out
of the root. At read time the file is opened relative to a descriptor of the root, one component
at a time with O_NOFOLLOW, so no symbolic link is followed at any step: resolving a path and then
opening it by name let a directory swapped for a link in between (a rename exchange) lead
outside. The descriptor is then checked (a regular file: a FIFO would block the job forever),
and at most the size limit plus one byte is read from it, whatever the file claims to hold.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from pathlib import Path

from app.services.errors import ImportPathError, InvalidInputError
from index import excerpt

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY

_REASONS = {
    errno.ENOENT: "the file does not exist",
    errno.ENOTDIR: "a part of the path is not a folder (symbolic links are not followed)",
    errno.ELOOP: "the path is a symbolic link; links are not followed under the import root",
    errno.ENAMETOOLONG: "the path or one of its names is too long",
    errno.EACCES: "the file cannot be read (permission denied)",
    errno.EPERM: "the file cannot be read (operation not permitted)",
    errno.EISDIR: "the path is a folder, not a file",
    errno.ENXIO: "the path is not a regular file (a socket or device)",
}


def check_import_path(root: Path | None, raw: str) -> str:
    """The normalized relative form of `raw`, refused when it names anything outside `root`."""
    if root is None:
        raise ImportPathError("image_path items need XMR_IMPORT_ROOT to be set on the server")
    if "\x00" in raw:
        raise ImportPathError("image_path contains a NUL byte")
    if not raw.strip():
        raise ImportPathError("image_path is empty")
    normalized = posixpath.normpath(raw)
    if posixpath.isabs(raw) or normalized == ".." or normalized.startswith("../"):
        raise ImportPathError(f"image_path {excerpt(raw)} is outside the import root")
    return normalized


def read_import_file(root: Path, relative: str, max_bytes: int) -> bytes:
    """The bytes of the regular file `relative` under `root`; InvalidInputError says why not."""
    parts = check_import_path(root, relative).split("/")
    try:
        directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise InvalidInputError(f"the import root cannot be opened ({e.strerror})") from e
    try:
        for name in parts[:-1]:
            inner = os.open(name, _DIR_FLAGS, dir_fd=directory)
            os.close(directory)
            directory = inner
        descriptor = os.open(parts[-1], _FILE_FLAGS, dir_fd=directory)
    except OSError as e:
        raise InvalidInputError(_reason(e)) from e
    finally:
        os.close(directory)
    try:
        return _read_regular_file(descriptor, max_bytes)
    finally:
        os.close(descriptor)


def _read_regular_file(descriptor: int, max_bytes: int) -> bytes:
    info = os.fstat(descriptor)
    if stat.S_ISDIR(info.st_mode):
        raise InvalidInputError("the path is a folder, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise InvalidInputError("the path is not a regular file (a FIFO, socket or device)")
    too_large = f"the file is larger than the {max_bytes} bytes allowed (XMR_MAX_UPLOAD_MB)"
    if info.st_size > max_bytes:
        raise InvalidInputError(too_large)
    os.set_blocking(descriptor, True)
    chunks: list[bytes] = []
    received = 0
    try:
        while received <= max_bytes:
            chunk = os.read(descriptor, min(1 << 20, max_bytes + 1 - received))
            if not chunk:
                break
            chunks.append(chunk)
            received += len(chunk)
    except OSError as e:
        raise InvalidInputError(_reason(e)) from e
    if received > max_bytes:  # it grew after fstat
        raise InvalidInputError(too_large)
    return b"".join(chunks)


def _reason(error: OSError) -> str:
    if error.errno in _REASONS:
        return _REASONS[error.errno]
    return f"the file cannot be read ({error.strerror or type(error).__name__})"

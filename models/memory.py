"""Handing memory the process no longer needs back to the system.

glibc keeps freed pages for reuse; after a one-off peak (a decoded 49-megapixel image, the fp32
copy of a model that another runtime now runs) that is hundreds of MB the process never needs
again. Elsewhere than glibc this does nothing. Files a library mapped and read once (OpenVINO's
compiled-model cache, whose weights it copies out at load) can be paged out the same way.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)
MADV_PAGEOUT = 21  # Linux 5.4+: reclaim these pages now (file pages are read again if touched)


def _libc() -> Any:
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


_LIBC = _libc()


def release_free_memory() -> None:
    """Return free heap pages of every allocator arena to the system (glibc's malloc_trim)."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


def page_out_mappings(folder: Path) -> int:
    """Ask the kernel to reclaim the pages of files under `folder` mapped into this process.

    Only a hint: clean file pages are dropped and read back from the file if touched again, so
    what the mapping holds never changes. Bytes advised; 0 where the system has no such advice.
    """
    madvise = getattr(_LIBC, "madvise", None)
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return 0
    if madvise is None:
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    prefix = str(folder.resolve())
    advised = 0
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith(prefix):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if madvise(start, end - start, MADV_PAGEOUT) == 0:
                advised += end - start
    return advised

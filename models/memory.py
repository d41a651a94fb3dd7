"""Handing freed heap memory back to the system.

glibc keeps freed pages for reuse; after a one-off peak (a decoded 49-megapixel image, the fp32
copy of a model that another runtime now runs) that is hundreds of MB the process never needs
again. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
from typing import Any


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

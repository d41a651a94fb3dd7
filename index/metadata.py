"""Item metadata: what may be stored, so that whatever is stored can always be sent back.

Metadata is a JSON object. Its nesting depth and serialized size are bounded at the door: a
record nested hundreds deep once made every response that contained it fail, and megabytes of
metadata per item let one search build a response of hundreds of megabytes.
"""

from __future__ import annotations

import json
import math
from typing import Any

from index.errors import InvalidMetadataError

MAX_METADATA_DEPTH = 32  # the object itself is depth 1
DEFAULT_MAX_METADATA_BYTES = 64 * 1024


def check_metadata_shape(value: Any, where: str = "metadata") -> None:
    """Refuse non-objects, nesting deeper than MAX_METADATA_DEPTH, and NaN or infinities.

    Iterative, so a hostile nesting depth cannot exhaust the interpreter's stack.
    """
    if not isinstance(value, dict):
        raise InvalidMetadataError(f"{where}: must be a JSON object")
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, float) and not math.isfinite(node):
            raise InvalidMetadataError(f"{where}: numbers must be finite (no NaN or Infinity)")
        if isinstance(node, dict | list):
            if depth > MAX_METADATA_DEPTH:
                raise InvalidMetadataError(
                    f"{where}: nested deeper than the {MAX_METADATA_DEPTH} levels allowed"
                )
            children = node.values() if isinstance(node, dict) else node
            pending.extend((child, depth + 1) for child in children)


def serialized_metadata(value: dict[str, Any], max_bytes: int, where: str = "metadata") -> str:
    """The JSON text stored for `value`, after checking its shape and its size in UTF-8 bytes."""
    check_metadata_shape(value, where)
    text = json.dumps(value, ensure_ascii=False)
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise InvalidMetadataError(
            f"{where}: {size} bytes of JSON, more than the {max_bytes} allowed "
            "(XMR_MAX_METADATA_BYTES)"
        )
    return text


def load_stored_metadata(text: str | None) -> dict[str, Any] | None:
    """Stored metadata, or None for a record that older releases let in but cannot be returned.

    Such a record (too deep to serialize, or holding NaN) must not make every response holding
    it fail. Every search reads its hits' metadata, so the shape is checked in the parse where
    it can be: a number that is not finite is refused as it is read, and the walk over the
    value for its depth runs only where the text has enough brackets to be that deep (2 of the
    3.5 us a record took before).
    """
    if text is None:
        return None
    try:
        value = _DECODER.decode(text)
        if not isinstance(value, dict):
            return None
        if text.count("{") + text.count("[") > MAX_METADATA_DEPTH:
            check_metadata_shape(value)
    except (RecursionError, ValueError, InvalidMetadataError):
        return None
    return value


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):  # 1e999 reads as infinity
        raise ValueError(f"{literal} is not a finite number")
    return value


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)

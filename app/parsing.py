"""Request fields as domain values: JSON form fields (refusing NaN), lists with one entry per
uploaded file, uploaded vector arrays, and metadata filters."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, BinaryIO

import numpy as np

from app.services.errors import InvalidInputError
from index import InvalidFilterError, MetadataFilter, parse_filter


def parse_json_list(raw: str | None, field: str, expected: int) -> list[Any] | None:
    """A form field holding a JSON list with one entry per uploaded file."""
    if raw is None or raw == "":
        return None
    try:
        value = strict_json(raw)
    except ValueError as e:
        raise InvalidInputError(f"{field} must be a JSON list: {e}") from e
    if not isinstance(value, list):
        raise InvalidInputError(f"{field} must be a JSON list, one entry per file")
    if len(value) != expected:
        raise InvalidInputError(f"{field} has {len(value)} entries for {expected} files")
    return value


def read_npy(file: BinaryIO) -> np.ndarray:
    """An uploaded .npy array (never a pickle)."""
    try:
        return np.asarray(np.load(file, allow_pickle=False))
    except (ValueError, OSError, EOFError) as e:
        raise InvalidInputError(f"'vectors' is not an .npy array: {e}") from e


def matrix_of(rows: Sequence[Sequence[float]]) -> np.ndarray:
    """JSON vectors as one float32 matrix; they must all have the same length."""
    lengths = {len(row) for row in rows}
    if len(lengths) > 1:
        raise InvalidInputError(f"the vectors differ in length ({sorted(lengths)}): one model's")
    return np.asarray(rows, dtype=np.float32)


def where_of(value: dict[str, Any] | None) -> MetadataFilter | None:
    """A body's `filter` object as a filter (None: no filter)."""
    return None if value is None else parse_filter(value)


def parse_filter_param(raw: str | None) -> MetadataFilter | None:
    """A `filter` query or form field: a JSON object of metadata conditions."""
    value = filter_object(raw)
    return None if value is None else parse_filter(value)


def filter_object(raw: str | None) -> dict[str, Any] | None:
    """A `filter` field as its JSON object, checked (for work that keeps it, as a job does)."""
    if raw is None or not raw.strip():
        return None
    try:
        value = strict_json(raw)
    except ValueError as e:
        raise InvalidFilterError(f"filter: not valid JSON ({e})") from e
    parse_filter(value)
    return value  # type: ignore[no-any-return]


def strict_json(raw: str) -> Any:
    """Decode JSON, refusing NaN and infinities; ValueError carries a short reason."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise ValueError(e.msg) from e
    except RecursionError as e:
        raise ValueError("nested too deeply") from e


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed; numbers must be finite")


def parse_ids(raw: str | None, expected: int) -> list[str | None]:
    return _entries_of(raw, "ids", expected, str, "a string")


def parse_metadata(raw: str | None, expected: int) -> list[dict[str, Any] | None]:
    return _entries_of(raw, "metadata", expected, dict, "a JSON object")


def _entries_of(raw: str | None, field: str, expected: int, kind: type, what: str) -> list[Any]:
    """A JSON list field, one entry per file, each of type `kind` or null (all null if absent)."""
    entries = parse_json_list(raw, field, expected)
    if entries is None:
        return [None] * expected
    for position, entry in enumerate(entries):
        if entry is not None and not isinstance(entry, kind):
            raise InvalidInputError(f"{field}[{position}] must be {what} or null")
    return entries

"""Metadata filters: parsed and checked once; each record store turns them into its own SQL
(SQLite's: index/sqlite.py `where_sql`).

A filter is a JSON object whose entries are all required (AND):

    {"album": "2024"}                        equality (strings, numbers, booleans)
    {"tag": {"in": ["cat", "dog"]}}          one of several values
    {"year": {"gte": 2000, "lt": 2010}}      numeric range (gt, gte, lt, lte; combined: AND)
    {"camera.make": "Canon"}                 a dotted name reaches into nested objects

Errors name the part that is wrong, e.g. `filter.year.gte: must be a number`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from index.errors import InvalidFilterError

MAX_CONDITIONS = 32
MAX_IN_VALUES = 1000
_FIELD = re.compile(r"^[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,7}$")
RANGE_OPERATORS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
Scalar = str | int | float | bool


@dataclass(frozen=True)
class Condition:
    field: str
    op: str  # "eq", "in", "gt", "gte", "lt", "lte"
    value: Any


@dataclass(frozen=True)
class MetadataFilter:
    conditions: tuple[Condition, ...]


def parse_filter(raw: Any) -> MetadataFilter:
    """Check a decoded JSON filter and return it; InvalidFilterError names the bad part."""
    if not isinstance(raw, dict):
        raise InvalidFilterError("filter: must be a JSON object of field conditions")
    if len(raw) > MAX_CONDITIONS:
        raise InvalidFilterError(f"filter: at most {MAX_CONDITIONS} fields")
    conditions: list[Condition] = []
    for field, spec in raw.items():
        where = f"filter.{field}"
        if not isinstance(field, str) or not _FIELD.match(field):
            raise InvalidFilterError(
                f"{where}: field names are letters, digits, _ and -, dotted for nested fields"
            )
        if isinstance(spec, dict):
            conditions += _operators(field, spec, where)
        else:
            conditions.append(Condition(field, "eq", _scalar(spec, where)))
    return MetadataFilter(tuple(conditions))


def _operators(field: str, spec: dict[str, Any], where: str) -> list[Condition]:
    if not spec:
        raise InvalidFilterError(f"{where}: an empty condition; use a value or in/gt/gte/lt/lte")
    conditions = []
    for op, value in spec.items():
        at = f"{where}.{op}"
        if op == "eq":
            conditions.append(Condition(field, "eq", _scalar(value, at)))
        elif op == "in":
            if not isinstance(value, list) or not value:
                raise InvalidFilterError(f"{at}: must be a non-empty list of values")
            if len(value) > MAX_IN_VALUES:
                raise InvalidFilterError(f"{at}: at most {MAX_IN_VALUES} values")
            values = [_scalar(v, f"{at}[{n}]") for n, v in enumerate(value)]
            conditions.append(Condition(field, "in", tuple(values)))
        elif op in RANGE_OPERATORS:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidFilterError(f"{at}: must be a number")
            conditions.append(Condition(field, op, _in_range(value, at)))
        else:
            raise InvalidFilterError(f"{at}: unknown operator; use eq, in, gt, gte, lt or lte")
    return conditions


def _scalar(value: Any, where: str) -> Scalar:
    if isinstance(value, int) and not isinstance(value, bool):
        return _in_range(value, where)
    if isinstance(value, str | float | bool):
        return value
    raise InvalidFilterError(f"{where}: must be a string, number or boolean")


def _in_range(value: int | float, where: str) -> int | float:
    """SQLite's integers are 64-bit: a larger one cannot be compared there (OverflowError)."""
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise InvalidFilterError(f"{where}: integers must fit in 64 bits")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidFilterError(f"{where}: must be a finite number")
    return value

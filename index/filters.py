"""Metadata filters: parsed and checked once; each record store turns them into its own SQL
(SQLite's: index/sqlite.py `where_sql`).

A filter is a JSON object whose entries are all required (AND):

    {"album": "2024"}                        equality (strings, numbers, booleans)
    {"tag": {"in": ["cat", "dog"]}}          one of several values
    {"year": {"gte": 2000, "lt": 2010}}      numeric range (gt, gte, lt, lte; combined: AND)
    {"camera.make": "Canon"}                 a dotted name reaches into nested objects
    {"exif.taken_at": {"gte": "2025-06-01", "lt": "2025-09-01"}}
                                             date range over ISO 8601 strings (local time)
    {"exif.gps": {"near": {"lat": 52.5, "lon": 13.4, "km": 25}}}
                                             a {"lat", "lon"} object within km of a point
    {"exif.gps": {"bbox": {"south": 52.3, "west": 13.0, "north": 52.7, "east": 13.8}}}
                                             ... or inside a box (west > east: across 180°)

A date bound is `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM[:SS]`, compared with the stored text as the
clock where the photo was taken showed it (an offset stored after it plays no part); a whole
day counts whole: `lte: "2025-08-31"` takes in all of the 31st.

Errors name the part that is wrong, e.g. `filter.year.gte: must be a number`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
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
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?$")
EARTH_RADIUS_KM = 6371.0088  # the mean radius (IUGG)
MAX_NEAR_KM = 20_016.0  # half the Earth's circumference: every place


@dataclass(frozen=True)
class Condition:
    field: str
    op: str  # "eq", "in", "gt", "gte", "lt", "lte", "near", "bbox"
    value: Any  # near: Near; bbox: Box; a range: a number or a date string


@dataclass(frozen=True)
class Near:
    lat: float
    lon: float
    km: float


@dataclass(frozen=True)
class Box:
    south: float
    west: float
    north: float
    east: float


@dataclass(frozen=True)
class MetadataFilter:
    conditions: tuple[Condition, ...]


def field_index_name(field: str) -> str:
    """The name of the database index on a metadata field's value (XMR_FILTER_FIELDS), the
    same in every record store: the field made safe for SQL, and a digest keeping it unique."""
    digest = hashlib.sha256(field.encode()).hexdigest()[:8]
    return f"items_field_{re.sub(r'[^a-z0-9]', '_', field.lower())[:40]}_{digest}"


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
            if isinstance(value, str):
                conditions.append(_date_bound(field, op, value, at))
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidFilterError(f"{at}: must be a number or an ISO 8601 date")
            conditions.append(Condition(field, op, _in_range(value, at)))
        elif op == "near":
            conditions.append(Condition(field, "near", _near(value, at)))
        elif op == "bbox":
            conditions.append(Condition(field, "bbox", _box(value, at)))
        else:
            raise InvalidFilterError(
                f"{at}: unknown operator; use eq, in, gt, gte, lt, lte, near or bbox"
            )
    return conditions


def _date_bound(field: str, op: str, value: str, where: str) -> Condition:
    """A range bound on ISO 8601 text; a bare day that ends a range (lte) or starts one past
    it (gt) is moved to the next day's start, so that the day counts whole."""
    try:
        if _DATE.match(value):
            day = dt.date.fromisoformat(value)
            if op in ("lte", "gt"):
                return Condition(field, "lt" if op == "lte" else "gte", str(day + dt.timedelta(1)))
            return Condition(field, op, value)
        if _DATE_TIME.match(value):
            dt.datetime.fromisoformat(value)
            return Condition(field, op, value)
    except ValueError:
        pass
    raise InvalidFilterError(
        f"{where}: a date is YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS] (local time, no offset)"
    )


def _near(value: Any, where: str) -> Near:
    spec = _numbers(value, ("lat", "lon", "km"), where)
    if not 0 < spec["km"] <= MAX_NEAR_KM:
        raise InvalidFilterError(f"{where}.km: must be above 0 and at most {MAX_NEAR_KM:.0f}")
    _check_place(spec["lat"], spec["lon"], where)
    return Near(spec["lat"], spec["lon"], spec["km"])


def _box(value: Any, where: str) -> Box:
    spec = _numbers(value, ("south", "west", "north", "east"), where)
    _check_place(spec["south"], spec["west"], where)
    _check_place(spec["north"], spec["east"], where)
    if spec["south"] > spec["north"]:
        raise InvalidFilterError(f"{where}: south must not be above north")
    return Box(spec["south"], spec["west"], spec["north"], spec["east"])


def _numbers(value: Any, names: tuple[str, ...], where: str) -> dict[str, float]:
    if not isinstance(value, dict) or set(value) != set(names):
        raise InvalidFilterError(f"{where}: must be an object of {', '.join(names)}")
    numbers: dict[str, float] = {}
    for name in names:
        number = value[name]
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise InvalidFilterError(f"{where}.{name}: must be a number")
        numbers[name] = float(_in_range(number, f"{where}.{name}"))
    return numbers


def _check_place(lat: float, lon: float, where: str) -> None:
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise InvalidFilterError(f"{where}: latitudes are -90 to 90, longitudes -180 to 180")


def distance_km(lat1: Any, lon1: Any, lat2: float, lon2: float) -> float | None:
    """Great-circle (haversine) distance; None where the stored place is not two numbers."""
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lat1, lon1)):
        return None
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi, dlmb = phi2 - phi1, math.radians(lon2 - lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


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

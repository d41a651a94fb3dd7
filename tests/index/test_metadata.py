"""Stored metadata read back: the checks made in the parse refuse what the full walk refuses."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from index.errors import InvalidMetadataError
from index.metadata import MAX_METADATA_DEPTH, check_metadata_shape, load_stored_metadata


def loaded_with_the_full_walk(text: str) -> dict[str, Any] | None:
    """What load_stored_metadata returned before it checked in the parse."""
    try:
        value = json.loads(text)
        check_metadata_shape(value)
    except (RecursionError, ValueError, InvalidMetadataError):
        return None
    return value  # type: ignore[no-any-return]


def nested(value: Any, depth: int, in_lists: bool) -> Any:
    for _ in range(depth):
        value = [value] if in_lists else {"k": value}
    return value


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(alphabet='ab{}[]"\\ é\n', max_size=12)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=30,
)
documents = st.builds(nested, values, st.integers(0, MAX_METADATA_DEPTH + 3), st.booleans()).map(
    lambda inner: json.dumps({"v": inner} if isinstance(inner, list) else inner)
)


@settings(max_examples=3000, deadline=None)
@given(documents)
@example('{"a": 1e999}')
@example('{"a": [-1e400]}')
@example('{"a": NaN}')
@example('{"a": -Infinity}')
@example('{"a": 1.5, "b": [1, 2.25e10]}')
@example(json.dumps({"a": "[" * 40 + "{" * 40}))  # brackets in strings: depth 1 all the same
@example(json.dumps(nested(1, MAX_METADATA_DEPTH - 1, in_lists=True)))
@example(json.dumps({"v": nested(1, MAX_METADATA_DEPTH, in_lists=True)}))
@example(json.dumps(nested(1, MAX_METADATA_DEPTH + 1, in_lists=False)))
@example("[]")
@example('"text"')
@example("not json")
@example('{"a": 1' + "0" * 5000 + "}")  # past Python's digit limit for ints
def test_stored_metadata_is_refused_exactly_where_the_full_walk_refuses_it(text: str) -> None:
    assert load_stored_metadata(text) == loaded_with_the_full_walk(text)


def test_what_every_search_reads_is_the_stored_object() -> None:
    stored = {"album": "2024", "tags": ["cat", "sofa"], "gps": {"lat": 52.5, "lon": 13.4}}
    assert load_stored_metadata(json.dumps(stored)) == stored
    assert load_stored_metadata(None) is None

"""Keyword queries and what an item offers to them: its text and its metadata's strings.

Each record store keeps its keyword index in its own database, written in the same
transactions as the records (index/sqlite_keywords.py: FTS5 with BM25), so it is exactly as
durable as the records and never disagrees with them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(r"\w+", re.UNICODE)
MAX_QUERY_TERMS = 64


@dataclass(frozen=True)
class KeywordQuery:
    """Words to find (any of them, ranked by BM25) and words whose items are left out."""

    include: str
    exclude: str = ""

    def phrases(self) -> tuple[list[str], list[str]]:
        """The wanted and the unwanted terms, each as its word tokens joined by spaces."""
        return _terms(self.include), _terms(self.exclude)


def _terms(text: str) -> list[str]:
    terms = [" ".join(_TOKEN.findall(term)) for term in text.split()]
    return [term for term in terms if term][:MAX_QUERY_TERMS]


def searchable_text(text: str | None, metadata: dict[str, Any] | None) -> str:
    """What the keyword index holds for an item: its text, then every string in its metadata."""
    parts = [text] if text else []
    parts.extend(_strings(metadata))
    return "\n".join(parts)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for entry in value.values():
            yield from _strings(entry)
    elif isinstance(value, list):
        for entry in value:
            yield from _strings(entry)

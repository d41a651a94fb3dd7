"""The names of a dual encoder's two towers, and how one of them runs (no heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Tower = Literal["text", "image"]
TOWERS: tuple[Tower, ...] = ("text", "image")


@dataclass(frozen=True)
class TowerRun:
    """How one tower runs: which runtime, in which arithmetic."""

    runtime: str
    precision: str


def one_run(runtime: str, precision: str) -> dict[Tower, TowerRun]:
    """Both towers run the same way."""
    return {tower: TowerRun(runtime, precision) for tower in TOWERS}

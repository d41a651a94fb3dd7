"""Where exports of a model for another runtime are kept, and removing those of a model no
collection uses any more. No torch here: the service calls this without loading a model."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

_DIGEST = re.compile(r"^[0-9a-f]{16}$")


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/xmr/runtimes`, by default `~/.cache/xmr/runtimes`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "xmr" / "runtimes"


def export_slug(model_id: str) -> str:
    """The readable start of an export folder's name: `<slug>-<digest of the weights>`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)[:60]


def remove_exports(model_id: str, root: Path | None = None) -> list[Path]:
    """Delete the export folders of `model_id` under `root`; the folders removed."""
    root = root or default_cache_dir()
    prefix = export_slug(model_id) + "-"
    removed = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    for entry in entries:
        name = entry.name
        if name.startswith(prefix) and _DIGEST.match(name[len(prefix) :]) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed

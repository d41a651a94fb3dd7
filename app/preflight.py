"""Checks run before the server starts, so a bad configuration fails fast with one clear line."""

from __future__ import annotations

from app.config import Settings
from index.records import database_problem
from index.vectors import new_faiss_index
from models.errors import ModelLoadError
from models.registry import resolve_weights


def preflight(settings: Settings) -> str | None:
    """Return what is wrong with `settings` (weights cannot be had, data dir unusable), or None."""
    try:
        resolve_weights(settings.model, settings.pretrained, settings.model_cache_dir)
    except ModelLoadError as e:
        return str(e)
    if settings.index != "auto":
        try:
            new_faiss_index(settings.index, 512)
        except ValueError as e:
            return f"XMR_INDEX: {e}"
    database_url = settings.index_options().database_url
    if database_url is not None:
        problem = database_problem(database_url)
        if problem is not None:
            return f"XMR_DATABASE_URL: {problem}"
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"XMR_DATA_DIR {settings.data_dir} cannot be created: {e.strerror or e}"
    # a data directory indexed with another model is not refused: `default` serves its vectors
    # with the model that made them and re-embeds to the configured one
    return None  # default serves its vectors and re-embeds (app.services.registry)

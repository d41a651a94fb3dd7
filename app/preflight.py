"""Checks run before the server starts, so a bad configuration fails fast with one clear line."""

from __future__ import annotations

from app.config import Settings
from index.records import RecordStore
from index.vectors import new_faiss_index
from models.errors import ModelLoadError
from models.registry import model_id_for, resolve_weights


def preflight(settings: Settings) -> str | None:
    """Return what is wrong with `settings` (weights cannot be had, data dir unusable), or None."""
    try:
        source = resolve_weights(settings.model, settings.pretrained, settings.model_cache_dir)
    except ModelLoadError as e:
        return str(e)
    if settings.index != "auto":
        try:
            new_faiss_index(settings.index, 512)
        except ValueError as e:
            return f"XMR_INDEX: {e}"
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"XMR_DATA_DIR {settings.data_dir} cannot be created: {e.strerror or e}"
    records_path = settings.data_dir / "records.sqlite3"
    if records_path.exists():
        store = RecordStore(records_path)
        try:
            stored = store.stored_model()
        finally:
            store.close()
        model_id = model_id_for(settings.model, source)
        if stored is not None and stored[0] != model_id:
            return (
                f"the data in {settings.data_dir} was indexed with {stored[0]}, not {model_id}. "
                "Start with the same XMR_MODEL/XMR_PRETRAINED, or point XMR_DATA_DIR at a new "
                "directory and re-index"
            )
    return None

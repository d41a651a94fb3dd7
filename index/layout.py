"""Where collections and their generations live on disk, and the pointer that says which serves.

A collection is a folder holding `collection.json` and one or two generations. A generation is
one ItemStore (records, blobs, index snapshots) made by one model. `collection.json` names the
generation that serves (`current`) and, during a re-embedding, the one being filled (`next`);
it is replaced by atomic rename, so the switch from one generation to the next is one rename,
and after a crash the collection serves whichever the file names.

The `default` collection's folder is the data directory itself, and its first generation is
that folder (`dir: ""`): a data directory written before collections existed opens as it is.
Other collections live in `<data dir>/collections/<name>`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from index.errors import StorageError
from index.files import write_atomic

logger = logging.getLogger(__name__)

DEFAULT_COLLECTION = "default"
COLLECTION_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
STATE_FILE = "collection.json"
CURSOR_FILE = "reindex-cursor.json"
FORMAT_VERSION = 1
# what one generation keeps in its folder; the root generation shares the folder with others
GENERATION_FILES = (
    "records.sqlite3",
    "records.sqlite3-wal",
    "records.sqlite3-shm",
    "blobs",
    "index",
    "milvus.db",
    CURSOR_FILE,
)


@dataclass(frozen=True)
class ModelSpec:
    """How a collection's vectors are made: an open_clip model, its weights and precision."""

    model: str
    pretrained: str | None = None  # None: the model's default weights; "": random weights
    precision: str = "auto"


@dataclass(frozen=True)
class Generation:
    """One store of a collection's vectors, all made by `spec` (identity `model_id`, `dim`)."""

    dir: str  # relative to the collection folder; "" is the folder itself
    spec: ModelSpec
    model_id: str
    dim: int


@dataclass(frozen=True)
class CollectionState:
    """The content of `collection.json`."""

    name: str
    current: Generation
    next: Generation | None = None
    reindex_job: str | None = None
    created_at: float = 0.0

    def to_json(self) -> bytes:
        return json.dumps({"format": FORMAT_VERSION, **asdict(self)}, indent=2).encode()

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> CollectionState:
        return cls(
            name=str(raw["name"]),
            current=_generation(raw["current"]),
            next=None if raw.get("next") is None else _generation(raw["next"]),
            reindex_job=raw.get("reindex_job"),
            created_at=float(raw.get("created_at", 0.0)),
        )


def _generation(raw: dict[str, Any]) -> Generation:
    return Generation(
        dir=str(raw["dir"]),
        spec=ModelSpec(**raw["spec"]),
        model_id=str(raw["model_id"]),
        dim=int(raw["dim"]),
    )


def is_collection_name(name: str) -> bool:
    return COLLECTION_NAME.fullmatch(name) is not None


def collection_folder(data_dir: Path, name: str) -> Path:
    return data_dir if name == DEFAULT_COLLECTION else data_dir / "collections" / name


def collection_names(data_dir: Path) -> list[str]:
    """The collections that exist under `data_dir` besides `default`, by name."""
    folder = data_dir / "collections"
    if not folder.is_dir():
        return []
    return sorted(
        p.name for p in folder.iterdir() if is_collection_name(p.name) and (p / STATE_FILE).exists()
    )


class CollectionFolder:
    """Reads and writes one collection's `collection.json` and its generation folders."""

    def __init__(self, data_dir: Path, name: str) -> None:
        self.name = name
        self.root = collection_folder(data_dir, name)

    def read(self) -> CollectionState | None:
        path = self.root / STATE_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            logger.error("%s is unreadable: %s", path, e)
            raise StorageError(f"collection {self.name}'s description is unreadable") from e
        try:
            return CollectionState.from_json(raw)
        except (KeyError, TypeError, ValueError) as e:
            logger.error("%s is not a collection description: %s", path, e)
            raise StorageError(f"collection {self.name}'s description is damaged") from e

    def write(self, state: CollectionState) -> None:
        """Replace the description atomically: the commit point of a switch of generation."""
        try:
            write_atomic(self.root / STATE_FILE, state.to_json())
        except OSError as e:  # the path for the log, the reason for the client
            logger.error("could not save %s: %s", self.root / STATE_FILE, e)
            reason = e.strerror or type(e).__name__
            raise StorageError(
                f"could not save collection {self.name}'s description: {reason}"
            ) from e

    def path(self, generation: Generation) -> Path:
        return self.root / generation.dir if generation.dir else self.root

    def new_generation(self, state: CollectionState, spec: ModelSpec) -> Generation:
        """A fresh folder name for the next generation; model_id and dim follow at load."""
        taken = {state.current.dir, *(p.name for p in self.root.glob("gen-*"))}
        number = 1
        while f"gen-{number}" in taken:
            number += 1
        return Generation(dir=f"gen-{number}", spec=spec, model_id="", dim=0)

    def remove(self, generation: Generation) -> None:
        """Delete a generation's files (the root generation: only its own files)."""
        folder = self.path(generation)
        names = GENERATION_FILES if not generation.dir else None
        if names is None:
            shutil.rmtree(folder, ignore_errors=True)
            return
        for name in names:
            target = folder / name
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    target.unlink()

    def remove_strays(self, state: CollectionState) -> list[str]:
        """Generations neither current nor next: left by a crash after a switch or a cancel."""
        keep = {state.current.dir, state.next.dir if state.next else None}
        removed: list[str] = []
        for folder in self.root.glob("gen-*"):
            if folder.is_dir() and folder.name not in keep:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder.name)
        if "" not in keep and (self.root / "records.sqlite3").exists():
            self.remove(Generation("", ModelSpec(""), "", 0))
            removed.append("(root)")
        return removed

    def delete(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def namespace_of(collection: str, generation: Generation) -> str:
    """Names one generation's vectors in a vector store several collections share (Milvus).

    `default`'s first generation has none: its Milvus collections keep their earlier names.
    """
    if collection == DEFAULT_COLLECTION and not generation.dir:
        return ""
    return f"{collection}/{generation.dir}"


def serving_generation(data_dir: Path, name: str) -> tuple[CollectionFolder, Generation]:
    """A collection's folder and serving generation, for tools working on a stopped server.

    A data directory without a description yet (new, or from before collections) is
    `default`'s root generation, with no model named (the caller's settings say it).
    """
    folder = CollectionFolder(data_dir, name)
    state = folder.read()
    if state is not None:
        if state.next is not None:
            raise StorageError(
                f"collection {name} is being re-embedded (job {state.reindex_job}); "
                "start the server and let it finish first"
            )
        return folder, state.current
    if name == DEFAULT_COLLECTION:
        return folder, Generation("", ModelSpec(""), "", 0)
    raise StorageError(f"{data_dir} holds no collection named {name!r}")


def with_identity(generation: Generation, model_id: str, dim: int) -> Generation:
    return replace(generation, model_id=model_id, dim=dim)


def new_state(name: str, generation: Generation) -> CollectionState:
    return CollectionState(name=name, current=generation, created_at=time.time())


@dataclass(frozen=True)
class ReindexCursor:
    """How far a re-embedding got: every record up to `label` of the current generation is in."""

    label: int = 0
    done: int = 0


def read_cursor(folder: Path) -> ReindexCursor:
    try:
        raw = json.loads((folder / CURSOR_FILE).read_text())
        return ReindexCursor(int(raw["label"]), int(raw["done"]))
    except FileNotFoundError:
        return ReindexCursor()
    except (OSError, ValueError, KeyError, TypeError):
        return ReindexCursor()  # start over rather than skip items


def write_cursor(folder: Path, cursor: ReindexCursor) -> None:
    write_atomic(folder / CURSOR_FILE, json.dumps(asdict(cursor)).encode())

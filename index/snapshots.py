"""FAISS snapshots on disk: `<kind>-<seq>.faiss` plus a JSON sidecar `<kind>.json` describing it.

The sidecar is renamed into place only after the FAISS file is whole and synced, and names that
file and its checksum, so a reader either finds a complete snapshot or none. Loading refuses a
snapshot made by another model or of another dimension.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from index.errors import ModelMismatchError, SnapshotError
from index.files import write_atomic
from index.planner import EXACT_SPEC
from index.vectors import FaissVectorIndex

FORMAT_VERSION = 1


@dataclass(frozen=True)
class SnapshotInfo:
    kind: str
    seq: int
    model_id: str
    dim: int
    ntotal: int
    file: str
    sha256: str
    spec: str = EXACT_SPEC  # the FAISS factory string; sidecars before it held Flat indexes


def save_snapshot(
    folder: Path,
    kind: str,
    payload: bytes,
    seq: int,
    ntotal: int,
    model_id: str,
    dim: int,
    spec: str = EXACT_SPEC,
) -> SnapshotInfo:
    """Write the serialized index `payload` taken at sequence `seq`, then retire older files.

    `ntotal` counts every vector in the payload, lazily deleted ones included.
    """
    name = f"{kind}-{seq}.faiss"
    write_atomic(folder / name, payload)
    digest = hashlib.sha256(payload).hexdigest()
    info = SnapshotInfo(kind, seq, model_id, dim, ntotal, name, digest, spec)
    sidecar = {"format": FORMAT_VERSION, "created_at": time.time(), **info.__dict__}
    write_atomic(folder / f"{kind}.json", json.dumps(sidecar, indent=2).encode())
    _remove_other_snapshot_files(folder, kind, keep=name)
    return info


def load_snapshot(
    folder: Path, kind: str, model_id: str, dim: int, **search_options: int
) -> tuple[FaissVectorIndex, SnapshotInfo] | None:
    """The saved index of `kind` and its description; None when there is none yet."""
    sidecar_path = folder / f"{kind}.json"
    if not sidecar_path.exists():
        return None
    info = _read_sidecar(sidecar_path)
    if info.model_id != model_id or info.dim != dim:
        raise ModelMismatchError(
            f"the {kind} index in {folder} was built with {info.model_id} (dim {info.dim}), "
            f"not {model_id} (dim {dim})"
        )
    try:
        payload = (folder / info.file).read_bytes()
    except OSError as e:
        raise SnapshotError(f"{kind} index file {info.file} cannot be read: {e}") from e
    if hashlib.sha256(payload).hexdigest() != info.sha256:
        raise SnapshotError(f"{kind} index file {info.file} is truncated or corrupt (checksum)")
    try:
        index = FaissVectorIndex.deserialize(payload, dim, info.spec, **search_options)
    except (RuntimeError, ValueError) as e:
        raise SnapshotError(f"{kind} index file {info.file} cannot be parsed: {e}") from e
    if index.stored != info.ntotal:
        raise SnapshotError(
            f"{kind} index holds {index.stored} vectors, its sidecar says {info.ntotal}"
        )
    return index, info


def _read_sidecar(path: Path) -> SnapshotInfo:
    try:
        raw = json.loads(path.read_text())
        return SnapshotInfo(
            kind=str(raw["kind"]),
            seq=int(raw["seq"]),
            model_id=str(raw["model_id"]),
            dim=int(raw["dim"]),
            ntotal=int(raw["ntotal"]),
            file=str(raw["file"]),
            sha256=str(raw["sha256"]),
            spec=str(raw.get("spec", EXACT_SPEC)),
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SnapshotError(f"index sidecar {path.name} is unreadable: {e}") from e


def _remove_other_snapshot_files(folder: Path, kind: str, keep: str) -> None:
    for path in folder.glob(f"{kind}-*.faiss"):
        if path.name != keep:
            with contextlib.suppress(OSError):
                path.unlink()

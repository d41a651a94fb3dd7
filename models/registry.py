"""Which model configs exist and where their weights come from, resolved before any loading.

Weights are looked up the way open_clip does it (pretrained tags on the Hugging Face hub or a
URL cache, or a local file). What cannot be had fails here, in seconds, with a message that
says what to set, instead of hanging in download retries.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import open_clip

from models.errors import ModelLoadError

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLED_CONFIG_DIR = PACKAGE_DIR / "configs"  # architectures only (random init, for tests)
BUNDLED_MODELS_DIR = PACKAGE_DIR / "bundled"  # open_clip local-dir folders: config + weights
LOCAL_DIR_PREFIX = "local-dir:"
HF_HUB_PREFIX = "hf-hub:"
DEFAULT_PRETRAINED_TAG = "laion2b_s34b_b79k"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
HUB_PROBE_TIMEOUT_S = 3.0

WeightsKind = Literal["random", "file", "tag", "folder", "hub"]


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's weights come from.

    `value` is a pretrained tag, an absolute checkpoint path, '' for random weights, or for
    `folder`/`hub` the full open_clip model name (`local-dir:/path`, `hf-hub:org/repo`), which
    carries its own config and weights.
    """

    kind: WeightsKind
    value: str
    cached: bool = True
    fingerprint: str = ""

    @property
    def label(self) -> str:
        if self.kind == "random":
            return "random-init"
        if self.kind == "file":
            return f"{Path(self.value).name}@{self.fingerprint}"
        if self.kind == "folder":
            return f"local@{self.fingerprint}"
        return self.value

    @property
    def open_clip_name(self) -> str | None:
        """The model name to hand open_clip when the source names the model itself."""
        return self.value if self.kind in ("folder", "hub") else None


def model_id_for(model_name: str, source: WeightsSource) -> str:
    """The identity stored with every vector: `<model>/<weights label>`."""
    return f"{model_name}/{source.label}"


def register_bundled_configs() -> None:
    """Make the model configs shipped in models/configs known to open_clip (idempotent)."""
    known = set(open_clip.list_models())
    if not all(p.stem in known for p in BUNDLED_CONFIG_DIR.glob("*.json")):
        open_clip.add_model_config(BUNDLED_CONFIG_DIR)


def bundled_model_dir(model_name: str) -> Path | None:
    """The open_clip folder (config + weights) shipped with the package, if there is one."""
    folder = BUNDLED_MODELS_DIR / model_name
    return folder if (folder / "open_clip_config.json").is_file() else None


def list_bundled_models() -> list[str]:
    return sorted(p.parent.name for p in BUNDLED_MODELS_DIR.glob("*/open_clip_config.json"))


def pretrained_tags(model_name: str) -> list[str]:
    """The pretrained tags open_clip knows for `model_name` (none for an unknown model)."""
    return list(open_clip.list_pretrained_tags_by_model(model_name))


def resolve_weights(
    model_name: str, pretrained: str | None, cache_dir: str | None = None
) -> WeightsSource:
    """Decide where the weights for `model_name` come from, and check that they can be had."""
    register_bundled_configs()
    bundled = bundled_model_dir(model_name)
    if bundled is not None:
        return _resolve_folder(bundled)
    if model_name.startswith(LOCAL_DIR_PREFIX):
        return _resolve_folder(Path(model_name[len(LOCAL_DIR_PREFIX) :]).expanduser())
    if model_name.startswith(HF_HUB_PREFIX):
        return _resolve_hub(model_name, cache_dir)
    if model_name not in open_clip.list_models():
        raise ModelLoadError(
            f"unknown model {model_name!r}: set XMR_MODEL to one of open_clip's models "
            "(e.g. ViT-B-32) or a bundled one (shapes-tiny)"
        )
    if pretrained is None:
        pretrained = DEFAULT_PRETRAINED_TAG
    if pretrained == "":
        return WeightsSource("random", "")
    if _looks_like_path(pretrained):
        path = Path(pretrained).expanduser().resolve()
        if not path.is_file():
            raise ModelLoadError(f"XMR_PRETRAINED points to {path}, which is not a file")
        return WeightsSource("file", str(path), fingerprint=file_fingerprint(path))
    return _resolve_tag(model_name, pretrained, cache_dir)


MAX_CHECKPOINT_BYTES = 64 * 2**30  # ViT-bigG-14's fp32 weights are about 10 GB


def file_fingerprint(path: Path) -> str:
    """Short SHA-256 of a checkpoint, so that other weights under the same name are told apart.

    Regular files only, at most MAX_CHECKPOINT_BYTES, and no more is read than their size says
    (files under /proc say 0 and never end).
    """
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the open
    with open(descriptor, "rb", buffering=0) as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
            raise ModelLoadError(f"{path.name} is not a checkpoint file (empty or not a file)")
        if info.st_size > MAX_CHECKPOINT_BYTES:
            raise ModelLoadError(f"{path.name} is larger than any checkpoint xmr loads")
        digest = hashlib.sha256()
        left = info.st_size
        while left > 0:
            block = f.read(min(left, 1 << 20))
            if not block:
                break
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()[:12]


def _resolve_folder(folder: Path) -> WeightsSource:
    folder = folder.resolve()
    if not (folder / "open_clip_config.json").is_file():
        raise ModelLoadError(
            f"{folder} has no open_clip_config.json; it is not an open_clip model folder"
        )
    checkpoints = sorted(p for p in folder.iterdir() if p.suffix in CHECKPOINT_SUFFIXES)
    if not checkpoints:
        raise ModelLoadError(f"{folder} holds no weights file (.safetensors/.bin/.pt)")
    fingerprint = hashlib.sha256(
        "".join(file_fingerprint(p) for p in checkpoints).encode()
    ).hexdigest()[:12]
    return WeightsSource("folder", f"{LOCAL_DIR_PREFIX}{folder}", fingerprint=fingerprint)


def _resolve_hub(model_name: str, cache_dir: str | None) -> WeightsSource:
    from huggingface_hub import try_to_load_from_cache

    repo_id = model_name[len(HF_HUB_PREFIX) :]
    if isinstance(
        try_to_load_from_cache(repo_id, "open_clip_config.json", cache_dir=cache_dir), str
    ):
        return WeightsSource("hub", model_name, cached=True)
    host = _download_host({"hf_hub": repo_id})
    if _offline_forced() or not _host_reachable(host):
        raise ModelLoadError(
            f"{model_name} is not in the local Hugging Face cache and {host} cannot be reached; "
            "download it once on a machine with internet (HF_HOME), or use XMR_MODEL=local-dir:PATH"
        )
    return WeightsSource("hub", model_name, cached=False)


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.endswith(CHECKPOINT_SUFFIXES) or Path(value).is_file()


def _resolve_tag(model_name: str, tag: str, cache_dir: str | None) -> WeightsSource:
    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise ModelLoadError(
            f"{tag!r} is not a pretrained tag of {model_name} "
            f"(known: {', '.join(tags) or 'none'}); "
            "set XMR_PRETRAINED to one of them or to a local checkpoint file"
        )
    if _tag_is_cached(cfg, cache_dir):
        return WeightsSource("tag", tag, cached=True)
    host = _download_host(cfg)
    if _offline_forced() or not _host_reachable(host):
        raise ModelLoadError(
            f"the weights {model_name}/{tag} are not in the local cache and {host} cannot be "
            "reached. Put them in the Hugging Face cache (HF_HOME) on a machine with internet, "
            "set XMR_PRETRAINED to a local checkpoint file (.pt/.bin/.safetensors), or use the "
            "bundled offline model with XMR_MODEL=shapes-tiny"
        )
    return WeightsSource("tag", tag, cached=False)


def _hf_candidates(hf_hub: str) -> tuple[str, list[str]]:
    repo_id, filename = os.path.split(hf_hub)
    filename = filename or "open_clip_pytorch_model.bin"
    names = [filename]
    if filename == "open_clip_pytorch_model.bin":
        names.insert(0, "open_clip_model.safetensors")
    elif filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    return repo_id, names


def _tag_is_cached(cfg: dict, cache_dir: str | None) -> bool:
    if cfg.get("file"):
        return Path(cfg["file"]).is_file()
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo_id, names = _hf_candidates(cfg["hf_hub"])
        return any(
            isinstance(try_to_load_from_cache(repo_id, name, cache_dir=cache_dir), str)
            for name in names
        )
    if cfg.get("url"):
        clip_cache = Path(cache_dir or os.path.expanduser("~/.cache/clip"))
        return (clip_cache / os.path.basename(cfg["url"])).is_file()
    return False


def _download_host(cfg: dict) -> str:
    if cfg.get("hf_hub"):
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        return urlparse(endpoint).hostname or "huggingface.co"
    return urlparse(cfg.get("url", "")).hostname or "the download host"


def _offline_forced() -> bool:
    return any(
        os.environ.get(name, "").lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _host_reachable(host: str, port: int = 443) -> bool:
    try:
        with socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False

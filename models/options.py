"""How a model is loaded: one value instead of a list of positional settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LoadOptions:
    """Where and how an encoder runs; each field is the XMR_ setting of the same name."""

    device: str = "auto"  # auto, cpu, cuda, cuda:1 ...
    precision: str = "auto"  # auto, fp32, fp16, bf16
    runtime: str = "auto"  # auto, torch, onnxruntime, openvino
    model_cache_dir: str | None = None  # where open_clip and Hugging Face keep weights
    runtime_cache_dir: Path | None = None  # where ONNX exports are kept (export_cache)
    threads: int | None = None  # the cores the model runs on (the inference thread's): all

"""Which runtime runs a model's towers: the candidates for a device, and the first whose
vectors equal PyTorch fp32's on the probes (models/runtimes/verify.py), else PyTorch."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.errors import ModelLoadError
from models.memory import page_out_mappings
from models.options import LoadOptions
from models.runtimes.export import Export, onnx_graphs
from models.runtimes.verify import MIN_COSINE, Probes
from models.threads import available_cores
from models.towers import TorchTowers, Towers, image_side
from models.transforms import SplitTransform

logger = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnxruntime", "openvino")
AUTO_CPU_RUNTIMES = ("openvino",)
FP16_WEIGHTS_MIN_PARAMETERS = 50_000_000  # ViT-B-32 has 151 M; shapes-tiny 4.7 M


@dataclass(frozen=True)
class TowerInputs:
    """What the towers are built from: open_clip's model in fp32 on the CPU, as created, its
    image transform's split, the tokenized probe texts, and the model's id."""

    model: Any
    split: SplitTransform | None
    probe_tokens: torch.Tensor
    model_id: str


def runtime_candidates(
    requested: str, device: torch.device, precision: str = "fp32", amx: bool | None = None
) -> tuple[str, ...]:
    """The runtimes to try before PyTorch, in order; empty: PyTorch.

    `auto` in bf16 on a CPU with AMX is PyTorch: oneDNN's AMX kernels encoded image batches
    faster there than OpenVINO's (145.7 against 125.0 images/s for ViT-B-32; indexing through
    HTTP 125 against 96 /s), and PyTorch bf16 was the default before. On AVX512-BF16 without
    AMX and on AVX2 OpenVINO was the fastest everywhere (BENCHMARKS.md).
    """
    if requested not in ("auto", *RUNTIMES):
        raise ModelLoadError(f"XMR_RUNTIME={requested!r} is not one of auto, {', '.join(RUNTIMES)}")
    if device.type != "cpu":
        if requested not in ("auto", "torch"):
            raise ModelLoadError(f"XMR_RUNTIME={requested} runs on the CPU; on {device} use torch")
        return ()
    if requested == "auto":
        has_amx = cpu_has_amx() if amx is None else amx
        return () if precision == "bf16" and has_amx else AUTO_CPU_RUNTIMES
    return () if requested == "torch" else (requested,)


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (Intel Sapphire Rapids and later)."""
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def runtime_precision(runtime: str, requested: str, resolved: str) -> str:
    """The precision `runtime` runs in: ONNX Runtime's CPU kernels are fp32 only."""
    if runtime != "onnxruntime" or resolved == "fp32":
        return resolved
    if requested == "auto":
        return "fp32"
    raise ModelLoadError("XMR_RUNTIME=onnxruntime computes in fp32: set XMR_PRECISION=fp32 or auto")


def build_towers(
    inputs: TowerInputs, device: torch.device, precision: str, options: LoadOptions
) -> Towers:
    """The fastest allowed runtime whose vectors equal PyTorch fp32's; PyTorch otherwise.

    `precision` is `options.precision` resolved for PyTorch on `device`; `options.threads` are
    the cores another runtime runs on (the inference thread's), not those of the thread that
    loads it (app.services.threads).
    """
    candidates = runtime_candidates(options.runtime, device, precision)
    model_id = inputs.model_id
    if options.runtime == "auto" and device.type == "cpu" and not candidates:
        logger.info("XMR_RUNTIME=auto: PyTorch runs %s (bf16 on a CPU with AMX)", model_id)
    model, split, probe_tokens = inputs.model, inputs.split, inputs.probe_tokens
    if candidates:
        reference = TorchTowers(model, torch.device("cpu"), "fp32", split, probe_tokens)
        export = Export(
            model,
            split,
            reference.short_text,
            probe_tokens.shape[1],
            model_id,
            options.runtime_cache_dir,
        )
        probes = Probes(probe_tokens, split, image_side(model), reference.short_text)
        expected = probes.reference(reference)
        for name in candidates:
            runtime_prec = runtime_precision(name, options.precision, precision)
            for weights in weight_formats(name, runtime_prec, parameter_count(model)):
                towers = _checked_runtime(
                    name, runtime_prec, weights, export, probes, expected, options.threads
                )
                if towers is not None:
                    return towers
        logger.warning("%s: no other runtime passed; running PyTorch", model_id)
    return TorchTowers(model, device, precision, split, probe_tokens)


def weight_formats(runtime: str, precision: str, parameters: int) -> tuple[str, ...]:
    """How the weights are given to `runtime`, in the order to try them.

    For bf16 arithmetic OpenVINO gets fp16 weights first where the model is large: it then
    keeps about 220 MB less resident for ViT-B-32, as fast and within the same cosine to
    PyTorch fp32 (BENCHMARKS.md). OpenVINO also runs more of the graph in
    bf16 from them, which moved one flat image of the small shapes-tiny from 0.99999 to
    0.99985: below FP16_WEIGHTS_MIN_PARAMETERS the saving is a few MB, not worth that. A model
    whose fp16 weights fail the probes (fp16 has less range than bf16) gets its fp32 weights.
    """
    if runtime == "openvino" and precision == "bf16" and parameters >= FP16_WEIGHTS_MIN_PARAMETERS:
        return ("fp16", "fp32")
    return ("fp32",)


def parameter_count(model: Any) -> int:
    return sum(int(parameter.numel()) for parameter in model.parameters())


def _checked_runtime(
    name: str,
    precision: str,
    weights: str,
    export: Export,
    probes: Probes,
    expected: dict[str, np.ndarray],
    threads: int | None = None,
) -> Towers | None:
    """`name` running the export, if its vectors equal PyTorch fp32's; None (logged) if not.

    A cached export that fails is exported again once: a damaged cache heals itself.
    """
    problem = ""
    for replace in (False, True):
        cached = False  # an export that failed as it was made is not made again
        try:
            folder, cached = export.folder(replace)
            towers = open_exported(name, folder, precision, export.short_text, weights, threads)
            agreement = probes.agreement(towers, expected)
        except Exception as e:  # any failure of another runtime means PyTorch, never worse
            problem = f"{type(e).__name__}: {e}"
        else:
            needed = MIN_COSINE.get(towers.precision, MIN_COSINE["bf16"])
            if agreement >= needed:
                # the probes ran both towers, so OpenVINO has packed its weights out of the
                # files it maps (the graphs, or its cache of them) and will not read those
                # pages again, whatever shapes follow (BENCHMARKS.md): the kernel may take them
                page_out_mappings(folder)
                logger.info(
                    "%s runs %s in %s from %s weights (cosine to PyTorch fp32 >= %.6f)",
                    name,
                    export.model_id,
                    towers.precision,
                    weights,
                    agreement,
                )
                return towers
            problem = f"its vectors differ from PyTorch fp32: cosine {agreement:.6f} < {needed}"
            if weights != "fp32":
                break  # only these weights are coarser: exporting again would not help
        if not cached:
            break
        logger.warning("%s could not use the cached export (%s): exporting again", name, problem)
    logger.warning("%s with %s weights not used (%s)", name, weights, problem)
    return None


def open_exported(
    name: str,
    folder: Path,
    precision: str,
    short_text: bool,
    weights: str = "fp32",
    threads: int | None = None,
) -> Towers:
    """The exported towers in the runtime `name` (each runtime's library loads here)."""
    threads = threads or available_cores()  # the inference thread's, whichever thread loads
    if name == "onnxruntime":
        from models.runtimes.onnx_runtime import OnnxRuntimeTowers

        return OnnxRuntimeTowers(folder, short_text, threads)
    if name == "openvino":
        from models.runtimes.open_vino import OpenVinoTowers, openvino_fp16_graphs

        graphs = openvino_fp16_graphs(folder) if weights == "fp16" else onnx_graphs(folder)
        return OpenVinoTowers(graphs, folder, short_text, threads, precision)
    raise ModelLoadError(f"no runtime named {name!r}")

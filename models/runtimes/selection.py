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
from models.tower_run import TOWERS, Tower
from models.towers import TorchTowers, TowerPair, Towers, drop_tower, image_side
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


@dataclass(frozen=True)
class RuntimePlan:
    """Per tower, the runtimes to try before PyTorch, in order; empty: PyTorch."""

    text: tuple[str, ...]
    image: tuple[str, ...]

    def of(self, tower: Tower) -> tuple[str, ...]:
        return self.text if tower == "text" else self.image


def runtime_plan(
    requested: str, device: torch.device, precision: str = "fp32", amx: bool | None = None
) -> RuntimePlan:
    """Which runtimes run each tower. A named runtime runs both; `auto` picks per tower.

    `auto` on a CPU: OpenVINO runs the text tower on every CPU measured (one short query 6.9
    against PyTorch's 17.7 ms in bf16 on AVX512-BF16, 5.7 against 20.3 ms with AMX, 8.7
    against 25.8 ms in fp32; BENCHMARKS.md).
    The image tower is PyTorch in bf16 on a CPU with AMX, whose oneDNN kernels encode the
    batcher's batches of 32 faster than OpenVINO's (145.7 against 125.0 images/s for
    ViT-B-32), and OpenVINO on AVX512-BF16 without AMX (Intel, and AMD EPYC: 44.9 against
    39.3 images/s, one image 26.6 against 50.4 ms) and on AVX2, where it was the fastest in
    every figure.
    """
    if requested not in ("auto", *RUNTIMES):
        raise ModelLoadError(f"XMR_RUNTIME={requested!r} is not one of auto, {', '.join(RUNTIMES)}")
    if device.type != "cpu":
        if requested not in ("auto", "torch"):
            raise ModelLoadError(f"XMR_RUNTIME={requested} runs on the CPU; on {device} use torch")
        return RuntimePlan((), ())
    if requested == "auto":
        has_amx = cpu_has_amx() if amx is None else amx
        image = () if precision == "bf16" and has_amx else AUTO_CPU_RUNTIMES
        return RuntimePlan(text=AUTO_CPU_RUNTIMES, image=image)
    chosen = () if requested == "torch" else (requested,)
    return RuntimePlan(text=chosen, image=chosen)


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
    """Each tower in the fastest allowed runtime whose vectors equal PyTorch fp32's; PyTorch
    otherwise. Where the towers run in two runtimes, each holds only its own tower.

    `precision` is `options.precision` resolved for PyTorch on `device`; `options.threads` are
    the cores another runtime runs on (the inference thread's), not those of the thread that
    loads it (app.services.threads).
    """
    plan = runtime_plan(options.runtime, device, precision)
    model, split, probe_tokens = inputs.model, inputs.split, inputs.probe_tokens
    if not plan.text and not plan.image:
        return TorchTowers(model, device, precision, split, probe_tokens)
    reference = TorchTowers(model, torch.device("cpu"), "fp32", split, probe_tokens)
    export = Export(
        model,
        split,
        reference.short_text,
        probe_tokens.shape[1],
        inputs.model_id,
        options.runtime_cache_dir,
    )
    probes = Probes(probe_tokens, split, image_side(model), reference.short_text)
    expected = probes.reference(reference)
    check = _RuntimeCheck(export, probes, expected, options)
    if plan.text == plan.image:
        towers = check.first_passing(plan.text, precision, TOWERS)
        if towers is not None:
            return towers
        logger.warning("%s: no other runtime passed; running PyTorch", inputs.model_id)
        return TorchTowers(model, device, precision, split, probe_tokens)
    text = check.first_passing(plan.text, precision, ("text",))
    image = check.first_passing(plan.image, precision, ("image",))
    if text is not None and image is None:
        drop_tower(model, "text")
        image = TorchTowers(model, device, precision, split)
    elif image is not None and text is None:
        drop_tower(model, "image")
        text = TorchTowers(model, device, precision, split, probe_tokens)
    if text is None or image is None:
        logger.warning("%s: no other runtime passed; running PyTorch", inputs.model_id)
        return TorchTowers(model, device, precision, split, probe_tokens)
    towers = TowerPair(text, image)
    logger.info("%s: text in %s, images in %s", inputs.model_id, text.runtime, image.runtime)
    return towers


class _RuntimeCheck:
    """Opens another runtime on the export and keeps it only if its vectors equal PyTorch
    fp32's on the probes of the towers it is to run."""

    def __init__(
        self, export: Export, probes: Probes, expected: dict[str, np.ndarray], options: LoadOptions
    ) -> None:
        self._export = export
        self._probes = probes
        self._expected = expected
        self._options = options

    def first_passing(
        self, candidates: tuple[str, ...], precision: str, which: tuple[Tower, ...]
    ) -> Towers | None:
        parameters = parameter_count(self._export.model)
        for name in candidates:
            runtime_prec = runtime_precision(name, self._options.precision, precision)
            for weights in weight_formats(name, runtime_prec, parameters):
                towers = _checked_runtime(
                    name,
                    runtime_prec,
                    weights,
                    self._export,
                    self._probes,
                    self._expected,
                    self._options.threads,
                    which,
                )
                if towers is not None:
                    return towers
        return None


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
    which: tuple[Tower, ...] = TOWERS,
) -> Towers | None:
    """`name` running the towers `which` of the export, if its vectors equal PyTorch fp32's;
    None (logged) if not.

    A cached export that fails is exported again once: a damaged cache heals itself.
    """
    problem = ""
    for replace in (False, True):
        cached = False  # an export that failed as it was made is not made again
        try:
            folder, cached = export.folder(replace)
            towers = open_exported(
                name, folder, precision, export.short_text, weights, threads, which
            )
            agreement = probes.agreement(towers, expected, which)
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
                    "%s runs %s of %s in %s from %s weights (cosine to PyTorch fp32 >= %.6f)",
                    name,
                    " and ".join(which),
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
    which: tuple[Tower, ...] = TOWERS,
) -> Towers:
    """The exported towers `which` in the runtime `name` (each runtime's library loads here;
    ONNX Runtime, never chosen for one tower alone, opens both)."""
    threads = threads or available_cores()  # the inference thread's, whichever thread loads
    if name == "onnxruntime":
        from models.runtimes.onnx_runtime import OnnxRuntimeTowers

        return OnnxRuntimeTowers(folder, short_text, threads)
    if name == "openvino":
        from models.runtimes.open_vino import OpenVinoTowers, openvino_fp16_graphs

        graphs = openvino_fp16_graphs(folder) if weights == "fp16" else onnx_graphs(folder)
        return OpenVinoTowers(graphs, folder, short_text, threads, precision, which)
    raise ModelLoadError(f"no runtime named {name!r}")

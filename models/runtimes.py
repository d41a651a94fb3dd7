"""ONNX Runtime and OpenVINO beside PyTorch: export the towers once, cache, verify, or fall back.

The model is always created and its weights loaded by open_clip; another runtime only runs the
two towers. Each tower is exported to ONNX once (dynamic batch; the text tower with a dynamic
length where the trimmed text path applies) into a folder keyed by the model id, a digest of
the weights and the exporter's versions; OpenVINO keeps its compiled form beside it, keyed by
its own version. Before a runtime is used its vectors for fixed probes must match PyTorch fp32
(MIN_COSINE); any failure, of the export, the runtime or that check, means PyTorch with a
warning, never other vectors.

`auto` on the CPU is OpenVINO: it measured fastest of the three for text queries, single images
and batches both on AVX2 and on AVX512-BF16 CPUs (BENCHMARKS.md, `python -m bench.runtimes`),
except for bf16 on CPUs with AMX, where PyTorch encodes batches faster. On CUDA it is PyTorch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch

from models.errors import ModelLoadError
from models.export_cache import default_cache_dir, export_slug
from models.memory import page_out_mappings
from models.shapes import text_length_bucket
from models.towers import (
    TorchTowers,
    Towers,
    encode_text_trimmed,
    image_side,
    text_length,
)
from models.transforms import SplitTransform

logger = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnxruntime", "openvino")
AUTO_CPU_RUNTIMES = ("openvino",)
EXPORT_FORMAT = 1  # bump when the exported graphs change
ONNX_OPSET = 18
MAX_EXPORT_BATCH = 4096  # XMR_MAX_BATCH's bound
MIN_COSINE = {"fp32": 0.99999, "bf16": 0.9999}
IMAGE_PROBES = 3
FP16_WEIGHTS_MIN_PARAMETERS = 50_000_000  # ViT-B-32 has 151 M; shapes-tiny 4.7 M


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
    model: Any,
    device: torch.device,
    precision: str,
    requested_runtime: str,
    requested_precision: str,
    split: SplitTransform | None,
    probe_tokens: torch.Tensor,
    model_id: str,
    cache_dir: Path | None,
    threads: int | None = None,
) -> Towers:
    """The fastest allowed runtime whose vectors equal PyTorch fp32's; PyTorch otherwise.

    `threads`: the cores another runtime runs on (the inference thread's; default all), not
    those of the thread that loads it (app.services.threads).

    `model` is open_clip's model in fp32 on the CPU, as created; `precision` is already resolved
    for PyTorch on `device`.
    """
    candidates = runtime_candidates(requested_runtime, device, precision)
    if requested_runtime == "auto" and device.type == "cpu" and not candidates:
        logger.info("XMR_RUNTIME=auto: PyTorch runs %s (bf16 on a CPU with AMX)", model_id)
    if candidates:
        reference = TorchTowers(model, torch.device("cpu"), "fp32", split, probe_tokens)
        export = Export(
            model, split, reference.short_text, probe_tokens.shape[1], model_id, cache_dir
        )
        probes = Probes(probe_tokens, split, image_side(model), reference.short_text)
        expected = probes.reference(reference)
        for name in candidates:
            runtime_prec = runtime_precision(name, requested_precision, precision)
            for weights in weight_formats(name, runtime_prec, parameter_count(model)):
                towers = _checked_runtime(
                    name, runtime_prec, weights, export, probes, expected, threads
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


class Probes:
    """Fixed texts and images on which another runtime must reproduce PyTorch fp32."""

    def __init__(
        self,
        probe_tokens: torch.Tensor,
        split: SplitTransform | None,
        image_side: int,
        short_text: bool,
    ) -> None:
        context = probe_tokens.shape[1]
        self.full_tokens = probe_tokens
        # each probe alone at its own (bucketed) length, then all at the longest
        self.text_inputs = [
            row[:, : text_length_bucket(text_length(row), context)] if short_text else row
            for row in probe_tokens.split(1)
        ] + [probe_tokens]
        rng = np.random.default_rng(0)
        shape = (IMAGE_PROBES, 3, image_side, image_side)
        if split is not None:
            noise = rng.integers(0, 256, shape, dtype=np.uint8)
            ramp = np.linspace(0, 255, image_side, dtype=np.float32).astype(np.uint8)
            noise[0] = np.broadcast_to(ramp, (3, image_side, image_side))  # one smooth image
            noise[1] = np.array([200, 40, 40], dtype=np.uint8)[:, None, None]  # one flat colour
            self.pixels = torch.from_numpy(noise)
        else:
            self.pixels = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))

    def reference(self, reference: TorchTowers) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            text = reference.model.encode_text(self.full_tokens)
        return {"text": _unit_rows(text.float().numpy()), "image": reference.image(self.pixels)}

    def agreement(self, towers: Towers, expected: dict[str, np.ndarray]) -> float:
        """The lowest cosine between `towers`' vectors and PyTorch fp32's over all probes."""
        texts = [towers.text(tokens) for tokens in self.text_inputs]
        singles = np.concatenate(texts[:-1])
        images = [towers.image(self.pixels[:1]), towers.image(self.pixels)]
        return min(
            _min_cosine(singles, expected["text"]),
            _min_cosine(texts[-1], expected["text"]),
            _min_cosine(images[0], expected["image"][:1]),
            _min_cosine(images[1], expected["image"]),
        )


# -- export ------------------------------------------------------------------------------
class _ImageGraph(torch.nn.Module):
    """uint8 pixels to unit rows: ToTensor and Normalize's arithmetic, then encode_image."""

    def __init__(self, model: Any, split: SplitTransform | None) -> None:
        super().__init__()
        self.model = model
        self.mean: torch.Tensor | None = split.mean.clone() if split is not None else None
        self.std: torch.Tensor | None = split.std.clone() if split is not None else None

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.mean is not None and self.std is not None:
            pixels = (pixels.to(torch.float32) / 255 - self.mean) / self.std
        features = self.model.encode_image(pixels)
        return features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class _TextGraph(torch.nn.Module):
    def __init__(self, model: Any, short_text: bool) -> None:
        super().__init__()
        self.model = model
        self.short_text = short_text

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.short_text:
            features = encode_text_trimmed(self.model, tokens)
        else:
            features = self.model.encode_text(tokens)
        return features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@dataclass(frozen=True)
class Export:
    """What the ONNX export of one model's towers depends on, and where it is kept."""

    model: Any
    split: SplitTransform | None
    short_text: bool
    context_length: int
    model_id: str
    cache_dir: Path | None

    @functools.cached_property
    def path(self) -> Path:
        """The export's folder: a digest of the weights is part of its name."""
        root = self.cache_dir or default_cache_dir()
        return export_folder(self.model, self.split, self.short_text, self.model_id, root)

    def folder(self, replace: bool = False) -> tuple[Path, bool]:
        """The folder holding `text.onnx` and `image.onnx`, and whether it was there already.

        Exported when missing, or anew when `replace`.
        """
        folder = self.path
        if replace:
            shutil.rmtree(folder, ignore_errors=True)
        elif (folder / "export.json").is_file():
            return folder, True
        logger.info("exporting %s to ONNX (once; later starts read %s)", self.model_id, folder)
        started = time.perf_counter()
        with _made_whole(folder, (folder / "export.json").is_file) as partial:
            _export(self.model, self.split, self.short_text, self.context_length, partial)
        elapsed = time.perf_counter() - started
        logger.info("exported %s to ONNX in %.1f s (%s)", self.model_id, elapsed, folder)
        return folder, False


def export_folder(
    model: Any, split: SplitTransform | None, short_text: bool, model_id: str, root: Path
) -> Path:
    key = json.dumps(
        [
            EXPORT_FORMAT,
            ONNX_OPSET,
            torch.__version__,
            open_clip.__version__,
            model_id,
            weights_digest(model),
            split is not None,
            short_text,
        ]
    )
    return root / f"{export_slug(model_id)}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def weights_digest(model: Any) -> str:
    """A digest of every parameter and buffer: the export belongs to these exact weights."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        flat = tensor.detach().cpu().contiguous().flatten()
        digest.update(flat.view(torch.uint8).numpy().data)
    return digest.hexdigest()


def _export(
    model: Any, split: SplitTransform | None, short_text: bool, context_length: int, folder: Path
) -> None:
    side = image_side(model)
    tokens = torch.ones((2, 8 if short_text else context_length), dtype=torch.long)
    tokens[:, -1] = 2  # argmax pooling traces the same graph whatever the values are
    pixel_type = torch.uint8 if split is not None else torch.float32
    pixels = torch.zeros((2, 3, side, side), dtype=pixel_type)
    batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
    text_dims = {0: batch, 1: torch.export.Dim("length", min=2, max=context_length)}
    with warnings.catch_warnings(), _quiet("onnxscript", "onnx_ir", "torch.onnx", "torch.export"):
        warnings.simplefilter("ignore")
        _onnx_export(
            _TextGraph(model, short_text),
            tokens,
            "tokens",
            text_dims if short_text else {0: batch},
            folder / "text.onnx",
        )
        _onnx_export(_ImageGraph(model, split), pixels, "pixels", {0: batch}, folder / "image.onnx")
    manifest = {"format": EXPORT_FORMAT, "short_text": short_text, "uint8": split is not None}
    (folder / "export.json").write_text(json.dumps(manifest))


def _onnx_export(
    graph: torch.nn.Module, example: torch.Tensor, name: str, dims: dict[int, Any], path: Path
) -> None:
    """torch.export's graph, which keeps the symbolic batch and text length (the TorchScript
    exporter turned the length into a constant inside nn.MultiheadAttention)."""
    program = torch.onnx.export(
        graph.eval(),
        (example,),
        dynamo=True,
        input_names=[name],
        output_names=["vectors"],
        dynamic_shapes={name: dims},
        opset_version=ONNX_OPSET,
        verbose=False,
    )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(path))


# -- runtimes ----------------------------------------------------------------------------
def open_exported(
    name: str,
    folder: Path,
    precision: str,
    short_text: bool,
    weights: str = "fp32",
    threads: int | None = None,
) -> Towers:
    threads = threads or os.cpu_count() or 1  # the inference thread's, whichever thread loads
    if name == "onnxruntime":
        return OnnxRuntimeTowers(folder, short_text, threads)
    if name == "openvino":
        graphs = openvino_fp16_graphs(folder) if weights == "fp16" else onnx_graphs(folder)
        return OpenVinoTowers(graphs, folder, short_text, threads, precision)
    raise ModelLoadError(f"no runtime named {name!r}")


def onnx_graphs(folder: Path) -> dict[str, Path]:
    return {tower: folder / f"{tower}.onnx" for tower in ("text", "image")}


def openvino_fp16_graphs(folder: Path) -> dict[str, Path]:
    """The exported towers as OpenVINO models whose weights are stored in fp16, made once."""
    import openvino

    version = re.sub(r"[^A-Za-z0-9._-]+", "_", openvino.__version__)
    target = folder / f"fp16-weights-openvino-{version}"
    graphs = {tower: target / f"{tower}.xml" for tower in ("text", "image")}
    if all(path.is_file() for path in graphs.values()):
        return graphs
    logger.info("storing the weights of %s in fp16 for OpenVINO (once)", folder.name)
    started = time.perf_counter()
    core = openvino.Core()
    with _made_whole(target, lambda: all(path.is_file() for path in graphs.values())) as partial:
        for tower, source in onnx_graphs(folder).items():
            model = core.read_model(str(source))
            openvino.save_model(model, str(partial / f"{tower}.xml"), compress_to_fp16=True)
            del model  # its fp32 weights: one tower's at a time
    logger.info("stored fp16 weights in %.1f s (%s)", time.perf_counter() - started, target)
    return graphs


class OnnxRuntimeTowers:
    """Both towers as ONNX Runtime CPU sessions with all graph optimizations."""

    runtime = "onnxruntime"
    precision = "fp32"
    fixed_shapes = True  # its allocator keeps an arena sized by the largest shape met

    def __init__(self, folder: Path, short_text: bool, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        self._text = onnxruntime.InferenceSession(
            str(folder / "text.onnx"), options, providers=providers
        )
        self._image = onnxruntime.InferenceSession(
            str(folder / "image.onnx"), options, providers=providers
        )
        self.short_text = short_text

    def image(self, pixels: torch.Tensor) -> np.ndarray:
        return np.asarray(self._image.run(None, {"pixels": pixels.numpy()})[0])

    def text(self, tokens: torch.Tensor) -> np.ndarray:
        return np.asarray(self._text.run(None, {"tokens": tokens.numpy()})[0])


class OpenVinoTowers:
    """Both towers compiled by OpenVINO for the CPU, for latency (one stream)."""

    runtime = "openvino"
    fixed_shapes = True  # compiled kernels are cached per input shape

    def __init__(
        self, graphs: dict[str, Path], folder: Path, short_text: bool, threads: int, precision: str
    ) -> None:
        import openvino

        core = openvino.Core()
        config = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            # the compiled graphs, kept beside the export and keyed by OpenVINO's version: a
            # start maps them instead of reading and compiling the ONNX files again
            "CACHE_DIR": str(folder / f"openvino-{openvino.__version__}"),
        }
        self._text = core.compile_model(str(graphs["text"]), "CPU", config)
        self._image = core.compile_model(str(graphs["image"]), "CPU", config)
        # the hint is ignored (f32) on a CPU without bf16 instructions: report what runs
        actual = getattr(self._image.get_property("INFERENCE_PRECISION_HINT"), "type_name", "")
        self.precision = "bf16" if actual in ("bf16", "bfloat16") else "fp32"
        self.short_text = short_text
        # an infer request is one set of buffers: one caller at a time
        self._requests = {
            "text": (self._text.create_infer_request(), threading.Lock()),
            "image": (self._image.create_infer_request(), threading.Lock()),
        }

    def image(self, pixels: torch.Tensor) -> np.ndarray:
        return self._infer("image", pixels.numpy())

    def text(self, tokens: torch.Tensor) -> np.ndarray:
        return self._infer("text", tokens.numpy())

    def _infer(self, tower: str, array: np.ndarray) -> np.ndarray:
        request, lock = self._requests[tower]
        with lock:
            request.infer({0: array})
            return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)


# -- helpers -----------------------------------------------------------------------------
@contextlib.contextmanager
def _made_whole(target: Path, complete: Callable[[], bool]) -> Iterator[Path]:
    """An empty folder to fill, renamed to `target` once filled: whole or not at all.

    A concurrent maker may have renamed its own first; `complete` says whether `target` is.
    """
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}-{threading.get_ident()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
        try:
            partial.rename(target)
        except OSError:
            if not complete():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """The exporter's libraries log every optimization pass at INFO: keep warnings only."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.setLevel(max(each.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for each, level in zip(loggers, levels, strict=True):
            each.setLevel(level)


def _unit_rows(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.maximum(norms, 1e-12)).astype(np.float32)


def _min_cosine(actual: np.ndarray, expected: np.ndarray) -> float:
    return float((_unit_rows(actual) * _unit_rows(expected)).sum(axis=1).min())

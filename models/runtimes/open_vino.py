"""OpenVINO running the exported towers on the CPU, in bf16 where the CPU has it."""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

import numpy as np
import torch

from models.runtimes.export import made_whole, onnx_graphs
from models.tower_run import TOWERS, Tower, TowerRun

logger = logging.getLogger(__name__)


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
    with made_whole(target, lambda: all(path.is_file() for path in graphs.values())) as partial:
        for tower, source in onnx_graphs(folder).items():
            model = core.read_model(str(source))
            openvino.save_model(model, str(partial / f"{tower}.xml"), compress_to_fp16=True)
            del model  # its fp32 weights: one tower's at a time
    logger.info("stored fp16 weights in %.1f s (%s)", time.perf_counter() - started, target)
    return graphs


class OpenVinoTowers:
    """The towers compiled by OpenVINO for the CPU, for latency (one stream): both, or only
    the one it runs beside another runtime (the other is never compiled, its weights never held)."""

    runtime = "openvino"
    fixed_shapes = True  # compiled kernels are cached per input shape

    def __init__(
        self,
        graphs: dict[str, Path],
        folder: Path,
        short_text: bool,
        threads: int,
        precision: str,
        towers: tuple[Tower, ...] = TOWERS,
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
        compiled = {
            tower: core.compile_model(str(graphs[tower]), "CPU", config) for tower in towers
        }
        # the hint is ignored (f32) on a CPU without bf16 instructions: report what runs
        hint = compiled[towers[0]].get_property("INFERENCE_PRECISION_HINT")
        actual = getattr(hint, "type_name", "")
        self.precision = "bf16" if actual in ("bf16", "bfloat16") else "fp32"
        self.short_text = short_text
        # an infer request is one set of buffers: one caller at a time
        self._compiled = compiled
        self._requests = {
            tower: (model.create_infer_request(), threading.Lock())
            for tower, model in compiled.items()
        }

    @property
    def runs(self) -> dict[Tower, TowerRun]:
        return {tower: TowerRun(self.runtime, self.precision) for tower in self._requests}

    def image(self, pixels: torch.Tensor) -> np.ndarray:
        return self._infer("image", pixels.numpy())

    def text(self, tokens: torch.Tensor) -> np.ndarray:
        return self._infer("text", tokens.numpy())

    def _infer(self, tower: Tower, array: np.ndarray) -> np.ndarray:
        if tower not in self._requests:
            raise ValueError(f"OpenVINO runs only the {' and '.join(self._requests)} tower here")
        request, lock = self._requests[tower]
        with lock:
            request.infer({0: array})
            return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

"""ONNX Runtime running the exported towers on the CPU (fp32 only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.tower_run import Tower, TowerRun, one_run


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

    @property
    def runs(self) -> dict[Tower, TowerRun]:
        return one_run(self.runtime, self.precision)

    def image(self, pixels: torch.Tensor) -> np.ndarray:
        return np.asarray(self._image.run(None, {"pixels": pixels.numpy()})[0])

    def text(self, tokens: torch.Tensor) -> np.ndarray:
        return np.asarray(self._text.run(None, {"tokens": tokens.numpy()})[0])

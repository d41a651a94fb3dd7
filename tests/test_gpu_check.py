"""scripts/gpu_check.sh, the one command for a GPU machine, without one: it says which parts
need CUDA, skips them, and checks its own benchmark on the CPU."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import TINY_MODEL

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU is here: it runs whole")
def test_without_a_gpu_the_check_skips_the_cuda_parts_and_checks_itself(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", "scripts/gpu_check.sh", str(tmp_path)],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "MODEL": TINY_MODEL, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no CUDA device here: skipping the CUDA tests" in done.stdout
    report = json.loads((tmp_path / "gpu-cpu.json").read_text())
    assert report["device"] == "cpu" and report["model"] == f"{TINY_MODEL}/random-init"
    (figures,) = report["torch"].values()
    assert figures["images_per_s"]["32"] > 0 and figures["text_query_p50_ms"] > 0
    assert set(figures["runs"]) == {"text", "image"}
    missing = report["onnxruntime"]["not_available"]
    assert missing == ["CUDAExecutionProvider", "TensorrtExecutionProvider"]

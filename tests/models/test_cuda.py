"""The model and the service on a CUDA device (scripts/gpu_check.sh runs these where there is
one; everywhere else they skip)."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from models import OpenClipEncoder
from models.options import LoadOptions
from models.tower_run import TowerRun
from tests.conftest import TINY_MODEL, png_file
from tests.models.test_runtimes import worst_cosine

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


def test_auto_on_cuda_is_pytorch_fp16_with_the_cpus_vectors(
    torch_encoder: OpenClipEncoder,
) -> None:
    encoder = OpenClipEncoder.load(TINY_MODEL, "", LoadOptions(device="cuda"))
    assert (encoder.device, encoder.runtime, encoder.precision) == ("cuda", "torch", "fp16")
    assert set(encoder.tower_runs.values()) == {TowerRun("torch", "fp16")}
    assert worst_cosine(encoder, torch_encoder) >= 0.999  # fp16 against the CPU's fp32


def test_the_service_indexes_and_searches_on_cuda(settings: Settings) -> None:
    on_cuda = settings.model_copy(update={"device": "cuda"})
    with TestClient(create_app(on_cuda)) as client:
        info = client.get("/v1/info").json()
        assert info["device"].startswith("cuda") and info["precision"] == "fp16"
        assert client.post("/v1/images", files=[png_file("r.png", "red")]).status_code == 201
        hits = client.get("/v1/search/text", params={"q": "red", "k": 1}).json()["results"]
        assert len(hits) == 1

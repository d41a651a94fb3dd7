"""Shared fixtures: a tiny real open_clip model, real data dirs, a real app through TestClient."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import open_clip
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.main import create_app
from models import OpenClipEncoder

TINY_MODEL = "xmr-test-tiny"  # models/configs/xmr-test-tiny.json, seeded random weights


@pytest.fixture(scope="session")
def tiny_encoder() -> OpenClipEncoder:
    return OpenClipEncoder.load(TINY_MODEL, "", device="cpu")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        model=TINY_MODEL,
        pretrained="",
        device="cpu",
        data_dir=tmp_path / "data",
        import_root=tmp_path / "import",
        snapshot_interval_s=3600,
    )


@pytest.fixture
def client(settings: Settings, tiny_encoder: OpenClipEncoder) -> Iterator[TestClient]:
    with TestClient(create_app(settings, encoder=tiny_encoder)) as test_client:
        yield test_client


def reference_open_clip(encoder: OpenClipEncoder) -> tuple[Any, Any, Any]:
    """open_clip's own model, transform and tokenizer for TINY_MODEL, with `encoder`'s weights."""
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL, pretrained=None)
    model.load_state_dict(encoder._model.state_dict())
    return model.eval(), preprocess, open_clip.get_tokenizer(TINY_MODEL)


def image_bytes(
    color: str | tuple[int, ...] = "red",
    fmt: str = "PNG",
    size: tuple[int, int] = (64, 48),
    mode: str = "RGB",
) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, fmt)
    return buffer.getvalue()


def png_file(name: str, color: str | tuple[int, ...]) -> tuple[str, tuple[str, bytes, str]]:
    """A multipart `files` entry holding a solid-colour PNG."""
    return ("files", (name, image_bytes(color), "image/png"))

"""The open_clip encoder: shapes, normalization, equivalence with open_clip, weight resolution."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from models import EmptyTextError, ModelLoadError, OpenClipEncoder, registry
from models.registry import resolve_weights
from tests.conftest import TINY_MODEL, reference_open_clip


def test_vectors_are_float32_unit_rows_of_model_dim(tiny_encoder: OpenClipEncoder) -> None:
    texts = tiny_encoder.encode_texts(["a red circle", "a blue square", "x" * 5000])
    images = tiny_encoder.encode_images([Image.new("RGB", (30, 90), "red")])
    assert tiny_encoder.dim == 64
    for vectors, n in ((texts, 3), (images, 1)):
        assert vectors.dtype == np.float32
        assert vectors.shape == (n, tiny_encoder.dim)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_matches_open_clip_encode_calls_exactly(tiny_encoder: OpenClipEncoder) -> None:
    """Same weights: we return open_clip's encode_image(preprocess(x)), encode_text(tok(x))."""
    model, preprocess, tokenizer = reference_open_clip(tiny_encoder)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8))
    with torch.no_grad():
        expected_image = model.encode_image(preprocess(image).unsqueeze(0), normalize=True).numpy()
        expected_text = model.encode_text(tokenizer(["a photo of a cat"]), normalize=True).numpy()
    cos_image = float(tiny_encoder.encode_images([image])[0] @ expected_image[0])
    cos_text = float(tiny_encoder.encode_texts(["a photo of a cat"])[0] @ expected_text[0])
    assert cos_image >= 0.9999
    assert cos_text >= 0.9999


def test_random_weights_are_seeded_so_restarts_agree(tiny_encoder: OpenClipEncoder) -> None:
    again = OpenClipEncoder.load(TINY_MODEL, "", device="cpu")
    np.testing.assert_array_equal(again.encode_texts(["same"]), tiny_encoder.encode_texts(["same"]))
    assert again.model_id == tiny_encoder.model_id == f"{TINY_MODEL}/random-init"


def test_empty_text_is_refused(tiny_encoder: OpenClipEncoder) -> None:
    with pytest.raises(EmptyTextError):
        tiny_encoder.encode_texts(["ok", "   "])


def test_local_checkpoint_file_is_loaded(tiny_encoder: OpenClipEncoder, tmp_path: Path) -> None:
    checkpoint = tmp_path / "tiny.pt"
    state = {
        k: v * 0.5 if v.is_floating_point() else v
        for k, v in tiny_encoder._model.state_dict().items()
    }
    torch.save(state, checkpoint)
    loaded = OpenClipEncoder.load(TINY_MODEL, str(checkpoint), device="cpu")
    assert loaded.model_id.startswith(f"{TINY_MODEL}/tiny.pt@")
    assert not np.allclose(loaded.encode_texts(["hi"]), tiny_encoder.encode_texts(["hi"]))


def test_unknown_model_says_what_to_set() -> None:
    with pytest.raises(ModelLoadError, match="XMR_MODEL"):
        resolve_weights("no-such-model", None)


def test_unknown_tag_lists_known_tags() -> None:
    with pytest.raises(ModelLoadError, match="laion2b_s34b_b79k"):
        resolve_weights("ViT-B-32", "not-a-tag")


def test_missing_checkpoint_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a file"):
        resolve_weights("ViT-B-32", str(tmp_path / "missing.safetensors"))


def test_uncached_weights_without_network_fail_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(registry, "_host_reachable", lambda host, port=443: False)
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match="XMR_PRETRAINED") as info:
        resolve_weights("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path / "empty-cache"))
    assert time.monotonic() - started < 5
    assert "shapes-tiny" in str(info.value)


def test_cpu_device_and_bad_device(tiny_encoder: OpenClipEncoder) -> None:
    assert tiny_encoder.device == "cpu"
    with pytest.raises(ModelLoadError, match="XMR_DEVICE"):
        OpenClipEncoder.load(TINY_MODEL, "", device="not-a-device")


def test_short_query_path_equals_open_clip_encode_text(tiny_encoder: OpenClipEncoder) -> None:
    assert tiny_encoder.short_text
    texts = ["a", "a red circle", "a much longer caption " * 4, "x " * 300, "日本語 🐈"]
    tokens = open_clip.get_tokenizer(TINY_MODEL)(texts)
    with torch.no_grad():
        expected = tiny_encoder._model.encode_text(tokens, normalize=True).numpy()
    got = tiny_encoder.encode_texts(texts)
    assert (got * expected).sum(axis=1).min() >= 0.99999
    single = np.stack([tiny_encoder.encode_texts([t])[0] for t in texts])  # other trim lengths
    assert (single * expected).sum(axis=1).min() >= 0.99999


def test_models_without_a_causal_text_tower_use_the_full_path() -> None:
    model, _, preprocess = open_clip.create_model_and_transforms(
        TINY_MODEL, pretrained=None, force_custom_text=True
    )
    encoder = OpenClipEncoder(
        model, preprocess, open_clip.get_tokenizer(TINY_MODEL), "custom", torch.device("cpu")
    )
    assert not encoder.short_text
    with torch.no_grad():
        expected = model.encode_text(open_clip.tokenize(["two cats"]), normalize=True).numpy()
    assert float(encoder.encode_texts(["two cats"])[0] @ expected[0]) >= 0.99999

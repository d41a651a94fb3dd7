"""ONNX Runtime and OpenVINO: equal vectors to PyTorch fp32, the export cache, the fallbacks."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models import ModelLoadError, OpenClipEncoder
from models.open_clip_encoder import cpu_has_native_bf16
from models.options import LoadOptions
from models.runtimes import export, open_vino, selection
from models.runtimes.selection import RuntimePlan, runtime_plan
from models.tower_run import TowerRun
from tests.conftest import TINY_MODEL, torch_state

TEXTS = ["a", "a red circle", "a blue square on the left of a green star", "x " * 300, "日本語"]


def sample_images(count: int = 5) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    images = [Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8))]
    images += [
        Image.new("RGB", (40 + 10 * n, 60), (40 * n, 200 - 30 * n, 90)) for n in range(1, count)
    ]
    return images


def worst_cosine(encoder: OpenClipEncoder, reference: OpenClipEncoder) -> float:
    """The lowest cosine to `reference` over texts and images, batched and one at a time."""
    images = sample_images()
    pairs = [
        (encoder.encode_texts(TEXTS), reference.encode_texts(TEXTS)),
        (np.concatenate([encoder.encode_texts([t]) for t in TEXTS]), reference.encode_texts(TEXTS)),
        (encoder.encode_images(images), reference.encode_images(images)),
        (encoder.encode_images(images[:1]), reference.encode_images(images[:1])),
    ]
    for vectors, _ in pairs:
        assert vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    return min(float((a * b).sum(axis=1).min()) for a, b in pairs)


def openvino_tiny(pretrained: str, precision: str, cache: Path) -> OpenClipEncoder:
    """The tiny model with `pretrained` weights, run by OpenVINO, exported into `cache`."""
    return OpenClipEncoder.load(
        TINY_MODEL,
        pretrained,
        LoadOptions(device="cpu", precision=precision, runtime="openvino", runtime_cache_dir=cache),
    )


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_runtime_reproduces_pytorch_fp32_on_the_tiny_model(
    runtime: str, torch_encoder: OpenClipEncoder, tmp_path: Path
) -> None:
    encoder = OpenClipEncoder.load(
        TINY_MODEL,
        "",
        LoadOptions(device="cpu", precision="fp32", runtime=runtime, runtime_cache_dir=tmp_path),
    )
    assert (encoder.runtime, encoder.precision) == (runtime, "fp32")
    assert encoder.torch_model is None  # PyTorch's copy of the weights is not kept
    assert worst_cosine(encoder, torch_encoder) >= 0.99999


@pytest.fixture(scope="module")
def shapes_fp32() -> OpenClipEncoder:
    return OpenClipEncoder.load(
        "shapes-tiny", None, LoadOptions(device="cpu", precision="fp32", runtime="torch")
    )


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_runtime_reproduces_pytorch_fp32_on_shapes_tiny(
    runtime: str, shapes_fp32: OpenClipEncoder, tmp_path: Path
) -> None:
    """The bundled model's image tower is a ModifiedResNet: another graph than a ViT's."""
    encoder = OpenClipEncoder.load(
        "shapes-tiny",
        None,
        LoadOptions(device="cpu", precision="fp32", runtime=runtime, runtime_cache_dir=tmp_path),
    )
    assert encoder.runtime == runtime
    assert worst_cosine(encoder, shapes_fp32) >= 0.99999


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="the CPU has no bf16 instructions")
def test_openvino_bf16_stays_within_the_reduced_precision_cosine(
    shapes_fp32: OpenClipEncoder, tmp_path: Path
) -> None:
    encoder = OpenClipEncoder.load(
        "shapes-tiny",
        None,
        LoadOptions(device="cpu", precision="auto", runtime="openvino", runtime_cache_dir=tmp_path),
    )
    assert (encoder.runtime, encoder.precision) == ("openvino", "bf16")
    assert worst_cosine(encoder, shapes_fp32) >= 0.9999


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="the CPU has no bf16 instructions")
def test_openvino_bf16_runs_fp16_weights_where_they_pass_and_fp32_weights_where_not(
    torch_encoder: OpenClipEncoder,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(selection, "FP16_WEIGHTS_MIN_PARAMETERS", 0)  # as for a large model
    caplog.set_level(logging.INFO, logger="models.runtimes")
    cache = tmp_path / "cache"

    def load(pretrained: str) -> OpenClipEncoder:
        return openvino_tiny(pretrained, "bf16", cache)

    assert worst_cosine(load(""), torch_encoder) >= 0.9999
    assert any("from fp16 weights" in r.message for r in caplog.records)
    (ours,) = {path.parent for path in cache.rglob("text.xml")}
    # fp16 weights that are not these weights (another checkpoint's) must be refused, and
    # the fp32 weights run, without exporting again
    checkpoint = tmp_path / "other.pt"
    torch.save({k: v * 0.5 for k, v in torch_state(torch_encoder).items()}, checkpoint)
    load(str(checkpoint))
    (others,) = {path.parent for path in cache.rglob("text.xml")} - {ours}
    monkeypatch.setattr(
        open_vino,
        "openvino_fp16_graphs",
        lambda folder: {tower: others / f"{tower}.xml" for tower in ("text", "image")},
    )
    caplog.clear()
    encoder = load("")
    assert (encoder.runtime, encoder.precision) == ("openvino", "bf16")
    assert any("fp16 weights not used" in r.message for r in caplog.records)
    assert any("from fp32 weights" in r.message for r in caplog.records)
    assert not any("exporting" in r.message for r in caplog.records)
    assert worst_cosine(encoder, torch_encoder) >= 0.9999


def test_fp16_weights_are_tried_first_only_for_large_models_in_bf16() -> None:
    large, small = 151_277_313, 4_688_729  # ViT-B-32, shapes-tiny
    assert selection.weight_formats("openvino", "bf16", large) == ("fp16", "fp32")
    assert selection.weight_formats("openvino", "bf16", small) == ("fp32",)
    assert selection.weight_formats("openvino", "fp32", large) == ("fp32",)
    assert selection.weight_formats("onnxruntime", "fp32", large) == ("fp32",)


def test_openvino_leaves_the_files_it_packed_its_weights_from_paged_out(
    tmp_path: Path,
) -> None:
    """A start after the first maps the compiled graphs from the cache; after the first
    inference they are not needed in memory (BENCHMARKS.md: hundreds of MB for ViT-B-32)."""

    def load() -> OpenClipEncoder:
        return OpenClipEncoder.load(
            TINY_MODEL,
            "",
            LoadOptions(
                device="cpu", precision="auto", runtime="openvino", runtime_cache_dir=tmp_path
            ),
        )

    load()  # compiles the exported graphs into the cache
    encoder = load()
    encoder.encode_texts(TEXTS)
    encoder.encode_images(sample_images())
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    mapped = [path for path in files if _resident_kb(path) or _mapped(path)]
    assert mapped, "OpenVINO maps its cache: nothing mapped means this test checks nothing"
    size_kb = sum(path.stat().st_size for path in mapped) / 1024
    assert sum(_resident_kb(path) for path in mapped) < 0.5 * size_kb


def _mapped(path: Path) -> bool:
    return str(path) in Path("/proc/self/maps").read_text()


def test_mapped_file_pages_are_handed_back_and_read_again_when_touched(tmp_path: Path) -> None:
    import mmap

    from models.memory import page_out_mappings

    path = tmp_path / "cache" / "graph.blob"
    path.parent.mkdir()
    path.write_bytes(bytes(range(256)) * 16384)  # 4 MB
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mapped:
        checksum = sum(mapped[::4096])  # touch every page
        resident_before = _resident_kb(path)
        assert page_out_mappings(tmp_path / "cache") >= 4 * 2**20
        assert _resident_kb(path) < resident_before / 2
        assert sum(mapped[::4096]) == checksum  # the same bytes, read again
        assert page_out_mappings(tmp_path / "elsewhere") == 0


def _resident_kb(path: Path) -> int:
    resident, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split(" ", 1)[0] and len(line.split()) >= 5:
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            resident += int(line.split()[1])
    return resident


def test_export_is_cached_per_weights_and_reused(
    torch_encoder: OpenClipEncoder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="models.runtimes")
    cache = tmp_path / "cache"

    def load(pretrained: str) -> OpenClipEncoder:
        return openvino_tiny(pretrained, "fp32", cache)

    first = load("")
    assert sum("exported" in r.message for r in caplog.records) == 1
    caplog.clear()
    again = load("")
    assert not any("exported" in r.message for r in caplog.records)  # read from the cache
    np.testing.assert_array_equal(again.encode_texts(TEXTS), first.encode_texts(TEXTS))
    exports = [p for p in cache.iterdir() if p.is_dir()]
    assert len(exports) == 1
    assert (exports[0] / "text.onnx").is_file() and (exports[0] / "image.onnx").is_file()
    assert any(p.name.startswith("openvino-") for p in exports[0].iterdir())  # compiled form

    checkpoint = tmp_path / "other.pt"
    torch.save(
        {k: v * 0.5 if v.is_floating_point() else v for k, v in torch_state(torch_encoder).items()},
        checkpoint,
    )
    other = load(str(checkpoint))  # other weights: another export, never the cached one
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2
    assert not np.allclose(other.encode_texts(["hi"]), first.encode_texts(["hi"]))


def test_a_damaged_cached_export_is_exported_again(tmp_path: Path) -> None:
    def load() -> OpenClipEncoder:
        return OpenClipEncoder.load(
            TINY_MODEL,
            "",
            LoadOptions(
                device="cpu", precision="fp32", runtime="onnxruntime", runtime_cache_dir=tmp_path
            ),
        )

    reference = load().encode_texts(TEXTS)
    (export,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    (export / "text.onnx").write_bytes(b"not a graph")
    healed = load()
    assert healed.runtime == "onnxruntime"
    np.testing.assert_allclose(healed.encode_texts(TEXTS), reference, atol=1e-6)


def test_an_unequal_export_falls_back_to_pytorch_with_a_warning(
    torch_encoder: OpenClipEncoder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exporter that gets the graph wrong must never serve its vectors."""
    original = export._ImageGraph.forward

    def wrong(self: export._ImageGraph, pixels: torch.Tensor) -> torch.Tensor:
        return torch.flip(original(self, pixels), dims=[-1])  # unit rows, wrong vectors

    monkeypatch.setattr(export._ImageGraph, "forward", wrong)
    caplog.set_level(logging.WARNING, logger="models.runtimes")
    encoder = OpenClipEncoder.load(
        TINY_MODEL,
        "",
        LoadOptions(device="cpu", precision="fp32", runtime="openvino", runtime_cache_dir=tmp_path),
    )
    assert encoder.runtime == "torch"
    assert any("vectors differ from PyTorch" in r.message for r in caplog.records)
    assert worst_cosine(encoder, torch_encoder) >= 0.99999


def test_a_failed_export_falls_back_to_pytorch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("operator not supported")

    monkeypatch.setattr(export, "_onnx_export", fail)
    caplog.set_level(logging.WARNING, logger="models.runtimes")
    encoder = OpenClipEncoder.load(
        TINY_MODEL, "", LoadOptions(device="cpu", precision="fp32", runtime_cache_dir=tmp_path)
    )
    assert encoder.runtime == "torch"
    assert any("operator not supported" in r.message for r in caplog.records)
    assert not any(tmp_path.iterdir())  # no partial export left behind


def test_auto_runs_what_this_cpu_measured_fastest(tmp_path: Path) -> None:
    encoder = OpenClipEncoder.load(
        TINY_MODEL, "", LoadOptions(device="cpu", runtime_cache_dir=tmp_path)
    )
    with_amx = encoder.precision == "bf16" and selection.cpu_has_amx()
    assert encoder.runtime == ("openvino+torch" if with_amx else "openvino")


def test_runtime_plan_per_tower_by_device_and_setting() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    openvino = RuntimePlan(text=("openvino",), image=("openvino",))
    assert runtime_plan("auto", cpu) == openvino
    assert runtime_plan("auto", cpu, "bf16", amx=False) == openvino
    # bf16 with AMX: OpenVINO answers text queries, PyTorch (oneDNN's AMX kernels) the images
    assert runtime_plan("auto", cpu, "bf16", amx=True) == RuntimePlan(("openvino",), ())
    assert runtime_plan("auto", cpu, "fp32", amx=True) == openvino
    assert runtime_plan("openvino", cpu, "bf16", amx=True) == openvino  # a named one runs both
    assert runtime_plan("torch", cpu) == RuntimePlan((), ())
    assert runtime_plan("onnxruntime", cpu) == RuntimePlan(("onnxruntime",), ("onnxruntime",))
    assert runtime_plan("auto", cuda) == RuntimePlan((), ())  # PyTorch fp16 on CUDA
    with pytest.raises(ModelLoadError, match="runs on the CPU"):
        runtime_plan("openvino", cuda)
    with pytest.raises(ModelLoadError, match="XMR_RUNTIME"):
        runtime_plan("tensorflow", cpu)


def test_each_tower_in_its_own_runtime_holds_only_its_own_weights(
    torch_encoder: OpenClipEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(selection, "cpu_has_amx", lambda: True)  # the plan of an AMX CPU
    encoder = OpenClipEncoder.load(
        TINY_MODEL, "", LoadOptions(device="cpu", precision="bf16", runtime_cache_dir=tmp_path)
    )
    assert encoder.runtime == "openvino+torch"
    assert encoder.tower_runs["text"].runtime == "openvino"
    assert encoder.tower_runs["image"] == TowerRun("torch", "bf16")
    model = encoder.torch_model
    assert model is not None  # PyTorch keeps the image tower alone
    assert {name.split(".")[0] for name, _ in model.named_parameters()} == {"visual", "logit_scale"}
    assert worst_cosine(encoder, torch_encoder) >= 0.999  # bf16 images against fp32


def test_openvino_compiles_only_the_towers_it_runs(
    torch_encoder: OpenClipEncoder, tmp_path: Path
) -> None:
    full = OpenClipEncoder.load(
        TINY_MODEL,
        "",
        LoadOptions(device="cpu", precision="fp32", runtime="openvino", runtime_cache_dir=tmp_path),
    )
    assert full.runtime == "openvino"
    folder = next(tmp_path.iterdir())
    text_only = selection.open_exported("openvino", folder, "fp32", True, which=("text",))
    assert set(text_only.runs) == {"text"}
    tokens = torch.from_numpy(torch_encoder.tokenize(["a red circle"]))
    np.testing.assert_allclose(
        text_only.text(tokens), full.encode_texts(["a red circle"]), atol=1e-5
    )
    with pytest.raises(ValueError, match="runs only the text tower"):
        text_only.image(torch.zeros((1, 3, 32, 32), dtype=torch.uint8))


def test_onnxruntime_runs_fp32_and_says_so_when_bf16_is_asked() -> None:
    assert selection.runtime_precision("onnxruntime", "auto", "bf16") == "fp32"
    assert selection.runtime_precision("openvino", "auto", "bf16") == "bf16"
    with pytest.raises(ModelLoadError, match="XMR_PRECISION=fp32"):
        OpenClipEncoder.load(
            TINY_MODEL, "", LoadOptions(device="cpu", precision="bf16", runtime="onnxruntime")
        )


@pytest.mark.parametrize("threads", [1, 2])
def test_openvino_uses_the_cores_it_is_given_whichever_thread_loads_it(
    threads: int, tmp_path: Path
) -> None:
    """The cores a model is given hold for OpenVINO's own threads, though the service loads
    models on a thread limited to one core (app.services.threads' load pool, as here)."""
    from concurrent.futures import ThreadPoolExecutor

    from models import use_threads

    pool = ThreadPoolExecutor(1, "xmr-load", initializer=use_threads, initargs=(1,))
    try:
        encoder = pool.submit(
            functools.partial(
                OpenClipEncoder.load,
                TINY_MODEL,
                "",
                LoadOptions(
                    device="cpu",
                    precision="fp32",
                    runtime="openvino",
                    runtime_cache_dir=tmp_path,
                    threads=threads,
                ),
            )
        ).result()
    finally:
        pool.shutdown()
    towers = encoder._towers
    assert isinstance(towers, open_vino.OpenVinoTowers)
    assert set(towers._compiled) == {"text", "image"}
    for compiled in towers._compiled.values():
        assert compiled.get_property("INFERENCE_NUM_THREADS") == threads

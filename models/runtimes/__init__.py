"""models/runtimes/: ONNX Runtime and OpenVINO beside PyTorch: export the towers once, cache,
verify, or fall back.

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

`selection.py` picks and checks (build_towers), `verify.py` holds the probes, `export.py` the
ONNX export and its cache, one module per runtime runs the exported towers. Like the rest of
models/, nothing here imports from app/ or index/; torch loads with these modules, so app/
reaches them only through models.OpenClipEncoder.
"""

"""How many cores the model calls of the current thread may use (see app.services.threads)."""

from __future__ import annotations


def use_threads(count: int) -> None:
    """PyTorch's pool for this thread; ONNX Runtime and OpenVINO size theirs from it at load."""
    import torch  # here, not at import: modules that only name this function stay torch-free

    torch.set_num_threads(count)

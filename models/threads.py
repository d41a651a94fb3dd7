"""How many cores the model calls of the current thread may use (see app.services.threads)."""

from __future__ import annotations

import os


def use_threads(count: int) -> None:
    """PyTorch's pool for this thread; ONNX Runtime and OpenVINO size theirs from it at load."""
    import torch  # here, not at import: modules that only name this function stay torch-free

    torch.set_num_threads(count)


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity (taskset, a container's cpuset),
    not every core of the machine."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no affinity on this platform
        return os.cpu_count() or 1

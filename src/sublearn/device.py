"""The device a job computes on, set up for float32 arithmetic that can be reproduced."""

from __future__ import annotations

from .errors import bad_value


def reproducible(device) -> None:
    """float32 arithmetic that can be reproduced, wherever torch is entered (the CLI, batch and teacher jobs,
    a direct call that builds a model): no TF32 in cuBLAS matmuls or cuDNN convolutions (cuDNN's default is
    on), deterministic cuDNN and algorithms, and cuBLAS's deterministic workspace (which must be set before
    cuBLAS starts: this is called before any model is built)."""
    import os

    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if getattr(device, "type", device) != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def select_device(name: str):
    import torch

    reproducible("cpu")
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        reproducible(device)
        return device
    try:
        device = torch.device(name)
    except RuntimeError:
        raise bad_value("--device", name, "allowed: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise bad_value("--device", name, f"CUDA is not usable here ({cuda_unusable_reason()}); use "
                            "--device cpu (workflow: device: cpu, or the CPU profile) or auto to fall back to the CPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise bad_value("--device", name, f"allowed: cuda:0..cuda:{torch.cuda.device_count() - 1}")
    reproducible(device)
    return device


def cuda_unusable_reason() -> str:
    import warnings

    import torch

    if not torch.version.cuda:
        return f"torch {torch.__version__} is a CPU-only build"
    with warnings.catch_warnings(record=True) as caught:  # torch warns, e.g., that the driver is too old
        warnings.simplefilter("always")
        try:
            torch.cuda.init()
        except Exception as exc:  # noqa: BLE001 - whatever CUDA says is the reason
            caught.append(exc)
    said = " ".join(" ".join(str(getattr(w, "message", w)).split()) for w in caught)
    return f"torch {torch.__version__} for CUDA {torch.version.cuda}: {said or 'no CUDA device found'}"


def peak_memory(device) -> str:
    """This process's peak memory: RSS, and on CUDA the most torch allocated."""
    import resource

    import torch

    cuda = f", CUDA max allocated {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MB" \
        if device.type == "cuda" else ""
    return f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB{cuda}"

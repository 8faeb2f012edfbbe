"""The device a job computes on, set up for float32 arithmetic that can be reproduced."""

from __future__ import annotations

from .errors import bad_value


def select_device(name: str):
    import torch

    # float32 everywhere: no TF32 in cuBLAS matmuls or cuDNN convolutions (cuDNN's default is on)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
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

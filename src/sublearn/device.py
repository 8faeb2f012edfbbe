"""The device a job computes on, set up for float32 arithmetic that can be reproduced, and the training path
it takes there. Torch-free at import: the workflow's planner decides the path with the runner's rule."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from .errors import bad_value

# How a job's students (and teachers) train, recorded per run in runs.csv (column training_path):
# alone: each trajectory its own per-run arithmetic (the reference's, bit for bit);
# stacked: MLPs of equal shape in one batched matmul per layer and step (stacked.StackedMLP; bit for bit
#   where batched matmuls are);
# fused: a lockstep set's teachers, aux heads, losses and Adam in few kernels as well (fused.FusedStudents;
#   float tolerance); students that cannot fuse (a CNN, say) train stacked or alone.
TRAINING_PATHS = ("alone", "stacked", "fused")
STACK_LAYERS = ("auto", "on", "off", "fused")  # the setting: config batch.stack_layers, `--stack-layers`


def stack_layers_setting(value) -> str:
    """The stack_layers setting as the command line spells it: YAML's booleans (on/off) and None (the
    default) to on/off/auto."""
    if value is None or isinstance(value, bool):
        value = {True: "on", False: "off", None: "auto"}[value]
    if value not in STACK_LAYERS:
        raise bad_value("--stack-layers", value, f"allowed: {', '.join(STACK_LAYERS)}")
    return value


def training_path(stack_layers, device) -> str:
    """The one rule of how a job trains, for the runner (its torch.device) and the planner (the device
    type it expects, ``planned_device``) alike: auto is fused on CUDA and alone on a CPU (where the per-run
    matmuls already run at the core's matmul rate and give the same bits on any BLAS); on is stacked, off
    alone, fused fused. Lockstep sets (stacks side by side) are formed on every path but alone."""
    setting = stack_layers_setting(stack_layers)
    if setting == "auto":
        kind = getattr(device, "type", None) or str(device).split(":")[0]
        return "fused" if kind == "cuda" else "alone"
    return {"on": "stacked", "off": "alone", "fused": "fused"}[setting]


def planned_device(name: str, gpu_plan: bool = False) -> str:
    """The device type ("cuda" or "cpu") that a job given ``--device name`` computes on, told without
    importing torch (the workflow plans with it): cpu and cuda[:N] are what they say; auto is cuda under
    a GPU plan (batch.plan gpu) or where an NVIDIA driver is loaded and the installed torch is a CUDA build
    (where ``select_device`` finds CUDA, unless the driver is too old for that build)."""
    if name != "auto":
        return "cuda" if str(name).startswith("cuda") else "cpu"
    if gpu_plan:
        return "cuda"
    spec = importlib.util.find_spec("torch")
    version = Path(spec.submodule_search_locations[0], "version.py") if spec and spec.submodule_search_locations \
        else None
    built_for_cuda = version is not None and version.is_file() and re.search(
        r"^cuda\b.*=\s*['\"]\d", version.read_text(), re.M) is not None
    return "cuda" if built_for_cuda and Path("/proc/driver/nvidia/version").exists() else "cpu"


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

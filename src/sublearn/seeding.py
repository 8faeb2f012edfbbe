"""Derived seeds: every random stream of a run comes from the base seed and a label."""

from __future__ import annotations

import hashlib
import random
from contextlib import contextmanager

import numpy as np
import torch


def derived_seed(seed: int, *parts: object) -> int:
    label = ":".join(str(p) for p in parts)
    digest = int(hashlib.sha256(label.encode("utf-8")).hexdigest()[:12], 16)
    return 100_000 * int(seed) + digest % 900_000_000


def set_seed(seed: int) -> None:
    """The reference's set_seed: Python's, NumPy's and torch's global streams, on the CPU and every CUDA
    device. Not through torch.manual_seed: on a machine without CUDA, a CUDA build still queues the CUDA
    seeding for a lazy initialisation that never comes, recording a traceback each time (~1 ms a call)."""
    random.seed(seed)
    np.random.seed(seed % (2**32 - 1))
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


@contextmanager
def forked_rng(device: torch.device):
    """Run a block on its own random stream and restore the global one afterwards."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


def seed_bookkeeping(seed: int) -> dict[str, int]:
    return {
        "rng_base": 100_000 * int(seed),
        "teacher_model_seed": derived_seed(seed, "teacher", "model_random_init"),
        "student_model_seed": derived_seed(seed, "student", "model_random_init"),
        "teacher_training_seed": derived_seed(seed, "teacher_training"),
        "student_training_seed": derived_seed(seed, "student_training_noise"),
        "dataloader_seed": derived_seed(seed, "dataloader_shuffle"),
    }

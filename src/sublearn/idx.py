"""Small synthetic datasets in torchvision's IDX layout, for tests and the quick preset.

EMNIST is a 560 MB download and exists nowhere offline; these files let the EMNIST code path (split
names, label shift, class truncation) run end to end. Each class is a fixed random image-sized template plus
pixel noise, so a teacher learns it quickly and accuracies are meaningful, if easy.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from .catalog import IMAGE_SHAPE, dataset_info
from .config import ExperimentConfig


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX file: magic (0, 0, type 0x08 = uint8, ndim), big-endian int32 sizes, then the bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(struct.pack(">BBBB", 0, 0, 0x08, array.ndim))
        handle.write(struct.pack(f">{array.ndim}I", *array.shape))
        handle.write(array.tobytes())


def synthetic_split(n: int, classes: int, label_offset: int, rng: np.random.Generator,
                    templates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(n) % classes
    rng.shuffle(labels)
    noise = rng.normal(0, 40, size=(n, *IMAGE_SHAPE[1:]))
    images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
    return images, (labels + label_offset).astype(np.uint8)


def write_synthetic_dataset(root: str | Path, dataset: str, emnist_split: str = ExperimentConfig.emnist_split,
                            n_train: int = 2000, n_test: int = 500, seed: int = 0) -> Path:
    """Write train/test IDX files where torchvision's dataset classes look for them (see catalog)."""
    info = dataset_info(dataset, emnist_split)
    classes, offset = info.classes, info.label_offset
    rng = np.random.default_rng(seed)
    shape = (classes, *IMAGE_SHAPE[1:])
    templates = rng.uniform(0, 255, size=shape) * (rng.uniform(size=shape) > 0.6)
    folder, names = info.folder, info.files
    root = Path(root)
    for (images_name, labels_name), n in zip((names[0:2], names[2:4]), (n_train, n_test), strict=True):
        images, labels = synthetic_split(n, classes, offset, rng, templates)
        write_idx(root / folder / images_name, images)
        write_idx(root / folder / labels_name, labels)
    return root / folder

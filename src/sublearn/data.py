"""Datasets as normalised tensors in memory.

torchvision parses the IDX files once (``prepare``); the images and labels are cached as one uint8/int64
tensor file per dataset, so a run job only ``torch.load``s them: no torchvision import, no per-image
conversion. Normalisation replays torchvision's ToTensor + Normalize arithmetic on the whole tensor,
which gives the same float32 values as converting image by image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import UsageError, dataset_key, num_classes_of, raw_files

MEAN, STD = 0.1307, 0.3081
CACHE_FORMAT = 1


@dataclass
class Dataset:
    train_x: torch.Tensor  # float32 (N, 1, 28, 28), normalised
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int


def _fingerprint(data_dir: Path, dataset: str, emnist_split: str) -> list | None:
    folder, names = raw_files(dataset, emnist_split)
    paths = [data_dir / folder / n for n in names]
    if not all(p.is_file() for p in paths):
        return None
    return [[p.name, p.stat().st_size, int(p.stat().st_mtime)] for p in paths]


def _missing_message(data_dir: Path, dataset: str, emnist_split: str, reason: str) -> str:
    folder, names = raw_files(dataset, emnist_split)
    return (f"--data-dir: invalid value {str(data_dir)!r}; {dataset_key(dataset, emnist_split)} is not in "
            f"{data_dir / folder} (expected {', '.join(names)}) and {reason}; download it on a machine with "
            "internet or point --data-dir (workflow: data_dir) at a folder holding those files")


def prepare(dataset: str, emnist_split: str, data_dir: str | Path, cache_file: str | Path) -> Path:
    """Parse the IDX files with torchvision (downloading them when absent) and write the tensor cache."""
    from torchvision import datasets  # only here: run jobs never import torchvision

    data_dir, cache_file = Path(data_dir), Path(cache_file)
    folder = data_dir / raw_files(dataset, emnist_split)[0]
    created = [p for p in (data_dir, folder.parent, folder) if not p.exists()]
    tv_datasets = {}
    for train in (True, False):
        try:
            if dataset == "mnist":
                tv = datasets.MNIST(str(data_dir), train=train, download=True)
            else:
                tv = datasets.EMNIST(str(data_dir), split=emnist_split, train=train, download=True)
        except (RuntimeError, OSError, ValueError) as exc:
            if _fingerprint(data_dir, dataset, emnist_split) is None:
                for path in reversed(created):  # leave no empty folders behind a failed download
                    if path.is_dir() and not any(path.iterdir()):
                        path.rmdir()
                reason = " ".join(f"{type(exc).__name__}: {exc}".split())
                if dataset == "emnist":  # its host has long served an HTML page instead of the archive at times
                    reason += (f"; or fetch {datasets.EMNIST.url} by other means and put it, unchanged, at "
                               f"{folder / 'gzip.zip'} (MD5 {datasets.EMNIST.md5}): torchvision extracts it")
                raise UsageError(_missing_message(data_dir, dataset, emnist_split,
                                                  f"the download failed ({reason})")) from None
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise UsageError(f"--data-dir: invalid value {str(data_dir)!r}; the IDX files in {folder} "
                             f"cannot be read ({reason}); replace them with intact copies") from None
        except AssertionError as exc:
            why = str(exc) or "bad header or size"
            raise UsageError(f"--data-dir: invalid value {str(data_dir)!r}; the IDX files in {folder} "
                             f"are corrupt ({why}); replace them with intact copies") from None
        tv_datasets[train] = tv
    _check_shapes(tv_datasets, data_dir, dataset, emnist_split)
    payload = {
        "format": CACHE_FORMAT,
        "key": dataset_key(dataset, emnist_split),
        "fingerprint": _fingerprint(data_dir, dataset, emnist_split),
        "train_images": tv_datasets[True].data.contiguous(),
        "train_labels": tv_datasets[True].targets.to(torch.int64).contiguous(),
        "test_images": tv_datasets[False].data.contiguous(),
        "test_labels": tv_datasets[False].targets.to(torch.int64).contiguous(),
    }
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, cache_file)
    return cache_file


def _check_shapes(tv_datasets: dict, data_dir: Path, dataset: str, emnist_split: str) -> None:
    classes = num_classes_of(dataset, emnist_split)
    low = 1 if (dataset == "emnist" and emnist_split == "letters") else 0
    for tv in tv_datasets.values():
        images, labels = tv.data, tv.targets
        ok = (images.dtype == torch.uint8 and images.ndim == 3 and tuple(images.shape[1:]) == (28, 28)
              and labels.shape[0] == images.shape[0] and images.shape[0] > 0
              and int(labels.min()) >= low and int(labels.max()) < classes + low)
        if not ok:
            folder, _ = raw_files(dataset, emnist_split)
            raise UsageError(f"--data-dir: invalid value {str(data_dir)!r}; the IDX files in {data_dir / folder} do "
                             f"not hold 28x28 uint8 images with labels in {low}..{classes + low - 1}")


def cache_path(cache_dir: str | Path, dataset: str, emnist_split: str) -> Path:
    return Path(cache_dir) / f"{dataset_key(dataset, emnist_split)}.pt"


def ensure_cache(dataset: str, emnist_split: str, data_dir: str | Path, cache_dir: str | Path) -> Path:
    """The cache file, rebuilt when the raw files changed since it was written."""
    path = cache_path(cache_dir, dataset, emnist_split)
    current = _fingerprint(Path(data_dir), dataset, emnist_split)
    if path.is_file():
        if current is None:  # raw files gone (e.g. a cluster node holding only the cache): trust the cache
            return path
        stored = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("fingerprint")
        if stored == current:
            return path
    return prepare(dataset, emnist_split, data_dir, path)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """ToTensor (uint8 -> float32 / 255) then Normalize((0.1307,), (0.3081,)), on the whole tensor."""
    x = images.to(torch.float32).div(255)
    x.sub_(torch.as_tensor(MEAN, dtype=torch.float32)).div_(torch.as_tensor(STD, dtype=torch.float32))
    return x.unsqueeze(1)


def load(cache_file: str | Path, dataset: str, emnist_split: str, class_count: int | None,
         device: torch.device, with_train: bool = True) -> Dataset:
    """The normalised splits; the training split only when asked (a student stage needs just the test
    split, and the memory-mapped cache then reads only its pages)."""
    try:
        payload = torch.load(cache_file, map_location="cpu", weights_only=True, mmap=True)
        splits = {"train": (payload["train_images"], payload["train_labels"]),
                  "test": (payload["test_images"], payload["test_labels"])}
    except Exception as exc:  # noqa: BLE001 - any unreadable cache is reported the same way
        raise UsageError(f"--cache-dir: invalid value {str(Path(cache_file).parent)!r}; {cache_file} is not a "
                         f"readable dataset cache ({type(exc).__name__}); delete it to rebuild it") from None
    classes = class_count if class_count is not None else num_classes_of(dataset, emnist_split)
    tensors = {}
    for name, (images, labels) in splits.items():
        if name == "train" and not with_train:
            tensors[name] = (torch.empty(0, 1, 28, 28, device=device), torch.empty(0, dtype=torch.int64, device=device))
            continue
        if dataset == "emnist" and emnist_split == "letters":  # labels 1..26 -> 0..25
            labels = labels - 1
        if class_count is not None:  # keep labels 0..K-1, in their original order
            keep = labels < class_count
            images, labels = images[keep], labels[keep]
        tensors[name] = (normalise(images).to(device), labels.clone().to(device))
    return Dataset(*tensors["train"], *tensors["test"], classes)

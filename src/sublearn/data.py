"""Datasets as normalised tensors in memory.

torchvision parses the IDX files once (``prepare``); the images and labels are cached as one uint8/int64
tensor file per dataset and data folder, with the data's identity (``dataid``), so a run job only
``torch.load``s them: no torchvision import, no per-image conversion. Normalisation replays
torchvision's ToTensor + Normalize arithmetic on the whole tensor, which gives the same float32 values
as converting image by image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from . import dataid
from .catalog import IMAGE_SHAPE, dataset_info, dataset_key, raw_files
from .errors import Fault, UsageError
from .outputs import atomic_torch_save, atomic_write_text

CACHE_FORMAT = 2


class CacheWriteError(Fault):
    """The cache could not be written (a fault: full disk, lost permissions); nothing was left behind."""


@dataclass
class Dataset:
    train_x: torch.Tensor  # float32 (N, *IMAGE_SHAPE), normalised
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    identity: str  # content hash of the raw files the cache was prepared from (see dataid)


def _missing_message(data_dir: Path, dataset: str, emnist_split: str, reason: str) -> str:
    folder, names = raw_files(dataset, emnist_split)
    present = [n for n in names if (data_dir / folder / n).is_file()]
    which = (f"only {', '.join(present)} of {', '.join(names)} are there" if present
             else f"expected {', '.join(names)}")
    return (f"--data-dir: invalid value {str(data_dir)!r}; {dataset_key(dataset, emnist_split)} is not in "
            f"{data_dir / folder} ({which}) and {reason}; download it on a machine with "
            "internet or point --data-dir (workflow: data_dir) at a folder holding those files")


def prepare(dataset: str, emnist_split: str, data_dir: str | Path, cache_file: str | Path) -> tuple[Path, str]:
    """Parse the IDX files with torchvision (downloading them when absent), hash them and write the tensor
    cache with its record. Returns the cache and the data's identity."""
    from torchvision import datasets  # only here: run jobs never import torchvision

    data_dir, cache_file = Path(data_dir), Path(cache_file)
    info = dataset_info(dataset, emnist_split)
    _refuse_folder_at(cache_file)
    folder = data_dir / raw_files(dataset, emnist_split)[0]
    created = [p for p in (data_dir, folder.parent, folder) if not p.exists()]
    tv_datasets = {}
    for train in (True, False):
        try:
            reader = getattr(datasets, info.torchvision)
            split = {"split": emnist_split} if info.split else {}
            tv = reader(str(data_dir), train=train, download=True, **split)
        except (RuntimeError, OSError, ValueError) as exc:
            if dataid.fingerprint(dataid.raw_paths(data_dir, dataset, emnist_split)) is None:
                for path in reversed(created):  # leave no empty folders behind a failed download
                    if path.is_dir() and not any(path.iterdir()):
                        path.rmdir()
                reason = " ".join(f"{type(exc).__name__}: {exc}".split())
                if info.archive:  # EMNIST's host has long served an HTML page instead of the archive at times
                    reason += (f"; or fetch {reader.url} by other means and put it, unchanged, at "
                               f"{folder / info.archive} (MD5 {reader.md5}): torchvision extracts it")
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
    paths = dataid.raw_paths(data_dir, dataset, emnist_split)
    prints = dataid.fingerprint(paths)
    record = dataid.make_record(dataset, emnist_split, data_dir, dataid.content_identity(paths), prints)
    payload = {
        "format": CACHE_FORMAT,
        "record": record,
        "train_images": tv_datasets[True].data.contiguous(),
        "train_labels": tv_datasets[True].targets.to(torch.int64).contiguous(),
        "test_images": tv_datasets[False].data.contiguous(),
        "test_labels": tv_datasets[False].targets.to(torch.int64).contiguous(),
    }
    try:
        atomic_torch_save(payload, cache_file)
        atomic_write_text(dataid.record_file(cache_file), json.dumps(record, indent=1) + "\n")
    except OSError as exc:
        cache_file.unlink(missing_ok=True)  # no cache without its record
        raise CacheWriteError(f"--cache-dir: cannot write {cache_file} ({exc.strerror or exc}); "
                              "nothing was left behind") from None
    return cache_file, record["identity"]


def _refuse_folder_at(cache_file: Path) -> None:
    for path in (cache_file, dataid.record_file(cache_file)):
        if path.is_dir():
            raise UsageError(f"--cache-dir: invalid value {str(cache_file.parent)!r}; {path} is a folder where "
                             "the dataset cache belongs; remove or rename it")


def _check_shapes(tv_datasets: dict, data_dir: Path, dataset: str, emnist_split: str) -> None:
    info = dataset_info(dataset, emnist_split)
    classes, low = info.classes, info.label_offset
    for tv in tv_datasets.values():
        images, labels = tv.data, tv.targets
        ok = (images.dtype == torch.uint8 and images.ndim == 3 and tuple(images.shape[1:]) == IMAGE_SHAPE[1:]
              and labels.shape[0] == images.shape[0] and images.shape[0] > 0
              and int(labels.min()) >= low and int(labels.max()) < classes + low)
        if not ok:
            folder, _ = raw_files(dataset, emnist_split)
            raise UsageError(f"--data-dir: invalid value {str(data_dir)!r}; the IDX files in {data_dir / folder} do "
                             f"not hold {'x'.join(map(str, IMAGE_SHAPE[1:]))} uint8 images with labels in "
                             f"{low}..{classes + low - 1}")


def stored_record(cache_file: Path) -> dict | None:
    """The record inside a cache file, or None when the file is absent, unreadable or of another format
    (a truncated or corrupt cache reads as None, so it is rebuilt or refused, never half-used)."""
    if not cache_file.is_file():
        return None
    try:
        payload = torch.load(cache_file, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - any unreadable cache is treated the same
        return None
    if not isinstance(payload, dict) or payload.get("format") != CACHE_FORMAT:
        return None
    record = payload.get("record")
    return record if isinstance(record, dict) and "identity" in record else None


def ensure_cache(dataset: str, emnist_split: str, data_dir: str | Path, cache_dir: str | Path,
                 build: bool = True) -> tuple[Path, str]:
    """The cache of data_dir's dataset and the data's identity. The cache is used when it holds exactly the
    data in data_dir now (same content hash; or, with the raw files all gone, it was prepared from this
    very folder); otherwise it is rebuilt, or with build=False (workflow jobs, which never write the
    cache) refused with the reason."""
    data_dir = Path(data_dir)
    path = dataid.cache_file(cache_dir, dataset, emnist_split, data_dir)
    _refuse_folder_at(path)
    stored = stored_record(path)
    identity = dataid.current_identity(data_dir, dataset, emnist_split, stored)
    if stored is not None and identity == stored["identity"]:
        return path, identity
    if build:
        return prepare(dataset, emnist_split, data_dir, path)
    key = dataset_key(dataset, emnist_split)
    again = (f"prepare it with `sublearn prepare-data --dataset {dataset} --emnist-split {emnist_split} "
             f"--data-dir {data_dir} --cache-dir {cache_dir}` (the workflow's prepare_data rule)")
    if identity is None:
        raise UsageError(_missing_message(data_dir, dataset, emnist_split,
                                          f"there is no cache prepared from that folder ({path})"))
    if not path.exists():
        why = "does not exist"
    elif stored is None:
        why = "is not a readable dataset cache (truncated, corrupt or of an older format)"
    else:
        why = (f"was prepared from other data (identity {stored['identity']}) than {data_dir} holds now "
               f"(identity {identity})")
    raise UsageError(f"--cache-dir: invalid value {str(cache_dir)!r}; the {key} cache {path} {why}; {again}")


def normalise(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """ToTensor (uint8 -> float32 / 255) then Normalize((mean,), (std,)), on the whole tensor."""
    x = images.to(torch.float32).div(255)
    x.sub_(torch.as_tensor(mean, dtype=torch.float32)).div_(torch.as_tensor(std, dtype=torch.float32))
    return x.unsqueeze(1)


def load(cache_file: str | Path, dataset: str, emnist_split: str, class_count: int | None,
         device: torch.device, with_train: bool = True) -> Dataset:
    """The normalised splits; the training split only when asked (a student stage needs just the test
    split, and the memory-mapped cache then reads only its pages)."""
    try:
        payload = torch.load(cache_file, map_location="cpu", weights_only=True, mmap=True)
        splits = {"train": (payload["train_images"], payload["train_labels"]),
                  "test": (payload["test_images"], payload["test_labels"])}
        identity = payload["record"]["identity"]
    except Exception as exc:  # noqa: BLE001 - any unreadable cache is reported the same way
        raise UsageError(f"--cache-dir: invalid value {str(Path(cache_file).parent)!r}; {cache_file} is not a "
                         f"readable dataset cache ({type(exc).__name__}); delete it and prepare it again") from None
    info = dataset_info(dataset, emnist_split)
    classes = class_count if class_count is not None else info.classes
    tensors = {}
    for name, (images, labels) in splits.items():
        if name == "train" and not with_train:
            tensors[name] = (torch.empty(0, *IMAGE_SHAPE, device=device),
                             torch.empty(0, dtype=torch.int64, device=device))
            continue
        if info.label_offset:  # e.g. EMNIST letters: labels 1..26 -> 0..25
            labels = labels - info.label_offset
        if class_count is not None:  # keep labels 0..K-1, in their original order
            keep = labels < class_count
            images, labels = images[keep], labels[keep]
        tensors[name] = (normalise(images, info.mean, info.std).to(device), labels.clone().to(device))
    return Dataset(*tensors["train"], *tensors["test"], classes, identity)

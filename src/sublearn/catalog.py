"""Every fact about a dataset, in one place: where torchvision keeps its files, its classes and labels,
its split sizes and its normalisation. Data loading, the synthetic data, the cost model, the merge and
the workflow all read this table; a new 28x28 IDX dataset is one entry (and, for the workflow, nothing
else: its data rules are made from the entry).

Torch-free: the workflow plans thousands of runs without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_SHAPE = (1, 28, 28)
# the paper's code normalises every dataset with MNIST's constants, so that the noise (and
# --normalize-noise) stays on the scale of the images
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
IDX_PARTS = ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")
EMNIST_PARTS = ("train-images-idx3", "train-labels-idx1", "test-images-idx3", "test-labels-idx1")


@dataclass(frozen=True)
class DatasetInfo:
    key: str  # names its cache, its runs' store and the workflow's wildcards: mnist, emnist-balanced, ...
    dataset: str  # the --dataset value
    split: str | None  # the --emnist-split value, for EMNIST
    display: str  # in titles and warnings
    torchvision: str  # the torchvision.datasets class that reads (and downloads) it
    folder: str  # under the data directory, as torchvision lays it out
    files: tuple[str, str, str, str]  # train images, train labels, test images, test labels
    classes: int
    label_offset: int  # the first label in the files (EMNIST letters: 1..26)
    train_size: int
    test_size: int
    mean: float = MNIST_MEAN
    std: float = MNIST_STD
    # the workflow's config key that replaces it with generated data (true; "auto" where the schema allows it:
    # when no data_dir folder holds its files); None: never generated
    synthetic_setting: str | None = None
    # torchvision downloads it as this one archive (in its folder) and extracts it; a failed download then
    # says where to put a copy fetched by other means
    archive: str | None = None


def _idx(prefix: str, parts: tuple[str, ...]) -> tuple[str, str, str, str]:
    return tuple(f"{prefix}{part}-ubyte" for part in parts)  # type: ignore[return-value]


def _emnist(split: str, classes: int, label_offset: int, train_size: int, test_size: int) -> DatasetInfo:
    """An EMNIST split: torchvision's EMNIST reads it from the one archive of every split."""
    return DatasetInfo(f"emnist-{split}", "emnist", split, "EMNIST", "EMNIST", "EMNIST/raw",
                       _idx(f"emnist-{split}-", EMNIST_PARTS), classes, label_offset, train_size, test_size,
                       synthetic_setting="synthetic_emnist", archive="gzip.zip")


CATALOG: dict[str, DatasetInfo] = {info.key: info for info in (
    DatasetInfo("mnist", "mnist", None, "MNIST", "MNIST", "MNIST/raw", _idx("", IDX_PARTS), 10, 0, 60_000, 10_000,
                synthetic_setting="synthetic_mnist"),
    _emnist("balanced", 47, 0, 112_800, 18_800),
    _emnist("letters", 26, 1, 124_800, 20_800),
    DatasetInfo("fashion_mnist", "fashion_mnist", None, "Fashion-MNIST", "FashionMNIST", "FashionMNIST/raw",
                _idx("", IDX_PARTS), 10, 0, 60_000, 10_000),
    DatasetInfo("kmnist", "kmnist", None, "KMNIST", "KMNIST", "KMNIST/raw", _idx("", IDX_PARTS), 10, 0, 60_000, 10_000),
)}
DATASETS = tuple(dict.fromkeys(info.dataset for info in CATALOG.values()))
EMNIST_SPLITS = tuple(info.split for info in CATALOG.values() if info.split)
DATASET_KEYS = tuple(CATALOG)


def dataset_info(dataset: str, emnist_split: str | None = None) -> DatasetInfo:
    """The entry of a --dataset (and, for EMNIST, --emnist-split) value; the split is ignored elsewhere."""
    return CATALOG[dataset_key(dataset, emnist_split)]


def datasets() -> tuple[str, ...]:
    """The --dataset values, read from the catalog when asked (so an entry added at run time counts)."""
    return tuple(dict.fromkeys(info.dataset for info in CATALOG.values()))


def splits() -> tuple[str, ...]:
    """The --emnist-split values: every split of a dataset that has splits."""
    return tuple(dict.fromkeys(info.split for info in CATALOG.values() if info.split))


def has_splits(dataset: str) -> bool:
    """Whether --emnist-split chooses among the dataset's entries (EMNIST); other datasets ignore it."""
    return any(info.split for info in CATALOG.values() if info.dataset == dataset)


def split_of(dataset: str, emnist_split: str | None) -> str | None:
    """The split a run of the dataset uses: --emnist-split for a dataset with splits, else None (so a run's
    identity does not depend on a setting its dataset ignores)."""
    return emnist_split if has_splits(dataset) else None


def dataset_key(dataset: str, emnist_split: str | None = None) -> str:
    """Name of a dataset's prepared tensor cache (``<cache-dir>/<key>-...pt``) and of its store."""
    return f"{dataset}-{emnist_split}" if has_splits(dataset) else dataset


def raw_files(dataset: str, emnist_split: str | None = None) -> tuple[str, list[str]]:
    """Folder (relative to the data directory) and IDX file names torchvision reads."""
    info = dataset_info(dataset, emnist_split)
    return info.folder, list(info.files)


def num_classes_of(dataset: str, emnist_split: str | None = None) -> int:
    return dataset_info(dataset, emnist_split).classes

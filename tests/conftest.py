"""Shared fixtures: tiny IDX datasets in torchvision's layout and the real MNIST when present."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data"
TINY = ["--teacher-epochs", "1", "--student-epochs", "1", "--noise-steps", "3", "--noise-bsize", "100",
        "--eval-noise-batches", "2", "--eval-noise-bsize", "100", "--data-bsize", "128",
        "--teacher-hidden-dims", "32,32", "--student-hidden-dims", "32,32"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    from sublearn.idx import write_synthetic_dataset

    root = tmp_path_factory.mktemp("tiny-data")
    write_synthetic_dataset(root, "mnist", n_train=600, n_test=200, seed=1)
    write_synthetic_dataset(root, "emnist", "balanced", n_train=940, n_test=235, seed=2)
    write_synthetic_dataset(root, "emnist", "letters", n_train=520, n_test=130, seed=3)
    return root


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny-cache")


@pytest.fixture
def tiny_args(tiny_data, tiny_cache) -> list[str]:
    return ["--data-dir", str(tiny_data), "--cache-dir", str(tiny_cache), "--threads", "1", *TINY]


@pytest.fixture(scope="session")
def real_mnist() -> Path:
    if not (REAL_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"real MNIST not found in {REAL_DATA} (CI has it there)")
    return REAL_DATA

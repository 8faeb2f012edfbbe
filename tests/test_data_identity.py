"""Data identity and faults: a cache, teacher or result of other data is never used silently, and a
failure leaves nothing half-written behind."""

from __future__ import annotations

import csv
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY

from sublearn import dataid
from sublearn.cli import main
from sublearn.idx import write_synthetic_dataset


def invoke(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def row_of(run_dir: Path) -> dict[str, str]:
    with open(run_dir / "runs.csv", newline="") as handle:
        return next(csv.DictReader(handle))


def identity_of(data_dir: Path) -> str:
    return dataid.content_identity(dataid.raw_paths(data_dir, "mnist", "balanced"))


def leftovers(*folders: Path) -> list[str]:
    """Temporary files left in these folders (the atomic writers' .*.tmp)."""
    return [str(p) for f in folders if f.exists() for p in f.rglob("*.tmp")]


@pytest.fixture
def two_datasets(tmp_path) -> tuple[Path, Path]:
    """Two MNIST-shaped folders of the same file sizes but other images."""
    d1, d2 = tmp_path / "d1", tmp_path / "d2"
    write_synthetic_dataset(d1, "mnist", n_train=300, n_test=100, seed=11)
    write_synthetic_dataset(d2, "mnist", n_train=300, n_test=100, seed=12)
    return d1, d2


def run_argv(data_dir: Path, cache_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["run", "--data-dir", str(data_dir), "--cache-dir", str(cache_dir), "--run-dir", str(run_dir),
            "--threads", "1", *TINY, *extra]


def test_runs_record_the_identity_of_their_own_data(two_datasets, tmp_path, capsys):
    """Two folders sharing a cache folder keep a cache each; each run records its data's content hash."""
    d1, d2 = two_datasets
    cache = tmp_path / "cache"
    assert invoke(run_argv(d1, cache, tmp_path / "r1"), capsys)[0] == 0
    assert invoke(run_argv(d2, cache, tmp_path / "r2"), capsys)[0] == 0
    assert invoke(run_argv(d1, cache, tmp_path / "r1b"), capsys)[0] == 0  # d1's cache still there, unchanged
    assert row_of(tmp_path / "r1")["data_identity"] == row_of(tmp_path / "r1b")["data_identity"] == identity_of(d1)
    assert row_of(tmp_path / "r2")["data_identity"] == identity_of(d2) != identity_of(d1)
    assert len(list(cache.glob("mnist-*.pt"))) == 2 and len(list(cache.glob("mnist-*.json"))) == 2
    assert row_of(tmp_path / "r1")["student_final_acc"] != row_of(tmp_path / "r2")["student_final_acc"]


def test_cache_of_another_folder_is_never_used(two_datasets, tmp_path, capsys, monkeypatch):
    """prepare-data from d2, then a run on an empty folder with the same cache folder: refused (the
    empty folder's data cannot be downloaded here), not trained on d2's data."""
    from torchvision import datasets

    monkeypatch.setattr(datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])  # offline, fails for real
    _, d2 = two_datasets
    cache = tmp_path / "cache"
    assert invoke(["prepare-data", "--data-dir", str(d2), "--cache-dir", str(cache)], capsys)[0] == 0
    empty = tmp_path / "EMPTY"
    empty.mkdir()
    code, _, err = invoke(run_argv(empty, cache, tmp_path / "r"), capsys)
    assert code == 2 and str(empty) in err and "download failed" in err
    assert not (tmp_path / "r").exists()


def test_raw_files_changed_in_place_rebuild_the_cache(two_datasets, tmp_path, capsys):
    """A same-size replacement whose modification time is put back is still seen (content hash)."""
    d1, d2 = two_datasets
    cache = tmp_path / "cache"
    assert invoke(run_argv(d1, cache, tmp_path / "before"), capsys)[0] == 0
    images = dataid.raw_paths(d1, "mnist", "balanced")[0]
    stat = images.stat()
    with open(images, "r+b") as handle:  # same size, other pixels: d2's images in d1's file
        handle.write(dataid.raw_paths(d2, "mnist", "balanced")[0].read_bytes())
    os.utime(images, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert images.stat().st_size == stat.st_size and images.stat().st_mtime_ns == stat.st_mtime_ns

    # a workflow job (--cache-only) never rebuilds: it stops, naming both identities
    code, _, err = invoke(run_argv(d1, cache, tmp_path / "stale", "--cache-only"), capsys)
    assert code == 2 and "prepared from other data" in err and identity_of(d1) in err
    assert not (tmp_path / "stale").exists()
    # a plain run rebuilds the cache and records the new identity
    assert invoke(run_argv(d1, cache, tmp_path / "after"), capsys)[0] == 0
    before, after = row_of(tmp_path / "before"), row_of(tmp_path / "after")
    assert after["data_identity"] == identity_of(d1) != before["data_identity"]


def test_missing_raw_files(two_datasets, tmp_path, capsys):
    """All raw files gone: the cache prepared from that very folder is used (a node holding only the
    cache). One file gone: the folder changed, so the cache proves nothing and the run stops."""
    d1, _ = two_datasets
    cache = tmp_path / "cache"
    assert invoke(["prepare-data", "--data-dir", str(d1), "--cache-dir", str(cache)], capsys)[0] == 0
    identity = identity_of(d1)
    raw = dataid.raw_paths(d1, "mnist", "balanced")
    raw[1].unlink()
    code, _, err = invoke(run_argv(d1, cache, tmp_path / "partial", "--cache-only"), capsys)
    assert code == 2 and f"only {raw[0].name}" in err and raw[1].name in err
    for path in raw:
        path.unlink(missing_ok=True)
    assert invoke(run_argv(d1, cache, tmp_path / "gone", "--cache-only"), capsys)[0] == 0
    assert row_of(tmp_path / "gone")["data_identity"] == identity


def test_teacher_of_other_data_is_refused(two_datasets, tmp_path, capsys):
    d1, d2 = two_datasets
    cache, teacher = tmp_path / "cache", tmp_path / "t" / "teacher.pt"
    common = ["--threads", "1", "--cache-dir", str(cache), *TINY]
    assert invoke(["teacher", "--data-dir", str(d1), *common, "--teacher-out", str(teacher)], capsys)[0] == 0
    code, _, err = invoke(["student", "--data-dir", str(d2), *common, "--teacher-checkpoint", str(teacher),
                           "--run-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and identity_of(d1) in err and identity_of(d2) in err and "--teacher-checkpoint" in err
    assert not (tmp_path / "r").exists()
    assert invoke(["student", "--data-dir", str(d1), *common, "--teacher-checkpoint", str(teacher),
                   "--run-dir", str(tmp_path / "r")], capsys)[0] == 0


def test_corrupt_cache_is_rebuilt_or_refused(two_datasets, tmp_path, capsys):
    d1, _ = two_datasets
    cache = tmp_path / "cache"
    assert invoke(["prepare-data", "--data-dir", str(d1), "--cache-dir", str(cache)], capsys)[0] == 0
    path = dataid.cache_file(cache, "mnist", "balanced", d1)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    code, _, err = invoke(run_argv(d1, cache, tmp_path / "r", "--cache-only"), capsys)
    assert code == 2 and "not a readable dataset cache" in err and str(path) in err
    assert invoke(run_argv(d1, cache, tmp_path / "r"), capsys)[0] == 0  # raw files there: rebuilt
    assert row_of(tmp_path / "r")["data_identity"] == identity_of(d1)


def test_folder_in_the_cache_place_is_refused_and_leaves_nothing(two_datasets, tmp_path, capsys):
    d1, _ = two_datasets
    cache = tmp_path / "cache"
    dataid.cache_file(cache, "mnist", "balanced", d1).mkdir(parents=True)
    code, _, err = invoke(["prepare-data", "--data-dir", str(d1), "--cache-dir", str(cache)], capsys)
    assert code == 2 and "is a folder" in err
    assert leftovers(cache) == [] and len(list(cache.iterdir())) == 1


def _with_file_size_limit(limit: int):
    def apply():  # writes beyond `limit` bytes fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_full_disk_leaves_no_temporary_or_orphan_files(two_datasets, tmp_path):
    d1, _ = two_datasets
    cache, teachers = tmp_path / "cache", tmp_path / "teachers"
    cli = [sys.executable, "-m", "sublearn.cli"]
    # the cache (~300 kB) does not fit: exit 1 with one line, no cache, no record, no temporary file
    proc = subprocess.run([*cli, "prepare-data", "--data-dir", str(d1), "--cache-dir", str(cache)],
                          capture_output=True, text=True, preexec_fn=_with_file_size_limit(100_000))
    assert proc.returncode == 1 and "cannot write" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert leftovers(cache) == [] and list(cache.glob("*.pt")) == [] and list(cache.glob("*.json")) == []
    # the teacher checkpoint does not fit: neither it nor its summary is left
    subprocess.run([*cli, "prepare-data", "--data-dir", str(d1), "--cache-dir", str(cache)], check=True,
                   capture_output=True)
    proc = subprocess.run([*cli, "teacher", "--data-dir", str(d1), "--cache-dir", str(cache), "--threads", "1",
                           *TINY, "--teacher-out", str(teachers / "t.pt")], capture_output=True, text=True,
                          preexec_fn=_with_file_size_limit(20_000))
    assert proc.returncode == 1 and "File too large" in proc.stderr, proc.stderr[-2000:]
    assert list(teachers.iterdir()) == [] if teachers.exists() else True


def test_cuda_device_that_cannot_be_used_says_why(tmp_path, capsys, tiny_args):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA works here")
    code, _, err = invoke(["run", *tiny_args, "--device", "cuda", "--run-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and "CUDA is not usable here" in err and torch.__version__ in err
    assert not (tmp_path / "r").exists()

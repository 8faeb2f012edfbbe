"""Dataset identity: a content hash of the raw IDX files, and what a prepared cache records about them.

The identity (``sha256:`` + 16 hex digits over the four files' names and bytes) is computed when a
dataset is prepared and is written into the cache, every teacher checkpoint and every runs.csv row, so a
result always says which data it came from and nothing trains on a cache or teacher of other data.
A cache is named by its dataset and the folder it was prepared from, so data folders that share a cache
folder never overwrite each other's caches. Beside each cache, ``<name>.json`` holds the same record
in plain text (for people and for the workflow's planning, which imports no torch).

A file's stat fingerprint (size, mtime and ctime in nanoseconds, inode) tells whether it changed since
it was hashed; any write changes its ctime, so an unchanged fingerprint lets us skip re-hashing.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .catalog import dataset_key, raw_files

RECORD_FORMAT = 2
HASH_CHUNK = 1 << 22


def raw_paths(data_dir: str | Path, dataset: str, emnist_split: str) -> list[Path]:
    folder, names = raw_files(dataset, emnist_split)
    return [Path(data_dir) / folder / name for name in names]


def source_of(data_dir: str | Path) -> str:
    """The data folder as recorded in a cache: absolute, symlinks resolved."""
    return str(Path(data_dir).resolve())


def fingerprint(paths: list[Path]) -> list | None:
    """[name, size, mtime_ns, ctime_ns, inode] of each file, or None unless all are there."""
    rows = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            return None
        if not path.is_file():
            return None
        rows.append([path.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
    return rows


def content_identity(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            while chunk := handle.read(HASH_CHUNK):
                digest.update(chunk)
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()[:16]


def cache_name(dataset: str, emnist_split: str, data_dir: str | Path) -> str:
    """<dataset key>-<10 hex digits of the data folder's path>, e.g. mnist-3f9a0c12de."""
    folder = hashlib.sha256(source_of(data_dir).encode()).hexdigest()[:10]
    return f"{dataset_key(dataset, emnist_split)}-{folder}"


def cache_file(cache_dir: str | Path, dataset: str, emnist_split: str, data_dir: str | Path) -> Path:
    return Path(cache_dir) / f"{cache_name(dataset, emnist_split, data_dir)}.pt"


def record_file(cache: str | Path) -> Path:
    return Path(cache).with_suffix(".json")


def make_record(dataset: str, emnist_split: str, data_dir: str | Path, identity: str, prints: list) -> dict:
    return {"format": RECORD_FORMAT, "key": dataset_key(dataset, emnist_split), "source": source_of(data_dir),
            "identity": identity, "fingerprint": prints}


def read_record(cache: str | Path) -> dict | None:
    """The plain-text record beside a cache, or None when absent or unreadable."""
    try:
        record = json.loads(record_file(cache).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        return None
    return record


def current_identity(data_dir: str | Path, dataset: str, emnist_split: str, record: dict | None) -> str | None:
    """The identity of the data in data_dir now: the record's, when the raw files are unchanged since it
    was written (or are all absent and the record was made from this very folder); a fresh hash when the
    files changed; None when the files are absent and no record of this folder exists."""
    paths = raw_paths(data_dir, dataset, emnist_split)
    prints = fingerprint(paths)
    same_source = record is not None and record.get("source") == source_of(data_dir) \
        and record.get("key") == dataset_key(dataset, emnist_split)
    if prints is None:
        if same_source and not any(os.path.lexists(p) for p in paths):
            return record["identity"]
        return None
    if same_source and record.get("fingerprint") == prints:
        return record["identity"]
    return content_identity(paths)

"""Result files: the reference's CSV/JSONL formats, always written atomically (torch-free at import).

Every write goes to a temporary file in the destination folder and is moved into place with
``os.replace``, so a killed run leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import bad_value


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "detach") and hasattr(value, "tolist"):  # a tensor
        return value.detach().cpu().tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return value


def csv_value(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.12g}"
    if isinstance(value, dict | list | tuple):
        return json.dumps(jsonable(value), sort_keys=True)
    return value


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write to a temporary file beside ``path`` and move it into place: a reader (or a killed writer)
    sees the old file or the new one, never half of one; no temporary file is left behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # a full disk says nothing of the file: name it
        raise OSError(exc.errno, exc.strerror, str(exc.filename or path)) from exc
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temporaries(folder: Path, name: str = "*") -> None:
    """Temporary files of ``name`` that a killed writer (kill -9) left in a folder."""
    for stale in Path(folder).glob(f".{name}.*.tmp"):
        stale.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: Path) -> None:
    # serialised in memory first: torch's zip writer reports a failed write (full disk) as a bare
    # RuntimeError, while a plain file write raises OSError with the cause
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getbuffer())


def _csv_text(fieldnames: list[str], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: csv_value(row.get(k, "")) for k in fieldnames})
    return buffer.getvalue()


def append_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append rows, widening the header when new columns appear (old rows get empty cells)."""
    fieldnames = list(dict.fromkeys(k for row in rows for k in row))
    existing: list[dict[str, Any]] = []
    if path.exists() and path.stat().st_size > 0:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            fieldnames = list(dict.fromkeys(list(reader.fieldnames or []) + fieldnames))
            existing = list(reader)
    if not fieldnames:
        if not path.exists():
            atomic_write_text(path, "")
        return
    atomic_write_text(path, _csv_text(fieldnames, existing + rows))


def append_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    old = path.read_text() if path.exists() else ""
    new = "".join(json.dumps(jsonable(r), sort_keys=True) + "\n" for r in records)
    atomic_write_text(path, old + new)


@contextmanager
def locked(folder: Path):
    """An exclusive lock on a folder's appends (read, add, replace): concurrent runs writing to the same
    --outdir wait for each other instead of losing each other's rows."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".sublearn.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_reference_layout(outdir: Path, result, append_global: bool) -> Path:
    """``outdir/seed_XXXXXX/{runs,layer_metrics,perturbations}.csv`` and ``configs.jsonl``, appended."""
    seed_dir = Path(outdir) / f"seed_{int(result.run_row['seed']):06d}"
    tables = {"runs.csv": [result.run_row], "layer_metrics.csv": result.layer_rows,
              "perturbations.csv": result.perturbation_rows}
    with locked(Path(outdir)):
        for name, rows in tables.items():
            append_csv(seed_dir / name, rows)
        append_jsonl(seed_dir / "configs.jsonl", [result.config_record])
        if append_global:
            for name, rows in tables.items():
                append_csv(Path(outdir) / name.replace(".csv", "_all_seeds.csv"), rows)
    return seed_dir


def write_run_dir(run_dir: Path, result) -> Path:
    """One run's own files (for the workflow: parallel jobs never share a file)."""
    run_dir = Path(run_dir)
    remove_stale_temporaries(run_dir)  # one writer per run folder: any temporary file in it is a dead one's
    atomic_write_text(run_dir / "layer_metrics.csv", _csv_text(
        list(dict.fromkeys(k for r in result.layer_rows for k in r)), result.layer_rows))
    pert_fields = list(dict.fromkeys(k for r in result.perturbation_rows for k in r))
    atomic_write_text(run_dir / "perturbations.csv",
                      _csv_text(pert_fields, result.perturbation_rows) if pert_fields else "")
    atomic_write_text(run_dir / "config.json", json.dumps(jsonable(result.config_record), sort_keys=True, indent=1))
    # runs.csv last: its presence marks a complete run
    atomic_write_text(run_dir / "runs.csv", _csv_text(list(result.run_row), [result.run_row]))
    return run_dir


def write_teacher(checkpoint: dict[str, Any], effective_config: dict[str, Any], out: Path) -> None:
    """A teacher's checkpoint, then its .json summary beside it (settings, metrics, provenance): a failed
    write leaves neither (never a .json without its .pt), so a .json marks a finished teacher."""
    summary = {k: v for k, v in checkpoint.items() if k not in ("initial_body", "trained_body")}
    summary["effective_config"] = effective_config
    for name in (out.name, out.with_suffix(".json").name):
        remove_stale_temporaries(out.parent, name)
    atomic_torch_save(checkpoint, out)
    try:
        atomic_write_text(out.with_suffix(".json"), json.dumps(jsonable(summary), sort_keys=True, indent=1))
    except BaseException:
        out.unlink(missing_ok=True)
        raise


def check_writable(path: str | Path, flag: str, is_file: bool = False) -> None:
    """Refuse an output location we could not write, without creating anything."""
    target = Path(path).resolve()
    if target.exists() and (target.is_dir() == is_file):
        raise bad_value(flag, str(path), "it exists and is a " + ("folder" if is_file else "file"))
    probe = target.parent if is_file else target
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise bad_value(flag, str(path), f"{probe} is not a writable folder")
    try:  # root passes os.access everywhere (even /proc): create and remove a file to be sure
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise bad_value(flag, str(path), f"{probe} is not a writable folder ({exc.strerror})") from None

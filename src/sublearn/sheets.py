"""Run sheets and teacher sheets: the contract between the workflow and the runner, and whether a run or a
teacher is finished.

A run sheet is a JSON Lines file, one run per line, ``{"id": ..., "run_dir": ..., "settings": {...}}``:
``settings`` holds typed experiment settings (``config.RUN_SETTINGS``) and ``id`` is the run's identity
(``ResolvedConfig.run_key``). A teacher sheet has ``{"id": teacher key, "out": checkpoint .pt,
"settings": {...}}``. Every line is validated as the command line's flags are (the same resolution),
before any training. Torch-free.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import config_from_settings
from .errors import UsageError
from .plan import ResolvedConfig, resolve


@dataclass
class SheetRun:
    id: str
    run_dir: Path
    rc: ResolvedConfig


@dataclass
class SheetTeacher:
    id: str  # its teacher key
    out: Path  # its checkpoint (.pt); the .json summary goes beside it
    rc: ResolvedConfig


def sheet_record(run_id: str, run_dir: str, settings: dict[str, Any]) -> str:
    return json.dumps({"id": run_id, "run_dir": run_dir, "settings": settings}, sort_keys=True)


def teacher_record(teacher_key: str, out: str, settings: dict[str, Any]) -> str:
    return json.dumps({"id": teacher_key, "out": out, "settings": settings}, sort_keys=True)


def _lines(path: str | Path) -> list[str]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"--sheet: invalid value {str(path)!r}; cannot read it ({exc.strerror})") from None
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UsageError(f"--sheet {path}, line {line}: not UTF-8 text (byte {data[exc.start]:#04x})") from None


def _sheet_records(path: str | Path, fields: set[str], what: str):
    """(where, record, id) of every line of a sheet; a line that is not an object of ``fields`` or repeats
    an id stops everything."""
    seen: set[str] = set()
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        where = f"--sheet {path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where}: not a JSON object ({exc.msg})") from None
        except RecursionError:
            raise UsageError(f"{where}: not a sheet record (nested too deeply)") from None
        if not isinstance(record, dict) or set(record) != fields:
            raise UsageError(f"{where}: expected an object with {', '.join(sorted(fields))}")
        if not isinstance(record["id"], str):
            raise UsageError(f"{where}: id: invalid value {record['id']!r}; expected a string")
        record_id = record["id"]
        where = f"{where}, {what} {record_id}"
        if record_id in seen:
            raise UsageError(f"{where}: the {what} id appears twice")
        seen.add(record_id)
        yield where, record, record_id
    if not seen:
        raise UsageError(f"--sheet: invalid value {str(path)!r}; it holds no {what}s")


def _output_path(where: str, name: str, value: Any, taken: dict[Path, str], what: str) -> Path:
    """A sheet's output location: a non-empty path without '..', not another record's."""
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{where}: {name}: invalid value {value!r}; expected a non-empty path")
    if "\x00" in value:
        raise UsageError(f"{where}: {name}: invalid value {value!r}; a path cannot hold a NUL byte")
    path = Path(value)
    if ".." in path.parts:
        raise UsageError(f"{where}: {name}: invalid value {value!r}; a path with '..' is not allowed")
    resolved = path.resolve()
    if resolved == Path.cwd().resolve():
        raise UsageError(f"{where}: {name}: invalid value {value!r}; it is the current folder")
    if resolved in taken:
        raise UsageError(f"{where}: {name}: invalid value {value!r}; {what} {taken[resolved]} has it too")
    taken[resolved] = where.rsplit(f"{what} ", 1)[-1]
    return path


def resolve_in(config, where: str) -> ResolvedConfig:
    try:
        return resolve(config)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None


def read_sheet(path: str | Path) -> list[SheetRun]:
    """Parse and validate every run of a sheet; the first bad run stops everything, before any training."""
    runs: list[SheetRun] = []
    taken: dict[Path, str] = {}
    for where, record, run_id in _sheet_records(path, {"id", "run_dir", "settings"}, "run"):
        run_dir = _output_path(where, "run_dir", record["run_dir"], taken, "run")
        rc = resolve_in(config_from_settings(record["settings"], where), where)
        if rc.run_key() != run_id:
            raise UsageError(f"{where}: the id does not match the settings (their run key is {rc.run_key()})")
        runs.append(SheetRun(run_id, run_dir, rc))
    return runs


def read_teacher_sheet(path: str | Path) -> list[SheetTeacher]:
    """A teacher sheet, validated whole before any training."""
    teachers: list[SheetTeacher] = []
    taken: dict[Path, str] = {}
    for where, record, key in _sheet_records(path, {"id", "out", "settings"}, "teacher"):
        out = _output_path(where, "out", record["out"], taken, "teacher")
        if out.suffix != ".pt":
            raise UsageError(f"{where}: out: invalid value {record['out']!r}; expected a checkpoint path ending in .pt")
        rc = resolve_in(config_from_settings(record["settings"], where), where)
        if rc.teacher_key() != key:
            raise UsageError(f"{where}: the id does not match the settings (their teacher key is "
                             f"{rc.teacher_key()})")
        teachers.append(SheetTeacher(key, out, rc))
    return teachers


# the files of a finished run; runs.csv is written last, so its presence marks a complete run folder
RUN_FILES = ("layer_metrics.csv", "perturbations.csv", "config.json", "runs.csv")


def recorded_result(run_dir: str | Path) -> tuple[str | None, str | None] | None:
    """(run key, data identity) recorded in a finished run folder, or None. A run is finished when both
    equal the run's own key and its data's identity now; a folder that lost one of its files, or whose
    runs.csv is cut short, is not finished."""
    run_dir = Path(run_dir)
    try:
        with open(run_dir / "runs.csv", newline="") as handle:
            reader = csv.DictReader(handle)
            row = next(reader, None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    if not row or None in row or any(value is None for value in row.values()):
        return None  # a row shorter (or longer) than its header: cut short
    if not all((run_dir / name).is_file() for name in RUN_FILES):
        return None
    return row.get("run_key"), row.get("data_identity")


def recorded_teacher(out: str | Path) -> tuple[str | None, str | None] | None:
    """(teacher key, data identity) of a finished teacher (its .pt, then its .json summary, written last),
    or None. A teacher is finished when both equal its own key and its data's identity now."""
    out = Path(out)
    try:
        summary = json.loads(out.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    if not out.is_file() or not isinstance(summary, dict):
        return None
    return summary.get("teacher_key"), summary.get("data_identity")

"""Integrity, round 2: run and teacher sheets validated like flags, no dead ends after a lost file or a data
swap, clear refusals instead of tracebacks, and messages that name what they are about."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from test_batch import resolved, teacher_sheet, train_teachers, write_sheet

from sublearn import outputs, sheets
from sublearn.cli import main


def batch_argv(sheet, teachers, tiny_data, tiny_cache, *extra):
    return ["batch", "--sheet", str(sheet), "--teacher-dir", str(teachers), "--data-dir", str(tiny_data),
            "--cache-dir", str(tiny_cache), "--device", "cpu", "--threads", "1", *extra]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def write_records(path: Path, records: list) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))


@pytest.fixture
def good_record(tiny_data, tiny_cache, tmp_path):
    rc = resolved(tiny_data, tiny_cache, [])
    sheet = tmp_path / "one.jsonl"
    write_sheet(sheet, {"r": rc}, tmp_path / "runs")
    return json.loads(sheet.read_text())


def with_settings(record: dict, **changes) -> dict:
    """A sheet record with other settings and the id their settings give (as a crafted sheet would have)."""
    from sublearn.config import config_from_settings
    from sublearn.plan import resolve

    settings = {**record["settings"], **changes}
    try:
        run_key = resolve(config_from_settings(dict(settings), "x")).run_key()
    except ValueError:
        run_key = record["id"]
    return {**record, "settings": settings, "id": run_key}


# --- 1. sheets get the checks that flags get; 7. runs that cannot fit are refused --------------------------

BAD_RUNS = [
    ({"student_hidden_dims": [256, 0]}, "layer widths must be positive integers"),
    ({"student_hidden_dims": [-3]}, "layer widths must be positive integers"),
    ({"m": 10**9}, "m 1000000000"),
    ({"eval_noise_bsize": 10**9}, "eval_noise_bsize 1000000000"),
    ({"student_hidden_dims": [10**8, 16]}, "more than the"),
    ({"noise_bsize": 10**9}, "noise_bsize 1000000000"),
    ({"noise_dist": "perlin", "perlin_res": 10**6}, "perlin_res 1000000"),
]


@pytest.mark.parametrize(("changes", "message"), BAD_RUNS)
def test_a_sheet_line_is_checked_like_flags_and_must_fit_in_memory(changes, message, good_record, tiny_data,
                                                                   tiny_cache, tmp_path, capsys):
    sheet = tmp_path / "sheet.jsonl"
    write_records(sheet, [with_settings(good_record, **changes)])
    code = main(batch_argv(sheet, tmp_path, tiny_data, tiny_cache, "--max-memory-mb", "4000"))
    err = one_line_error(capsys)
    assert code == 2 and message in err, err
    assert not (tmp_path / "runs").exists()


def test_a_teacher_sheet_line_is_checked_like_flags(tiny_data, tiny_cache, tmp_path, capsys):
    rcs = {"a": resolved(tiny_data, tiny_cache, [])}
    sheet = tmp_path / "teachers.jsonl"
    outs = teacher_sheet(sheet, rcs, tmp_path / "set")
    record = json.loads(sheet.read_text())
    record["settings"]["teacher_hidden_dims"] = [0]
    write_records(sheet, [record])
    code = main(["teachers", "--sheet", str(sheet), "--data-dir", str(tiny_data), "--cache-dir", str(tiny_cache),
                 "--device", "cpu"])
    assert code == 2 and "layer widths must be positive integers" in one_line_error(capsys)
    assert not outs["a"].exists()


# --- 2. outputs shared by two records; 8. malformed sheets; 9. paths that escape ---------------------------

def test_two_runs_sharing_a_folder_are_refused(good_record, tiny_data, tiny_cache, tmp_path, capsys):
    other = with_settings(good_record, m=3)
    sheet = tmp_path / "sheet.jsonl"
    write_records(sheet, [good_record, {**other, "run_dir": good_record["run_dir"] + "/"}])
    assert main(batch_argv(sheet, tmp_path, tiny_data, tiny_cache)) == 2
    err = one_line_error(capsys)
    assert "line 2" in err and f"run {good_record['id']} has it too" in err


def test_two_teachers_sharing_a_checkpoint_are_refused(tiny_data, tiny_cache, tmp_path, capsys):
    rcs = {"a": resolved(tiny_data, tiny_cache, []), "b": resolved(tiny_data, tiny_cache, [], seed=1)}
    sheet = tmp_path / "teachers.jsonl"
    teacher_sheet(sheet, rcs, tmp_path / "set")
    first, second = (json.loads(line) for line in sheet.read_text().splitlines())
    write_records(sheet, [first, {**second, "out": first["out"]}])
    assert main(["teachers", "--sheet", str(sheet), "--data-dir", str(tiny_data), "--device", "cpu"]) == 2
    assert "line 2" in one_line_error(capsys)


@pytest.mark.parametrize(("run_dir", "message"), [
    ("", "expected a non-empty path"), (5, "expected a non-empty path"), ("..", "a path with '..'"),
    ("runs/../../elsewhere", "a path with '..'"), (".", "it is the current folder"),
])
def test_run_folders_that_escape_or_are_not_paths_are_refused(run_dir, message, good_record, tiny_data, tiny_cache,
                                                              tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sheet = tmp_path / "sheet.jsonl"
    write_records(sheet, [{**good_record, "run_dir": run_dir}])
    assert main(batch_argv(sheet, tmp_path, tiny_data, tiny_cache)) == 2
    err = one_line_error(capsys)
    assert message in err and "line 1" in err


def test_a_teacher_checkpoint_outside_its_folder_is_refused(tiny_data, tiny_cache, tmp_path, capsys):
    rcs = {"a": resolved(tiny_data, tiny_cache, [])}
    sheet = tmp_path / "teachers.jsonl"
    teacher_sheet(sheet, rcs, tmp_path / "set")
    record = json.loads(sheet.read_text())
    write_records(sheet, [{**record, "out": str(tmp_path / "set" / ".." / "escaped.pt")}])
    assert main(["teachers", "--sheet", str(sheet), "--data-dir", str(tiny_data), "--device", "cpu"]) == 2
    assert "a path with '..'" in one_line_error(capsys)


@pytest.mark.parametrize("command", ["batch", "teachers"])
@pytest.mark.parametrize(("content", "message"), [
    (b'{"id": "x"}\n\xff\xfe broken\n', "line 2: not UTF-8 text"),
    (b"[" * 100_000 + b"]" * 100_000 + b"\n", "line 1: not a sheet record (nested too deeply)"),
])
def test_malformed_sheets_are_one_line_errors(command, content, message, tiny_data, tmp_path, capsys):
    sheet = tmp_path / "sheet.jsonl"
    sheet.write_bytes(content)
    argv = [command, "--sheet", str(sheet), "--data-dir", str(tiny_data), "--device", "cpu"]
    assert main([*argv, "--teacher-dir", str(tmp_path)] if command == "batch" else argv) == 2
    err = one_line_error(capsys)
    assert message in err and str(sheet) in err


# --- 3. 5. a finished run is one whose files are all there and whole; 13. temporaries and messages ---------

@pytest.fixture
def finished_run(tiny_data, tiny_cache, tmp_path, capsys):
    rc = resolved(tiny_data, tiny_cache, [])
    sheet = tmp_path / "sheet.jsonl"
    dirs = write_sheet(sheet, {"r": rc}, tmp_path / "runs")
    train_teachers([rc], tiny_data, tiny_cache, tmp_path / "teachers")
    argv = batch_argv(sheet, tmp_path / "teachers", tiny_data, tiny_cache)
    assert main(argv) == 0
    capsys.readouterr()
    return rc, dirs["r"], argv


@pytest.mark.parametrize("damage", ["lost layer_metrics.csv", "lost config.json", "runs.csv cut after its keys"])
def test_a_damaged_run_is_not_finished_and_is_computed_again(damage, finished_run, capsys):
    rc, run_dir, argv = finished_run
    before = pd.read_csv(run_dir / "runs.csv")
    if damage.startswith("lost"):
        (run_dir / damage.split()[1]).unlink()
    else:
        header, row = (run_dir / "runs.csv").read_text().splitlines()
        keep = header.split(",").index("data_identity") + 1
        (run_dir / "runs.csv").write_text(header + "\n" + ",".join(row.split(",")[:keep]) + "\n")
    assert sheets.recorded_result(run_dir) is None
    assert main(argv) == 0 and "0 already finished, 1 to compute" in capsys.readouterr().out
    after = pd.read_csv(run_dir / "runs.csv")
    assert sheets.recorded_result(run_dir) == (rc.run_key(), after["data_identity"][0])
    assert after["student_final_acc"][0] == before["student_final_acc"][0]


def test_a_killed_writers_temporary_file_is_removed_by_the_rerun(finished_run, capsys):
    _, run_dir, argv = finished_run
    stale = run_dir / f".perturbations.csv.{os.getpid() + 12345}.tmp"
    stale.write_text("half")
    (run_dir / "runs.csv").unlink()
    assert main(argv) == 0
    assert not stale.exists() and not list(run_dir.glob(".*.tmp"))


def test_a_failed_write_names_its_file(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr(os, "fsync", full)
    target = tmp_path / "runs" / "runs.csv"
    with pytest.raises(OSError) as failed:
        outputs.atomic_write_text(target, "x")
    assert failed.value.filename == str(target) and failed.value.errno == errno.EFBIG
    assert not list(target.parent.iterdir())  # no temporary file left


def test_a_teacher_of_other_data_is_refused_naming_the_data_dir_given(finished_run, tmp_path, capsys):
    from sublearn.idx import write_synthetic_dataset

    _, run_dir, argv = finished_run
    other = tmp_path / "other-data"
    write_synthetic_dataset(other, "mnist", n_train=600, n_test=200, seed=7)
    argv = [*argv[:argv.index("--data-dir") + 1], str(other), *argv[argv.index("--data-dir") + 2:]]
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert f"({other})" in err and "(./data)" not in err


# --- the workflow: 3. a lost file, 5. a cut row, 4. a same-size data swap; 7. a grid that cannot fit -------

def test_the_workflow_recomputes_a_lost_file_a_cut_row_and_a_same_size_data_swap(tmp_path):
    from test_workflow import base_config, fig2_block, job_counts, ok, smk, write_config

    from sublearn.dataid import content_identity, raw_paths
    from sublearn.idx import write_synthetic_dataset

    def planned(workdir, target):
        return job_counts(ok(smk(workdir, "--dry-run", target)))

    data = tmp_path / "data"
    write_synthetic_dataset(data, "mnist", n_train=600, n_test=200, seed=1)
    workdir = tmp_path / "wf"
    write_config(workdir, base_config(data, {"fig2": fig2_block(m=(3,))}, seeds=(0,)))
    ok(smk(workdir, "fig2"))
    run_dirs = sorted((workdir / "results" / "runs").iterdir())
    assert len(run_dirs) == 2 and planned(workdir, "fig2") == {}

    (run_dirs[0] / "layer_metrics.csv").unlink()
    assert planned(workdir, "fig2")["runs"] == 1
    ok(smk(workdir, "fig2"))
    assert (run_dirs[0] / "layer_metrics.csv").is_file() and planned(workdir, "fig2") == {}

    header, row = (run_dirs[1] / "runs.csv").read_text().splitlines()
    keep = header.split(",").index("data_identity") + 1
    (run_dirs[1] / "runs.csv").write_text(header + "\n" + ",".join(row.split(",")[:keep]) + "\n")
    assert planned(workdir, "fig2")["runs"] == 1
    ok(smk(workdir, "fig2"))
    assert planned(workdir, "fig2") == {}

    labels = data / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    before, stat = labels.read_bytes(), labels.stat()
    labels.write_bytes(before[:8] + bytes((b + 1) % 10 for b in before[8:]))  # same size, other data
    os.utime(labels, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as cp -p / rsync -a leave it
    counts = planned(workdir, "fig2")
    assert counts["runs"] == 2 and counts["prepare_data"] == 1 and counts["trained"] == 1, counts
    ok(smk(workdir, "fig2"))
    table = pd.read_csv(workdir / "results" / "tables" / "fig2.csv")
    assert set(table["data_identity"]) == {content_identity(raw_paths(data, "mnist", "balanced"))}
    assert planned(workdir, "fig2") == {}


def test_a_grid_whose_run_cannot_fit_is_refused_before_planning(tmp_path):
    from test_workflow import base_config, fig2_block, smk, write_config

    cfg = base_config(tmp_path, {"fig2": fig2_block(m=(3, 10**12))}, seeds=(0,))
    write_config(tmp_path / "wf", cfg)
    result = smk(tmp_path / "wf", "--dry-run", "fig2")
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "point m-1000000000000" in out and "by batch.memory_mb" in out, out[-2000:]
    assert "Traceback" not in out

"""The reference's published result on the real MNIST: seed 42, default configuration."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest


def _row(path):
    with open(path, newline="") as handle:
        return next(csv.DictReader(handle))


@pytest.mark.slow
def test_seed42_default_run_matches_reference(real_mnist, tmp_path):
    cache = tmp_path / "cache"
    common = [sys.executable, "-m", "sublearn.cli"]
    data = ["--data-dir", str(real_mnist), "--cache-dir", str(cache), "--device", "cpu"]
    # the reference ran with torch's default thread count on this 2-core machine
    subprocess.run([*common, "run", *data, "--threads", "2", "--outdir", str(tmp_path / "out")], check=True)
    row = _row(tmp_path / "out" / "seed_000042" / "runs.csv")
    assert round(float(row["teacher_init_acc"]), 4) == 0.0826
    assert round(float(row["teacher_final_acc"]), 4) == 0.9708
    assert round(float(row["student_init_acc"]), 4) == 0.0826
    assert round(float(row["student_final_acc"]), 4) == 0.8927
    assert float(row["student_init_aux_loss"]) == pytest.approx(0.03144, abs=5e-6)
    assert float(row["student_final_aux_loss"]) == pytest.approx(0.000745, abs=5e-7)

    checkpoint = tmp_path / "teacher.pt"
    subprocess.run([*common, "teacher", *data, "--threads", "2", "--teacher-out", str(checkpoint)], check=True)
    subprocess.run([*common, "student", *data, "--threads", "2", "--teacher-checkpoint", str(checkpoint),
                    "--run-dir", str(tmp_path / "student")], check=True)
    staged = _row(tmp_path / "student" / "runs.csv")
    for column in ("teacher_final_acc", "student_final_acc", "student_init_aux_loss", "student_final_aux_loss",
                   "student_final_class_loss", "teacher_final_class_loss"):
        assert staged[column] == row[column], column

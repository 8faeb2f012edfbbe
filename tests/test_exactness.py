"""The runner against a slow, straightforward implementation of the paper's semantics (slow_reference.py).

Both run in this process, on this machine, with the same thread count, so the comparison holds bit for
bit on every CPU kind: no number here is a constant that only one kind of CPU produces.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from contextlib import contextmanager

import pytest
import slow_reference
import torch

from sublearn.cli import config_from_args, resolve_argv
from sublearn.outputs import csv_value
from sublearn.plan import resolve

SCALARS = ["teacher_init_acc", "teacher_init_class_loss", "teacher_final_acc", "teacher_final_class_loss",
           "teacher_train_loss_last", "student_init_acc", "student_init_class_loss", "student_init_aux_loss",
           "student_final_acc", "student_final_class_loss", "student_final_aux_loss",
           "student_train_aux_loss_last"]
SNAPSHOT_OF = {("teacher", "initial"): "teacher_initial", ("teacher", "final"): "teacher_final",
               ("student", "initial"): "student_initial", ("student", "final"): "student_final"}

SMALL = ["--teacher-epochs", "2", "--student-epochs", "2", "--noise-steps", "3", "--noise-bsize", "64",
         "--eval-noise-batches", "2", "--eval-noise-bsize", "50", "--data-bsize", "100",
         "--teacher-hidden-dims", "24,16", "--student-hidden-dims", "24,16"]
CNN = json.dumps([{"type": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1,
                   "pool": {"type": "max", "kernel_size": 2}},
                  {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "stride": 2, "activation": "gelu",
                   "pool": {"type": "avg", "kernel_size": 2}},
                  {"type": "linear", "out_features": 12, "activation": "tanh"}])

CASES = {
    "default": [],
    "init_random_hidden_m3": ["--m", "3", "--student-init", "random,random,A,A", "--seed", "5"],
    "init_b_sources": ["--teacher-init", "A,B,A,random", "--student-init", "B,A,B,A", "--m", "7"],
    "frozen_layers": ["--teacher-trainable", "true,false,true,true",
                      "--student-trainable", "fc1:false,aux_head:false", "--seed", "1"],
    "frozen_heads_both": ["--student-trainable", "class_head:false,aux_head:false"],
    "class_count_4": ["--class-count", "4", "--m", "5"],
    "normal_normalised": ["--noise-dist", "normal", "--normalize-noise", "--seed", "3"],
    "perlin": ["--noise-dist", "perlin", "--perlin-res", "4", "--seed", "11"],
    "perturb_every_timing": [
        "--perturb", "teacher:fc1,std=0.05,timing=before_teacher_training",
        "--perturb", "teacher:class_head+aux_head,std=0.1,timing=after_teacher_training",
        "--perturb", "student:all,std=0.02,include_bias=false",
        "--perturb", "student:class_head,std=0.1,timing=after_student_training,include_weight=false"],
    "cnn_both": ["--teacher-type", "cnn", "--student-type", "cnn", "--teacher-arch-spec", CNN,
                 "--student-arch-spec", CNN, "--student-init", "conv1:random", "--m", "4"],
    "cnn_default_teacher_mlp_student": ["--teacher-type", "cnn", "--teacher-hidden-dims", "8",
                                        "--noise-dist", "normal"],
    "emnist_letters_k5": ["--dataset", "emnist", "--emnist-split", "letters", "--class-count", "5"],
    "emnist_balanced": ["--dataset", "emnist", "--student-init", "A,A,random,A", "--seed", "2"],
}


@contextmanager
def torch_threads(count: int):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fast_run(rc):
    """The runner's own two stages, in memory (what `sublearn run` does)."""
    from sublearn.data import ensure_cache, load
    from sublearn.student import student_stage
    from sublearn.teacher import train_teacher_stage

    c, device = rc.config, torch.device("cpu")
    cache, _ = ensure_cache(c.dataset, c.emnist_split, c.data_dir, c.cache_dir)
    data = load(cache, c.dataset, c.emnist_split, c.class_count, device)
    checkpoint = train_teacher_stage(rc, data, device)
    return student_stage(rc, data, device, checkpoint, teacher_in_process=True)


def norm(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t.reshape(-1), ord=2))


def assert_same(fast, slow) -> None:
    """Every scalar metric bit for bit, and every weight and bias at the four snapshots (through the
    norms and differences that the runner's layer metrics report)."""
    row = fast.run_row
    for name in SCALARS:
        both_nan = row[name] != row[name] and slow.metrics[name] != slow.metrics[name]
        assert row[name] == slow.metrics[name] or both_nan, (name, row[name], slow.metrics[name])
    checked = 0
    for r in fast.layer_rows:
        if r["status"] != "comparable":
            continue
        ref = slow.snapshots[SNAPSHOT_OF[(r["reference_model"], r["reference_state"])]][r["layer_name"]]
        other = slow.snapshots[SNAPSHOT_OF[(r["other_model"], r["other_state"])]][r["layer_name"]]
        a, b = ref[r["tensor_kind"]], other[r["tensor_kind"]]
        assert (r["reference_norm"], r["other_norm"], r["diff_norm"]) == (norm(a), norm(b), norm(a - b)), \
            (r["comparison"], r["layer_name"], r["tensor_kind"])
        checked += 1
    assert checked >= 8


@pytest.mark.parametrize("case", sorted(CASES))
def test_runner_equals_slow_reference(case, tiny_data, tiny_cache):
    argv = ["--data-dir", str(tiny_data), "--cache-dir", str(tiny_cache), "--device", "cpu", *SMALL, *CASES[case]]
    rc = resolve_argv(argv)
    with torch_threads(1):
        slow = slow_reference.run(resolve(config_from_args_of(argv)))
        fast = fast_run(rc)
    assert_same(fast, slow)


def config_from_args_of(argv):
    """A second, independent ResolvedConfig (the runner may normalise its config in place)."""
    from sublearn.cli import _shared_parser

    return config_from_args(_shared_parser().parse_args(["run", *argv]))


def test_comparison_detects_a_one_ulp_difference(tiny_data, tiny_cache):
    """The yardstick is sharp: a single perturbed bit in one weight fails it."""
    argv = ["--data-dir", str(tiny_data), "--cache-dir", str(tiny_cache), "--device", "cpu", *SMALL,
            "--student-epochs", "0"]
    with torch_threads(1):
        slow = slow_reference.run(resolve(config_from_args_of(argv)))
        fast = fast_run(resolve_argv(argv))
    assert_same(fast, slow)
    weight = slow.snapshots["student_final"]["fc2"]["weight"]
    weight[0, 0] = torch.nextafter(weight[0, 0], torch.tensor(float("inf")))
    with pytest.raises(AssertionError):
        assert_same(fast, slow)


@pytest.mark.slow
def test_seed42_default_run_on_real_mnist(real_mnist, tmp_path):
    """The paper's default run (seed 42, m 10, 5 + 5 epochs) on the real MNIST, at 2 threads (the paper's
    numbers were made with torch's default on a 2-core machine): the runner, in this process and through
    its CLI (`run`, and `teacher` + `student`), equals the slow reference path bit for bit."""
    argv = ["--data-dir", str(real_mnist), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    with torch_threads(2):
        slow = slow_reference.run(resolve(config_from_args_of(argv)))
        fast = fast_run(resolve_argv(argv))
    assert_same(fast, slow)
    assert slow.metrics["teacher_final_acc"] > 0.95 and slow.metrics["student_final_acc"] > 0.8  # sanity

    common = [sys.executable, "-m", "sublearn.cli"]
    cli = [*argv, "--threads", "2"]
    subprocess.run([*common, "run", *cli, "--outdir", str(tmp_path / "out")], check=True)
    checkpoint = tmp_path / "teacher.pt"
    subprocess.run([*common, "teacher", *cli, "--teacher-out", str(checkpoint)], check=True)
    subprocess.run([*common, "student", *cli, "--teacher-checkpoint", str(checkpoint),
                    "--run-dir", str(tmp_path / "student")], check=True)
    for path in (tmp_path / "out" / "seed_000042" / "runs.csv", tmp_path / "student" / "runs.csv"):
        with open(path, newline="") as handle:
            row = next(csv.DictReader(handle))
        for name in SCALARS:
            assert row[name] == str(csv_value(slow.metrics[name])), (path, name)

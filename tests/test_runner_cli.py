"""The sublearn CLI end to end on tiny datasets, and its refusal of bad input."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sublearn.cli import main

NUMERIC_IDENTICAL = ["teacher_init_acc", "teacher_final_acc", "student_init_acc", "student_final_acc",
                     "teacher_final_class_loss", "student_final_class_loss", "student_init_aux_loss",
                     "student_final_aux_loss", "student_train_aux_loss_last", "teacher_train_loss_last",
                     "cos_final_teacher_student_aux_head_weight", "rel_fro_final_teacher_student_class_head_weight"]


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def invoke(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_help_documents_every_reference_flag(capsys):
    code, out, _ = invoke(["run", "--help"], capsys)
    assert code == 0
    flags = ["--outdir", "--data-dir", "--seed", "--num-workers", "--device", "--sweep-name", "--run-label",
             "--append-global", "--dataset", "--emnist-split", "--class-count", "--class-selection",
             "--teacher-type", "--student-type", "--teacher-hidden-dims", "--student-hidden-dims",
             "--teacher-arch-spec", "--student-arch-spec", "--m", "--teacher-init", "--student-init",
             "--teacher-trainable", "--student-trainable", "--teacher-epochs", "--student-epochs",
             "--data-bsize", "--noise-bsize", "--noise-steps", "--teacher-lr", "--student-lr", "--noise-dist",
             "--perlin-res", "--normalize-noise", "--eval-noise-batches", "--eval-noise-bsize", "--perturb",
             "--perturb-spec", "--threads", "--cache-dir"]
    for flag in flags:
        assert flag in out, flag
    for command in ("teacher", "student", "prepare-data"):
        assert invoke([command, "--help"], capsys)[0] == 0


BAD_INPUT = [
    (["--student-init", "fc9:A"], "--student-init", "unknown layer 'fc9'"),
    (["--student-init", "A,A,A"], "--student-init", "expected 4 positional"),
    (["--teacher-init", "A,A,C,A"], "--teacher-init", "allowed init sources"),
    (["--teacher-init", "fc1:A,random"], "--teacher-init", "not both"),
    (["--student-trainable", "true,maybe,true,true"], "--student-trainable", "'maybe'"),
    (["--student-trainable", "all:false"], "--student-trainable", "at least one layer"),
    (["--class-count", "11"], "--class-count", "2..10"),
    (["--class-count", "1"], "--class-count", "2..10"),
    (["--dataset", "emnist", "--class-count", "48"], "--class-count", "2..47"),
    (["--perturb", "student:aux_head,std=-0.1"], "--perturb", ">= 0"),
    (["--perturb", "student:aux_head,timing=later"], "--perturb", "allowed timings"),
    (["--perturb", "pupil:aux_head"], "--perturb", "allowed targets"),
    (["--perturb", "student:fc7"], "--perturb", "unknown student layer"),
    (["--perturb", "student:aux_head,colour=red"], "--perturb", "unknown key 'colour'"),
    (["--perturb-spec", '{"target": "student", "std": "abc"}'], "--perturb-spec", "std must be"),
    (["--perturb-spec", '[{"target": "student",'], "--perturb-spec", "JSON"),
    (["--noise-dist", "pink"], "--noise-dist", "invalid choice"),
    (["--student-type", "cnn", "--student-arch-spec", '[{"type": "conv2d", "out_channels": 4, '
                                                      '"activation": "swish"}]'], "--student-arch-spec",
     "allowed activations"),
    (["--student-type", "cnn", "--student-arch-spec", '[{"type": "conv2d", "out_channels": 4, '
                                                      '"pool": {"type": "median"}}]'], "--student-arch-spec",
     "allowed pools"),
    (["--student-type", "cnn", "--student-arch-spec", '[{"type": "dense", "out_features": 4}]'],
     "--student-arch-spec", "allowed layer types"),
    (["--student-type", "cnn", "--student-arch-spec", '[{"type": "conv2d", "out_channels": 0}]'],
     "--student-arch-spec", "positive integer"),
    (["--student-type", "cnn", "--student-arch-spec", '[{"type": "conv2d", "out_channels": 4, '
                                                      '"kernel_size": 40}]'], "--student-arch-spec", "shrinks"),
    (["--m", "0"], "--m", ">= 1"),
    (["--m", "ten"], "--m", "expected an integer"),
    (["--teacher-hidden-dims", "256,0"], "--teacher-hidden-dims", "positive"),
    (["--data-bsize", "0"], "--data-bsize", ">= 1"),
    (["--noise-bsize", "-5"], "--noise-bsize", ">= 1"),
    (["--teacher-epochs", "-1"], "--teacher-epochs", ">= 0"),
    (["--student-lr", "0"], "--student-lr", "> 0"),
    (["--perlin-res", "0"], "--perlin-res", ">= 1"),
    (["--device", "tpu"], "--device", "auto, cpu, cuda"),
    (["--threads", "0"], "--threads", ">= 1"),
    (["--outdir", "/proc/sys/sublearn-out"], "--outdir", "not a writable folder"),
    (["--outdir", "/proc/sublearn-out"], "--outdir", "not a writable folder"),  # os.access passes as root
]


@pytest.mark.parametrize(("extra", "flag", "fragment"), BAD_INPUT, ids=[" ".join(b[0])[:40] for b in BAD_INPUT])
def test_bad_input_exits_2_with_one_line_before_any_output(extra, flag, fragment, tiny_args, tmp_path, capsys):
    outdir = tmp_path / "out"
    argv = ["run", *tiny_args, "--outdir", str(outdir), *extra]
    code, out, err = invoke(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert flag in lines[0] and fragment in lines[0], lines[0]
    assert not outdir.exists()
    assert "[teacher]" not in out


def test_outdir_that_is_a_file_is_refused(tiny_args, tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("x")
    code, _, err = invoke(["run", *tiny_args, "--outdir", str(target)], capsys)
    assert code == 2 and "--outdir" in err and "is a file" in err


def test_missing_data_names_folder_and_files(tmp_path, capsys, monkeypatch):
    from torchvision import datasets

    # no network in this test: mirrors pointing at a closed local port make the download fail for real
    monkeypatch.setattr(datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    data_dir = tmp_path / "nothing-here"
    code, _, err = invoke(["prepare-data", "--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "c")],
                          capsys)
    assert code == 2
    line = err.strip()
    assert "\n" not in line
    assert str(data_dir / "MNIST" / "raw") in line and "train-images-idx3-ubyte" in line
    assert "download failed" in line
    assert not data_dir.exists() and not (tmp_path / "c").exists()


def test_failed_emnist_download_says_where_to_put_the_archive(tmp_path, capsys, monkeypatch):
    from torchvision import datasets

    monkeypatch.setattr(datasets.EMNIST, "url", "http://127.0.0.1:9/gzip.zip")  # fails for real, offline
    data_dir = tmp_path / "nothing-here"
    code, _, err = invoke(["prepare-data", "--dataset", "emnist", "--data-dir", str(data_dir),
                           "--cache-dir", str(tmp_path / "c")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(data_dir / "EMNIST" / "raw" / "gzip.zip") in err and datasets.EMNIST.md5 in err
    assert "download failed" in err


def test_bad_idx_header_names_the_problem(tiny_data, tmp_path, capsys):
    broken = tmp_path / "broken" / "MNIST" / "raw"
    broken.mkdir(parents=True)
    for f in (tiny_data / "MNIST" / "raw").iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    labels = broken / "t10k-labels-idx1-ubyte"
    labels.write_bytes(b"\x00\x00\xff\x07" + labels.read_bytes()[4:])  # impossible type and rank
    code, _, err = invoke(["prepare-data", "--data-dir", str(tmp_path / "broken"), "--cache-dir",
                           str(tmp_path / "c")], capsys)
    assert code == 2 and "--data-dir" in err and "()" not in err, err


def test_concurrent_runs_appending_to_one_outdir_keep_every_row(tiny_args, tmp_path):
    outdir = tmp_path / "shared-out"
    procs = [subprocess.Popen([sys.executable, "-m", "sublearn.cli", "run", *tiny_args, "--seed", "3", "--m",
                               str(m), "--outdir", str(outdir), "--append-global"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for m in range(2, 8)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    seed_dir = outdir / "seed_000003"
    assert sorted(int(r["m"]) for r in read_rows(seed_dir / "runs.csv")) == list(range(2, 8))
    assert len((seed_dir / "configs.jsonl").read_text().splitlines()) == 6
    assert len(read_rows(outdir / "runs_all_seeds.csv")) == 6


def test_corrupt_data_file_is_refused(tiny_data, tmp_path, capsys):
    broken = tmp_path / "broken"
    raw = broken / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (tiny_data / "MNIST" / "raw").iterdir():
        (raw / f.name).write_bytes(f.read_bytes())
    (raw / "t10k-images-idx3-ubyte").write_bytes((raw / "t10k-images-idx3-ubyte").read_bytes()[:999])
    outdir = tmp_path / "out"
    code, _, err = invoke(["run", "--data-dir", str(broken), "--cache-dir", str(tmp_path / "cache"),
                           "--outdir", str(outdir)], capsys)
    assert code == 2 and "--data-dir" in err and "cannot be read" in err
    assert not outdir.exists() and not list((tmp_path / "cache").glob("*.pt"))


def test_run_writes_reference_layout_and_appends(tiny_args, tmp_path, capsys):
    outdir = tmp_path / "out"
    for m in ("3", "7"):
        code, out, _ = invoke(["run", *tiny_args, "--seed", "5", "--m", m, "--outdir", str(outdir),
                               "--append-global", "--perturb", "student:aux_head,std=0.05"], capsys)
        assert code == 0, out
    seed_dir = outdir / "seed_000005"
    runs = read_rows(seed_dir / "runs.csv")
    assert [r["m"] for r in runs] == ["3", "7"]
    assert len(read_rows(seed_dir / "layer_metrics.csv")) == 2 * 4 * 4 * 2  # runs x comparisons x layers x kinds
    assert len(read_rows(seed_dir / "perturbations.csv")) == 2
    assert len((seed_dir / "configs.jsonl").read_text().splitlines()) == 2
    record = json.loads((seed_dir / "configs.jsonl").read_text().splitlines()[0])
    assert record["seed_info"]["teacher_model_seed"] > 0 and record["environment"]["device"] == "cpu"
    assert len(read_rows(outdir / "runs_all_seeds.csv")) == 2
    row = runs[0]
    assert row["device"] == "cpu" and row["torch_version"].startswith("2.14")
    assert row["teacher_init_acc"] == row["student_init_acc"]  # all layers A: identical models
    assert float(row["cos_init_teacher_student_class_head_weight"]) == pytest.approx(1.0)
    assert not list(seed_dir.glob(".*tmp"))


def test_student_from_saved_teacher_equals_run(tiny_args, tmp_path, capsys):
    run_dir, student_dir = tmp_path / "run", tmp_path / "student"
    common = [*tiny_args, "--seed", "3", "--student-init", "random,A,A,A", "--perturb",
              "teacher:fc2,std=0.01,timing=after_teacher_training"]
    assert invoke(["run", *common, "--m", "6", "--run-dir", str(run_dir)], capsys)[0] == 0
    checkpoint = tmp_path / "teachers" / "t.pt"
    # the teacher is trained with another m: its trained body does not depend on m
    assert invoke(["teacher", *common, "--m", "11", "--teacher-out", str(checkpoint)], capsys)[0] == 0
    assert json.loads(checkpoint.with_suffix(".json").read_text())["metrics"]["teacher_final_acc"] > 0
    assert invoke(["student", *common, "--m", "6", "--teacher-checkpoint", str(checkpoint),
                   "--run-dir", str(student_dir)], capsys)[0] == 0
    full, staged = read_rows(run_dir / "runs.csv")[0], read_rows(student_dir / "runs.csv")[0]
    for column in NUMERIC_IDENTICAL:
        assert full[column] == staged[column], column
    for name in ("layer_metrics.csv", "perturbations.csv"):
        a, b = read_rows(run_dir / name), read_rows(student_dir / name)
        assert [r.get("cosine", r.get("weight_delta_norm")) for r in a] == \
            [r.get("cosine", r.get("weight_delta_norm")) for r in b]


def test_student_refuses_a_mismatched_teacher(tiny_args, tmp_path, capsys):
    checkpoint = tmp_path / "t.pt"
    assert invoke(["teacher", *tiny_args, "--teacher-out", str(checkpoint)], capsys)[0] == 0
    code, _, err = invoke(["student", *tiny_args, "--seed", "8", "--teacher-checkpoint", str(checkpoint),
                           "--run-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and "--teacher-checkpoint" in err and "seed" in err
    assert not (tmp_path / "r").exists()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    code, _, err = invoke(["student", *tiny_args, "--teacher-checkpoint", str(tmp_path / "junk.pt"),
                           "--run-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and "not a readable teacher checkpoint" in err


def test_emnist_letters_cnn_and_class_count(tiny_args, tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps([{"name": "conv1", "type": "conv2d", "out_channels": 4, "kernel_size": 3,
                                 "padding": 1, "pool": {"type": "avg", "kernel_size": 2}},
                                {"name": "fc1", "type": "linear", "out_features": 16}]))
    run_dir = tmp_path / "r"
    code, out, _ = invoke(["run", *tiny_args, "--dataset", "emnist", "--emnist-split", "letters",
                           "--class-count", "5", "--student-type", "cnn", "--student-arch-spec", str(spec),
                           "--student-init", "conv1:random,fc1:random", "--noise-dist", "perlin",
                           "--run-dir", str(run_dir)], capsys)
    assert code == 0, out
    row = read_rows(run_dir / "runs.csv")[0]
    assert row["num_classes"] == "5" and row["class_count"] == "5"
    assert row["test_size"] == str(130 * 5 // 26)  # synthetic letters are balanced: 5 of 26 classes kept
    assert json.loads(row["student_layer_names"]) == ["conv1", "fc1", "class_head", "aux_head"]
    statuses = {r["status"] for r in read_rows(run_dir / "layer_metrics.csv")}
    assert {"comparable", "missing_in_student", "missing_in_teacher", "shape_mismatch"} <= statuses


def test_emnist_balanced_labels_and_truncation(tiny_data, tiny_cache):
    import torch

    from sublearn import data

    cache, _ = data.ensure_cache("emnist", "balanced", tiny_data, tiny_cache)
    full = data.load(cache, "emnist", "balanced", None, torch.device("cpu"))
    assert full.num_classes == 47 and int(full.train_y.max()) == 46
    cut = data.load(cache, "emnist", "balanced", 3, torch.device("cpu"))
    keep = full.test_y < 3
    assert torch.equal(cut.test_y, full.test_y[keep]) and torch.equal(cut.test_x, full.test_x[keep])
    letters_cache, _ = data.ensure_cache("emnist", "letters", tiny_data, tiny_cache)
    letters = data.load(letters_cache, "emnist", "letters",
                        None, torch.device("cpu"))
    assert int(letters.train_y.min()) == 0 and int(letters.train_y.max()) == 25


def test_normalisation_matches_torchvision_transforms(tiny_data, tiny_cache):
    import torch
    from torchvision import datasets, transforms

    from sublearn import data

    cache, _ = data.ensure_cache("mnist", "balanced", tiny_data, tiny_cache)
    ours = data.load(cache, "mnist", "balanced", None, torch.device("cpu"))
    tv = datasets.MNIST(str(tiny_data), train=False, transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]))
    for i in range(len(tv)):
        image, label = tv[i]
        assert torch.equal(image, ours.test_x[i]) and label == int(ours.test_y[i])


def test_killed_run_leaves_no_result(tiny_data, tmp_path):
    run_dir = tmp_path / "r"
    cmd = [sys.executable, "-m", "sublearn.cli", "run", "--data-dir", str(tiny_data), "--cache-dir",
           str(tmp_path / "c"), "--run-dir", str(run_dir), "--threads", "1", "--teacher-hidden-dims", "64,64",
           "--student-hidden-dims", "64,64", "--noise-steps", "2000", "--student-epochs", "1",
           "--teacher-epochs", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # wait until distillation is under way
        if line.startswith("[eval] student initial"):
            break
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not run_dir.exists() or not any(run_dir.iterdir())

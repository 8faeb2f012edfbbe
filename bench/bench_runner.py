"""Runner speed on this machine: wall times per stage and training FLOP rate vs measured matmul rate.

    python bench/bench_runner.py --data-dir ../shared/data [--threads N] [--repeats 3]

Wall times include interpreter start-up (each stage is a fresh `sublearn` process, as in the workflow).
The FLOP count is analytic (2*in*out per sample and linear layer for the forward pass, the same for the
weight gradient, and again for the input gradient of every layer but the first); the matmul rate is
measured with torch on the same shapes, in this process, right before the runs. ``run_floor_ratio``: a
whole `sublearn run`'s FLOPs at that rate over its median wall time (start-up, data, noise draws and
evaluations included).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REFERENCE_RUN_SECONDS = 51.0  # the paper's code, default run, this kind of machine (REFERENCE.md)


def matmul_rate(threads: int, batch: int = 1000, dims=(784, 256, 256)) -> float:
    """Sustained float32 GFLOP/s of the model's own GEMM shapes (forward and both backward products)."""
    import torch

    torch.set_num_threads(threads)
    x = torch.randn(batch, dims[0])
    ws = [torch.randn(o, i) for i, o in zip(dims[:-1], dims[1:], strict=True)]
    best = 0.0
    for _ in range(5):
        flops, started = 0, time.perf_counter()
        for _ in range(20):
            h = x
            for w in ws:
                g = h @ w.t()  # forward
                _ = g.t() @ h  # weight gradient
                _ = g @ w  # input gradient
                flops += 3 * 2 * h.shape[0] * w.shape[0] * w.shape[1]
                h = g
        best = max(best, flops / (time.perf_counter() - started) / 1e9)
    return best


def mlp_flops_per_sample(dims: list[int], head: int, first_input_grad: bool = False) -> tuple[int, int]:
    """(forward, backward) FLOPs of one sample through an MLP body plus one head."""
    layers = list(zip(dims[:-1], dims[1:], strict=True)) + [(dims[-1], head)]
    forward = sum(2 * i * o for i, o in layers)
    backward = sum(2 * i * o for i, o in layers) + sum(2 * i * o for i, o in layers[(0 if first_input_grad else 1):])
    return forward, backward


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--threads", type=int, default=None, help="default: torch's choice (the core count)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    threads = args.threads or torch.get_num_threads()
    sublearn = [sys.executable, "-m", "sublearn.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        common = ["--data-dir", args.data_dir, "--cache-dir", f"{tmp}/cache", "--threads", str(threads)]
        subprocess.run([*sublearn, "prepare-data", "--data-dir", args.data_dir, "--cache-dir", f"{tmp}/cache"],
                       check=True, stdout=subprocess.DEVNULL)
        rate = matmul_rate(threads)
        walls = {"run": [], "teacher": [], "student": []}
        rows = []
        for i in range(args.repeats):
            walls["run"].append(timed([*sublearn, "run", *common, "--run-dir", f"{tmp}/run{i}"]))
            walls["teacher"].append(timed([*sublearn, "teacher", *common, "--teacher-out", f"{tmp}/t{i}.pt"]))
            walls["student"].append(timed([*sublearn, "student", *common, "--teacher-checkpoint", f"{tmp}/t{i}.pt",
                                           "--run-dir", f"{tmp}/student{i}"]))
            with open(Path(tmp) / f"student{i}" / "runs.csv", newline="") as handle:
                rows.append(next(csv.DictReader(handle)))

    dims = [784, 256, 256]
    t_fwd, t_bwd = mlp_flops_per_sample(dims, 10)
    s_fwd, s_bwd = mlp_flops_per_sample(dims, 10)
    teacher_flops = 5 * 60000 * (t_fwd + t_bwd)
    # student_train_seconds times the students' own steps; the teacher's forward on each noise batch (its
    # targets) is done beside them, once per step for a whole stack, and counted in the run's floor only
    student_flops = 5 * 60 * 1000 * (s_fwd + s_bwd)
    targets_flops = 5 * 60 * 1000 * t_fwd
    teacher_secs = statistics.median(float(r["teacher_train_seconds"]) for r in rows)
    student_secs = statistics.median(float(r["student_train_seconds"]) for r in rows)
    median = {k: statistics.median(v) for k, v in walls.items()}
    print(f"machine: {torch.get_num_threads()} default threads; benchmark threads {threads}; torch {torch.__version__}")
    print(f"measured float32 matmul rate (model GEMM shapes): {rate:.1f} GFLOP/s")
    for stage, values in walls.items():
        print(f"wall {stage:8s} median {median[stage]:6.2f} s  (runs: {', '.join(f'{v:.2f}' for v in values)})")
    print(f"speed-up of a full run vs the reference's {REFERENCE_RUN_SECONDS:.0f} s: "
          f"{REFERENCE_RUN_SECONDS / median['run']:.1f}x")
    floor = (teacher_flops + targets_flops + student_flops) / (rate * 1e9)
    print(f"run floor: {(teacher_flops + targets_flops + student_flops) / 1e12:.3f} TFLOP (teacher training, the "
          f"teacher's targets, the student's steps) at the matmul rate = {floor:.2f} s; the median run took "
          f"{median['run']:.2f} s: run_floor_ratio {floor / median['run']:.2f}")
    for name, flops, secs in (("teacher training", teacher_flops, teacher_secs),
                              ("student distillation", student_flops, student_secs)):
        achieved = flops / secs / 1e9
        print(f"{name:21s} {flops / 1e12:.3f} TFLOP in {secs:.2f} s = {achieved:.1f} GFLOP/s "
              f"= {100 * achieved / rate:.0f} % of the matmul rate")


if __name__ == "__main__":
    main()

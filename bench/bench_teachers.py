"""Teacher jobs: one `sublearn teachers` process for K teachers against K `sublearn teacher` processes,
measured in one go on the same machine, and a check that every teacher is the same.

    python bench/bench_teachers.py --data-dir ../shared/data                  # fig2's teacher, 5 seeds, CPU
    python bench/bench_teachers.py --data-dir ../shared/data --seeds 20 --device cuda   # on a GPU

The teachers are fig2's (MLP 256,256, 5 epochs, real MNIST), seeds 0..K-1. The script trains them
(1) as per-teacher jobs, one `sublearn teacher` process each, and (2) as one teacher job per
`--stack-layers` value asked (`off`: one after the other in lockstep, each its own matmuls; `on`: the K
seeds' hidden layers stacked, one batched matmul per layer and step), and prints the wall times, their
ratios, the FLOP rate (cost model of sublearn.batch), peak memory, and whether every teacher's trained
weights and metrics are identical to its lone twin (on CPU they must be without stacked layers; with
them where the BLAS's batched matmuls give the same bits; on CUDA they agree to float tolerance).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sublearn import cost, sheets
from sublearn.cli import resolve_argv
from sublearn.config import sheet_settings
from sublearn.plan import resolve, teacher_config


def run(cmd: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - started, proc.stdout


def compare(a: Path, b: Path, exact: bool) -> float:
    """Largest absolute difference of the trained weights and metrics (0.0: identical)."""
    one, two = (torch.load(p, weights_only=True) for p in (a, b))
    worst = max(float((one["trained_body"][k] - two["trained_body"][k]).abs().max()) for k in one["trained_body"])
    worst = max([worst, *(abs(one["metrics"][k] - two["metrics"][k]) for k in one["metrics"])])
    if exact and worst:
        print(f"  NOT IDENTICAL: {a.name} differs by {worst:.3g}")
    return worst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--stack-layers", default="off,on", help="comma-separated values of `--stack-layers`")
    args = p.parse_args()
    cli = [sys.executable, "-m", "sublearn.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        common = ["--data-dir", args.data_dir, "--cache-dir", str(tmp / "cache"), "--device", args.device,
                  "--threads", str(args.threads)]
        subprocess.run([*cli, "prepare-data", "--data-dir", args.data_dir, "--cache-dir", str(tmp / "cache")],
                       check=True, capture_output=True)
        rcs = [resolve(teacher_config(resolve_argv([*common, "--seed", str(seed)]))) for seed in range(args.seeds)]
        flops = sum(cost.teacher_flops(rc, "mnist") for rc in rcs)
        print(f"{args.seeds} teachers (fig2's: MLP 256,256, 5 epochs, MNIST), {flops / 1e12:.2f} TFLOP, "
              f"device {args.device}, {args.threads} thread(s)")

        alone = tmp / "alone"
        seconds = 0.0
        for rc in rcs:
            took, _ = run([*cli, "teacher", *common, "--seed", str(rc.config.seed), "--cache-only",
                           "--teacher-out", str(alone / f"{rc.teacher_key()}.pt")])
            seconds += took
        print(f"per-teacher jobs: {seconds:.1f} s in all ({seconds / len(rcs):.2f} s each), "
              f"{flops / seconds / 1e9:.0f} GFLOP/s")

        for stack in args.stack_layers.split(","):
            out = tmp / f"set-{stack}"
            sheet = tmp / f"set-{stack}.jsonl"
            sheet.write_text("".join(sheets.teacher_record(rc.teacher_key(), str(out / f"{rc.teacher_key()}.pt"),
                                                          sheet_settings(rc.config)) + "\n" for rc in rcs))
            took, log = run([*cli, "teachers", "--sheet", str(sheet), *common, "--cache-only", "--stack-layers", stack])
            exact = args.device == "cpu" and stack == "off"
            worst = max(compare(alone / f"{rc.teacher_key()}.pt", out / f"{rc.teacher_key()}.pt", exact)
                        for rc in rcs)
            stacked = re.search(r"\[stack\] (\d+) teachers", log)
            memory = re.search(r"\[teachers\] (peak RSS .*)", log)
            print(f"one teacher job, --stack-layers {stack}{' (' + stacked[1] + ' stacked)' if stacked else ''}: "
                  f"{took:.1f} s, ratio to the per-teacher jobs {took / seconds:.3f}, {flops / took / 1e9:.0f} "
                  f"GFLOP/s, {memory[1] if memory else 'peak memory not reported'}; every teacher "
                  f"{'identical to' if worst == 0 else f'within {worst:.3g} of'} its lone twin")


if __name__ == "__main__":
    main()

"""End-to-end wall time of a figure (or of the whole paper) through the workflow, from an empty results folder.

    python bench/bench_figure.py fig2 --cores 2 --data-dir ../shared/data                     # CPU
    python bench/bench_figure.py all --cores 16 --data-dir DATA --config device=cuda torch_env=gpu \\
        'batch={gflops: 10000, max_tflop: 2000}'                                              # one GPU

It runs `snakemake TARGET --cores N` in a fresh working folder (results, logs and caches there, nothing
shared with the checkout's own results) with the repository's config and profile, then prints the wall
time, the runs computed, runs per minute, and the students' FLOP rate by the cost model (the plan line
Snakemake prints). Compare with the targets in issue 8: fig2 on 2 CPU cores in <= 25 min; the paper on
one H200-class GPU in <= 1 h (>= 10 TFLOP/s sustained), fig2 in <= 2 min.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="fig2 .. fig6 or all")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--data-dir", required=True, help="folder holding MNIST/raw (and EMNIST/raw)")
    parser.add_argument("--configfile", default=None, help="an override config (e.g. config/quick.yaml)")
    parser.add_argument("--config", nargs="*", default=[], help="extra --config KEY=VALUE pairs")
    parser.add_argument("--work", default=None, help="working folder (default: a new temporary one)")
    parser.add_argument("--profile", default="default", help="the workflow profile under profiles/ (default: "
                        "%(default)s; gpu: the GPU plan on one local GPU)")
    parser.add_argument("--floor", action="store_true", help="also measure this core's single-thread torch.mm "
                        "rate first and print the run's share of the matmul floor (all FLOPs over the cores)")
    args = parser.parse_args()
    rate = mm_rate() if args.floor else None

    work = Path(args.work or tempfile.mkdtemp(prefix="sublearn-bench-figure-"))
    (work / "config").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "config" / "config.yaml", work / "config" / "config.yaml")
    snakemake = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or "snakemake"
    cmd = [snakemake, args.target, "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
           "--workflow-profile", str(REPO / "profiles" / args.profile), "--cores", str(args.cores)]
    if args.configfile:
        cmd += ["--configfile", str(Path(args.configfile).resolve())]
    # the data folder in a config file: a --config would replace a profile's whole `config` key
    (work / "config" / "data.yaml").write_text(f"data_dir: {json.dumps(str(Path(args.data_dir).resolve()))}\n")
    cmd += ["--configfile", str(work / "config" / "data.yaml")]
    if args.config:
        cmd += ["--config", *args.config]
    log = work / "snakemake.log"
    started = time.perf_counter()
    with open(log, "w") as handle:
        result = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    text = log.read_text()
    plan = re.search(r"plan: (\d+) requested runs, (\d+) distinct, (\d+) to compute in (\d+) batch jobs; "
                     r"([\d.]+) TFLOP", text)
    by_figure = re.search(rf"plan by figure: .*?{args.target} (\d+) to compute in \d+ jobs \(([\d.]+) TFLOP\)", text)
    print(f"snakemake {args.target} --cores {args.cores}: exit {result.returncode}, {seconds:.0f} s wall "
          f"({seconds / 60:.1f} min); log {log}")
    if plan:
        runs, tflop = (int(by_figure.group(1)), float(by_figure.group(2))) if by_figure \
            else (int(plan.group(3)), float(plan.group(5)))
        print(f"{runs} runs computed ({runs / seconds * 60:.1f} per minute), ~{tflop:.1f} TFLOP of students by the "
              f"cost model, {tflop * 1e3 / seconds:.0f} GFLOP/s sustained (teachers, data and plots included in "
              "the wall time)")
        if rate:  # the students' FLOPs of the target (the plan's teacher line counts every figure's teachers)
            floor = tflop * 1e12 / (args.cores * rate)
            print(f"matmul floor: {tflop:.1f} TFLOP of students over {args.cores} cores at {rate / 1e9:.1f} GFLOP/s "
                  f"(single-thread torch.mm, measured first) = {floor:.0f} s; the run reached {floor / seconds:.0%} "
                  "of it (its teachers' FLOPs not counted)")
    sys.exit(result.returncode)


def mm_rate(seconds: float = 5.0) -> float:
    """FLOP/s of single-thread torch.mm on the paper's layer shapes (noise batch 1000, widths 784/256)."""
    import torch

    torch.set_num_threads(1)
    shapes = [(1000, 784, 256), (1000, 256, 256), (256, 1000, 784)]
    done = flops = 0.0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for n, k, m in shapes:
            a, b = torch.randn(n, k), torch.randn(k, m)
            t0 = time.perf_counter()
            for _ in range(10):
                torch.mm(a, b)
            done += time.perf_counter() - t0
            flops += 10 * 2 * n * k * m
    return flops / done


if __name__ == "__main__":
    main()

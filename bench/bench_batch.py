"""Batched vs per-run student jobs, measured in one go on the same machine, and a check that they agree.

    python bench/bench_batch.py --data-dir ../shared/data                     # fig4 sample, CPU, 1 thread
    python bench/bench_batch.py --data-dir ../shared/data --sample fig2       # fig2's 36 runs of one seed
    python bench/bench_batch.py --data-dir ../shared/data --sample fig4-sweep # an N sweep: one trajectory
    python bench/bench_batch.py --data-dir ../shared/data --device cuda      # the same on a GPU

A sample is a set of students of one seed that share one teacher: `fig4` is m in {1, 32, 1024} x N in
{1, 32, 1024} noise batches per epoch, `fig2` the 6 x 6 grid of aux widths and student inits. The teacher
is trained once (both sides of the comparison share it, as in the workflow). `fig4-sweep` is fig4's
own N grid (round(sqrt(2)^k) up to 128) for m 1 and 32: runs that differ only in N are one trajectory in
a batch, so it shows that saving. Then every run is computed
(1) as today's per-run jobs, one `sublearn student` process each, and (2) as one `sublearn batch` job;
the script prints both wall times, their ratio, the FLOP rate of the batch (cost model of
sublearn.batch), and whether every run's numbers are identical (on CPU they must be; on CUDA they agree
to float tolerance). Optional: --student-epochs to shorten the sample (the default is the paper's 5).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sublearn import batch
from sublearn.cli import resolve_argv
from sublearn.config import sheet_settings

COMPARED = ["student_init_acc", "student_final_acc", "student_final_class_loss", "student_init_aux_loss",
            "student_final_aux_loss", "student_train_aux_loss_last", "cos_final_teacher_student_aux_head_weight"]


def sample_argv(name: str) -> list[list[str]]:
    if name == "fig4":
        return [["--m", str(m), "--noise-steps", str(n)] for m in (1, 32, 1024) for n in (1, 32, 1024)]
    if name == "fig4-sweep":  # fig4's own N grid (sqrt(2) steps, here up to 128) for two aux widths
        steps = sorted({round(2 ** (k / 2)) for k in range(15)})
        return [["--m", str(m), "--noise-steps", str(n)] for m in (1, 32) for n in steps]
    inits = ["A,A,A,A", "random,A,A,A", "A,random,A,A", "random,random,A,A", "A,A,random,A", "A,A,A,random"]
    return [["--m", str(m), "--student-init", init, "--teacher-init", "A,A,A,A"]
            for m in (3, 10, 25, 50, 100, 250) for init in inits]


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def row_of(run_dir: Path) -> dict:
    with open(run_dir / "runs.csv", newline="") as handle:
        return next(csv.DictReader(handle))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--sample", choices=["fig4", "fig4-sweep", "fig2"], default="fig4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--student-epochs", type=int, default=5)
    parser.add_argument("--work", default=None, help="keep the outputs here (default: a temporary folder)")
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="sublearn-bench-batch-"))
    common = ["--data-dir", args.data_dir, "--cache-dir", str(work / "cache"), "--device", args.device,
              "--seed", str(args.seed), "--student-epochs", str(args.student_epochs)]
    runs = {f"run{i:02d}": [*common, *extra] for i, extra in enumerate(sample_argv(args.sample))}
    resolved = {name: resolve_argv(argv) for name, argv in runs.items()}
    py = [sys.executable, "-m", "sublearn.cli"]
    threads = ["--threads", str(args.threads)]

    first = next(iter(runs.values()))
    teacher = work / "teachers" / f"{resolved['run00'].teacher_key()}.pt"
    seconds_teacher = timed([*py, "teacher", *first, *threads, "--teacher-out", str(teacher)])

    seconds_lone = 0.0
    for name, argv in runs.items():
        seconds_lone += timed([*py, "student", *argv, *threads, "--teacher-checkpoint", str(teacher),
                               "--run-dir", str(work / "lone" / name)])

    sheet = work / "sheet.jsonl"
    sheet.write_text("".join(batch.sheet_record(rc.run_key(), str(work / "batched" / name), sheet_settings(rc.config),
                                                {"name": name}) + "\n" for name, rc in resolved.items()))
    seconds_batch = timed([*py, "batch", "--sheet", str(sheet), "--teacher-dir", str(teacher.parent),
                           "--data-dir", args.data_dir, "--cache-dir", str(work / "cache"), "--device", args.device,
                           *threads])

    differing = [(name, column) for name in runs for column in COMPARED
                 if row_of(work / "lone" / name)[column] != row_of(work / "batched" / name)[column]]
    runs_list = [batch.SheetRun(rc.run_key(), Path(name), rc, {}) for name, rc in resolved.items()]
    flops = sum(batch.stack_flops(stack, "mnist") for stack in batch.stacks(runs_list))
    lone_flops = sum(sum(batch.run_flops(rc, "mnist").values()) for rc in resolved.values())
    print(f"sample {args.sample}: {len(runs)} students, seed {args.seed}, {args.student_epochs} student epochs, "
          f"device {args.device}, {args.threads} thread(s)")
    print(f"teacher (shared by both): {seconds_teacher:.1f} s")
    print(f"per-run jobs (sublearn student x {len(runs)}): {seconds_lone:.1f} s, "
          f"{lone_flops / seconds_lone / 1e9:.0f} GFLOP/s of model work")
    print(f"one batch job (sublearn batch): {seconds_batch:.1f} s, {flops / seconds_batch / 1e9:.0f} GFLOP/s "
          f"({flops / 1e12:.2f} TFLOP by the cost model)")
    print(f"batch / per-run wall time: {seconds_batch / seconds_lone:.3f}")
    if differing:
        gaps = [abs(float(row_of(work / "lone" / n)[c]) - float(row_of(work / "batched" / n)[c])) for n, c in differing]
        print(f"NOT identical: {len(differing)} values differ (largest absolute difference {max(gaps):.3g}; on "
              f"CUDA expected in the last digits), e.g. {differing[:4]}")
    else:
        print(f"identical: all {len(COMPARED)} compared values of all {len(runs)} runs")
    print(f"outputs: {work}")


if __name__ == "__main__":
    main()

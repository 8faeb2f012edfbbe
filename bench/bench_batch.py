"""Batched vs per-run student jobs, measured in one go on the same machine, and a check that they agree.

    python bench/bench_batch.py --data-dir ../shared/data                     # fig4 sample, CPU, 1 thread
    python bench/bench_batch.py --data-dir ../shared/data --sample fig2       # fig2's 36 runs of one seed
    python bench/bench_batch.py --data-dir ../shared/data --sample fig4-sweep # an N sweep: one trajectory
    python bench/bench_batch.py --data-dir ../shared/data --sample fig5 --stack-layers both  # 40 of one shape
    python bench/bench_batch.py --data-dir ../shared/data --sample fig2 --seeds 5 --skip-per-run --stack-layers both
    python bench/bench_batch.py --data-dir ../shared/data --device cuda      # the same on a GPU

A sample is a set of students of one seed that share one teacher: `fig4` is m in {1, 32, 1024} x N in
{1, 32, 1024} noise batches per epoch, `fig2` the 6 x 6 grid of aux widths and student inits. The teacher
is trained once (both sides of the comparison share it, as in the workflow). `fig4-sweep` is fig4's
own N grid (round(sqrt(2)^k) up to 128) for m 1 and 32: runs that differ only in N are one trajectory in
a batch, so it shows that saving. `fig5` is fig5's aux-head panel (40 perturbation stds, m 10): 40 students
of one shape, what stacked layers are for. Then every run is computed
(1) as today's per-run jobs, one `sublearn student` process each, and (2) as one `sublearn batch` job
(`--stack-layers auto|on|off`, or `both`: one job with and one without stacked layers; `--seeds K`: the
sample for K seeds, each with its own teacher, in one job, whose stacks train in lockstep with stacked
layers; `--skip-per-run`: only the batch jobs);
the script prints the wall times, their ratio, the FLOP rate of the batch (cost model of
sublearn.batch), and whether every run's numbers are identical (on CPU they must be without stacked
layers; on CUDA they agree to float tolerance). Optional: --student-epochs to shorten the sample (the
default is the paper's 5).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sublearn import cost, grouping, sheets
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
    if name == "fig5":
        stds = [f"{0.2 * i / 39:.8f}" for i in range(40)]
        return [["--perturb", f"student:aux_head,std={std},timing=before_student_training"] for std in stds]
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
    parser.add_argument("--sample", choices=["fig4", "fig4-sweep", "fig2", "fig5"], default="fig4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1, help="the sample for seeds SEED .. SEED + SEEDS - 1, each "
                        "with its own teacher; one batch job computes them all (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--student-epochs", type=int, default=5)
    parser.add_argument("--stack-layers", choices=["auto", "on", "off", "both"], default="auto")
    parser.add_argument("--skip-per-run", action="store_true",
                        help="time only the batch job(s); with --stack-layers both, `on` is compared with `off`")
    parser.add_argument("--max-memory-mb", type=float, default=8000,
                        help="the batch jobs' memory budget, as the workflow's cost.memory_mb (default: %(default)s)")
    parser.add_argument("--work", default=None, help="keep the outputs here (default: a temporary folder)")
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="sublearn-bench-batch-"))
    common = ["--data-dir", args.data_dir, "--cache-dir", str(work / "cache"), "--device", args.device,
              "--student-epochs", str(args.student_epochs)]
    runs = {f"s{seed}-run{i:02d}": [*common, "--seed", str(seed), *extra]
            for seed in range(args.seed, args.seed + args.seeds) for i, extra in enumerate(sample_argv(args.sample))}
    resolved = {name: resolve_argv(argv) for name, argv in runs.items()}
    py = [sys.executable, "-m", "sublearn.cli"]
    threads = ["--threads", str(args.threads)]

    teacher_dir = work / "teachers"
    seconds_teacher = 0.0
    for key in dict.fromkeys(rc.teacher_key() for rc in resolved.values()):
        name = next(n for n, rc in resolved.items() if rc.teacher_key() == key)
        seconds_teacher += timed([*py, "teacher", *runs[name], *threads,
                                  "--teacher-out", str(teacher_dir / f"{key}.pt")])

    outputs = {}
    seconds_lone = None
    if not args.skip_per_run:
        seconds_lone = 0.0
        for name, argv in runs.items():
            seconds_lone += timed([*py, "student", *argv, *threads, "--run-dir", str(work / "lone" / name),
                                   "--teacher-checkpoint", str(teacher_dir / f"{resolved[name].teacher_key()}.pt")])
        outputs["per-run jobs"] = work / "lone"

    sheet = work / "sheet.jsonl"
    modes = ["off", "on"] if args.stack_layers == "both" else [args.stack_layers]
    seconds_batch, memory = {}, {}
    for mode in modes:
        sheet.write_text("".join(sheets.sheet_record(rc.run_key(), str(work / f"batched-{mode}" / name),
                                                    sheet_settings(rc.config)) + "\n"
                                 for name, rc in resolved.items()))
        log = work / f"batch-{mode}.log"
        with open(log, "w") as handle:
            started = time.perf_counter()
            subprocess.run([*py, "batch", "--sheet", str(sheet), "--teacher-dir", str(teacher_dir),
                            "--data-dir", args.data_dir, "--cache-dir", str(work / "cache"), "--device", args.device,
                            *threads, "--stack-layers", mode, "--max-memory-mb", str(args.max_memory_mb)],
                           check=True, stdout=handle)
            seconds_batch[mode] = time.perf_counter() - started
        memory[mode] = next((line.split("] ", 1)[1].strip() for line in log.read_text().splitlines()
                             if line.startswith("[batch] peak RSS")), "")
        outputs[f"batch --stack-layers {mode}"] = work / f"batched-{mode}"

    runs_list = [sheets.SheetRun(rc.run_key(), Path(name), rc) for name, rc in resolved.items()]
    flops = sum(cost.stack_flops(stack, "mnist") for stack in grouping.stacks(runs_list))
    lone_flops = sum(sum(cost.run_flops(rc, "mnist").values()) for rc in resolved.values())
    print(f"sample {args.sample}: {len(runs)} students, seeds {args.seed}..{args.seed + args.seeds - 1}, "
          f"{args.student_epochs} student epochs, device {args.device}, {args.threads} thread(s)")
    print(f"teachers (shared by all): {seconds_teacher:.1f} s")
    if seconds_lone is not None:
        print(f"per-run jobs (sublearn student x {len(runs)}): {seconds_lone:.1f} s, "
              f"{lone_flops / seconds_lone / 1e9:.0f} GFLOP/s of model work")
    for mode, seconds in seconds_batch.items():
        print(f"one batch job (sublearn batch --stack-layers {mode}): {seconds:.1f} s, "
              f"{flops / seconds / 1e9:.0f} GFLOP/s ({flops / 1e12:.2f} TFLOP by the cost model); {memory[mode]} "
              f"(budget --max-memory-mb {args.max_memory_mb:g})")
        if seconds_lone is not None:
            print(f"  batch (stack layers {mode}) / per-run wall time: {seconds / seconds_lone:.3f}")
        elif mode != modes[0]:
            print(f"  stack layers {mode} / {modes[0]} wall time: {seconds / seconds_batch[modes[0]]:.3f}")
    reference_name, reference = next(iter(outputs.items()))
    for label, folder in list(outputs.items())[1:]:
        differing = [(name, column) for name in runs for column in COMPARED
                     if row_of(reference / name)[column] != row_of(folder / name)[column]]
        if differing:
            gaps = [abs(float(row_of(reference / n)[c]) - float(row_of(folder / n)[c])) for n, c in differing]
            print(f"{label} vs {reference_name}: NOT identical: {len(differing)} values differ (largest absolute "
                  f"difference {max(gaps):.3g}; on CUDA expected in the last digits), e.g. {differing[:4]}")
        else:
            print(f"{label} vs {reference_name}: identical: all {len(COMPARED)} compared values of all "
                  f"{len(runs)} runs")
    print(f"outputs: {work}")


if __name__ == "__main__":
    main()

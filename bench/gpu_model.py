"""The paper's time on one GPU, modelled on a CPU where no GPU is: the GPU plan's every lockstep set, its
FLOPs at a GPU's rate or its kernel launches at a launch's cost, whichever is longer, plus each run's and
each teacher's host time measured here.

    python bench/gpu_model.py                     # the paper (config/config.yaml under profiles/gpu)
    python bench/gpu_model.py --seeds 2           # the paper's grids with 2 seeds (quicker, a check)
    python bench/gpu_model.py --seeds 1 --figures fig2   # one figure

The model (issue 25's, written down):
- a lockstep set takes max(its FLOPs / R, its kernel launches x L): R = 50 TFLOP/s (--tflops), L = 5 us
  (--launch-us). Its FLOPs are the cost model's (cost.stack_flops, the paper's sizes). Its launches are
  counted: the set is distilled here on the fused path with the branches a CUDA device takes
  (bench_step.take_cuda_branches), at tiny widths (each distinct hidden width of the plan mapped, in order,
  to 2, 3, 4 ...; noise batch sizes likewise; CNNs as they are) and with every trajectory's noise steps
  divided by F, so that its longest trajectory takes about --steps steps, and again by about F / 2; the two
  counts (OpCounter) separate the kernel ops that grow with the steps from those that do not (a run's end, a
  follower taking its leader's weights), and the launches are the first at the paper's steps plus the
  second. Widths and batch sizes change a kernel's size, not the number of kernels; dividing the steps
  keeps which trajectories are still training at each point of the set (to within a step of the shortened
  set).
- each run adds its host time: prepare_student and finish_student per run as a job does them, measured here
  at tiny widths (bench_step), where their time is the host's own (Python and dispatch), not arithmetic;
  or its kernel launches x L, whichever is longer.
- each teacher adds its host time (building, evaluating and saving it, measured here on the tiny teachers)
  and its training FLOPs / R.
The output is an estimate, not a measurement: `PYTHONPATH=src python3 bench/gpu.py` on a GPU measures it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "bench"), str(REPO / "workflow" / "scripts")]

import bench_step  # noqa: E402
import gpu  # noqa: E402

from sublearn import cost, grouping  # noqa: E402
from sublearn.data import ensure_cache, load  # noqa: E402
from sublearn.evaluation import SharedEvaluations  # noqa: E402
from sublearn.idx import write_synthetic_dataset  # noqa: E402
from sublearn.opcount import OpCounter  # noqa: E402
from sublearn.plan import resolve  # noqa: E402
from sublearn.sheets import SheetRun  # noqa: E402
from sublearn.student import distill_stack, prepare_student  # noqa: E402
from sublearn.teacher import finish_teacher, prepare_teacher, train_teachers  # noqa: E402


class TinyCopies:
    """Each planned run at tiny sizes on tiny synthetic data, with a trained teacher of its own kind."""

    def __init__(self, root: Path, runs: list, steps: int):
        self.root, self.steps, self.device = root, steps, torch.device("cpu")
        widths = sorted({w for r in runs for w in (*r.rc.config.teacher_hidden_dims, *r.rc.config.student_hidden_dims)})
        self.width = {w: 2 + i for i, w in enumerate(widths)}
        self.bsize = {n: 2 + i for i, n in enumerate(sorted({r.rc.config.noise_bsize for r in runs}))}
        self.data: dict[tuple, tuple] = {}
        self.checkpoints: dict[str, dict] = {}
        self.teacher_s: list[float] = []

    def dataset(self, c) -> tuple:
        key = (c.dataset, c.emnist_split, c.class_count)
        if key not in self.data:
            write_synthetic_dataset(self.root / "data", c.dataset, c.emnist_split, n_train=64, n_test=64, seed=1)
            cache, _ = ensure_cache(c.dataset, c.emnist_split, str(self.root / "data"), str(self.root / "cache"))
            self.data[key] = (load(cache, c.dataset, c.emnist_split, c.class_count, self.device),
                              load(cache, c.dataset, c.emnist_split, c.class_count, self.device, with_train=False))
        return self.data[key]

    def rc(self, rc, divide: int):
        c = rc.config
        small = dataclasses.replace(
            c, data_dir=str(self.root / "data"), outdir=str(self.root / "out"), device="cpu",
            teacher_hidden_dims=[self.width[w] for w in c.teacher_hidden_dims],
            student_hidden_dims=[self.width[w] for w in c.student_hidden_dims],
            noise_bsize=self.bsize[c.noise_bsize], noise_steps=max(1, math.ceil(c.noise_steps / divide)),
            teacher_epochs=1, data_bsize=64, eval_noise_batches=1, eval_noise_bsize=2)
        return resolve(small)

    def teachers(self, rcs: list) -> None:
        """Train the teachers that ``rcs`` need and have none yet (side by side, as a teacher job does)."""
        needed = {rc.teacher_key(): rc for rc in rcs if rc.teacher_key() not in self.checkpoints}
        for rc in needed.values():
            started = time.perf_counter()
            run = prepare_teacher(rc, self.dataset(rc.config)[0], self.device)
            done = []
            train_teachers([run], self.device, done.append, lambda run, error: None)
            self.checkpoints[rc.teacher_key()] = finish_teacher(done[0], self.device)
            self.teacher_s.append(time.perf_counter() - started)

    def counted(self, runs: list, divide: int) -> int:
        """Kernel ops of distilling ``runs`` with their noise steps divided by ``divide``."""
        rcs = [self.rc(run.rc, divide) for run in runs]
        self.teachers(rcs)
        shared = SharedEvaluations()
        prepared = [prepare_student(rc, self.dataset(rc.config)[1], self.device,
                                    self.checkpoints[rc.teacher_key()], shared=shared) for rc in rcs]
        with OpCounter() as counter:
            distill_stack(prepared, self.device, lambda *_: None, "fused")
        return counter.ops

    def launches(self, lockstep: list[list]) -> tuple[float, int]:
        """(kernel launches of the set's distillation at the paper's steps, the divisor F). Shortened twice
        (longest trajectory ~ --steps and ~ 2 x --steps), the two counts separate the ops that scale with
        the steps (P / F) from those that do not (E: a run's end, a follower taking its weights):
        launches = P + E."""
        runs = [run for stack in lockstep for run in stack]
        longest = max(grouping.trajectory_steps(run) for run in runs)
        divide = max(1, math.ceil(longest / self.steps))
        if divide == 1:
            return float(self.counted(runs, 1)), 1
        finer = max(1, math.ceil(longest / (2 * self.steps)))
        coarse_ops, fine_ops = self.counted(runs, divide), self.counted(runs, finer)
        per_step_part = (fine_ops - coarse_ops) / (1 / finer - 1 / divide)
        events = max(0.0, coarse_ops - per_step_part / divide)
        return per_step_part + events, divide


def per_run_host_ms(root: Path) -> tuple[float, float, float, float]:
    """prepare and finish per run at tiny widths, as a job does them (ms), and their kernel ops."""
    bench = bench_step.Bench(root, "fused")
    return bench.per_run_cost(bench_step.SETS["fig2_5seeds"], 2, wide=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=None, help="the first N seeds only (default: the config's)")
    parser.add_argument("--figures", default=None, help="comma-separated figures only (default: every figure)")
    parser.add_argument("--tflops", type=float, default=50.0, help="the GPU's rate R (default: %(default)s)")
    parser.add_argument("--launch-us", type=float, default=5.0, help="a kernel launch L (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=32, help="a shortened set's longest trajectory (default: 32)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    bench_step.take_cuda_branches()
    rate, launch = args.tflops * 1e12, args.launch_us * 1e-6
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as quiet:
        root = Path(tmp)
        cfg = gpu.paper_config(False, None if args.seeds is None else range(args.seeds))
        if args.figures:
            unknown = sorted(set(args.figures.split(",")) - set(cfg["figures"]))
            if unknown:
                parser.error(f"--figures: unknown {', '.join(unknown)}; allowed: {', '.join(cfg['figures'])}")
            cfg["figures"] = {name: cfg["figures"][name] for name in args.figures.split(",")}
        batches, teacher_sets = gpu.plan(cfg, root / "plan", None)
        memory = cfg["batch"]["memory_mb"]
        sets = []
        for job in batches.values():
            sheet_runs = [SheetRun(r["run_key"], Path(r["run_dir"]), r["rc"]) for r in job["runs"]]
            for lockstep in grouping.lockstep_sets(grouping.plan_stacks(sheet_runs, memory), memory):
                sets.append((job["dataset"], lockstep))
        runs = sum(len(job["runs"]) for job in batches.values())
        teachers = sum(len(t["teachers"]) for t in teacher_sets.values()) if teacher_sets else 0
        print(f"plan: {len(batches)} batch jobs, {len(sets)} lockstep sets, {runs} runs; {len(teacher_sets)} "
              f"teacher jobs, {teachers} teachers", flush=True)
        with contextlib.redirect_stdout(quiet):
            prepare_ms, finish_ms, prepare_ops, finish_ops = per_run_host_ms(root / "per_run")
        run_s = max((prepare_ms + finish_ms) / 1e3, (prepare_ops + finish_ops) * launch)
        print(f"per_run_host_ms {prepare_ms + finish_ms:.2f} (prepare {prepare_ms:.2f} + finish {finish_ms:.2f} at "
              f"tiny widths; kernel ops {prepare_ops:.0f} + {finish_ops:.0f})", flush=True)
        copies = TinyCopies(root / "tiny", [run for _, lockstep in sets for stack in lockstep for run in stack],
                            args.steps)
        sets_s = flop_bound = 0.0
        for index, (dataset, lockstep) in enumerate(sets):
            flops = sum(cost.stack_flops(stack, dataset) for stack in lockstep)
            with contextlib.redirect_stdout(quiet):
                launches, divide = copies.launches(lockstep)
            steps = max(grouping.trajectory_steps(run) for stack in lockstep for run in stack)
            seconds = max(flops / rate, launches * launch)
            sets_s += seconds
            flop_bound += flops / rate
            members = sum(len(stack) for stack in lockstep)
            print(f"set {index}: {members} runs, {steps} steps, {flops / 1e12:.1f} TFLOP ({flops / rate:.1f} s), "
                  f"{launches:.0f} launches ({launches * launch:.1f} s; counted over {steps // divide or 1} steps "
                  f"x {divide}), {launches / steps:.0f} a step", flush=True)
        teacher_flops = sum(t["flops"] for t in teacher_sets.values())
        teacher_host = sum(copies.teacher_s) / max(1, len(copies.teacher_s))
        teachers_s = teacher_flops / rate + teachers * teacher_host
        total = sets_s + runs * run_s + teachers_s
        print(f"paper_model_min {total / 60:.2f} (sets {sets_s / 60:.2f} min, of which FLOPs alone "
              f"{flop_bound / 60:.2f}; runs {runs} x {run_s * 1e3:.2f} ms = {runs * run_s / 60:.2f} min; teachers "
              f"{teacher_flops / 1e12:.0f} TFLOP + {teachers} x {teacher_host * 1e3:.1f} ms host = "
              f"{teachers_s / 60:.2f} min; R {args.tflops:g} TFLOP/s, L {args.launch_us:g} us; modelled on a CPU "
              f"in {time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()

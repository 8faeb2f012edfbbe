"""What one lockstep distillation step costs in kernel ops and host time, and what preparing and finishing a
run costs, on the CPU (1 thread). Tiny widths make a step's time the host's (dispatch) time rather than
arithmetic; the per-run lines use the paper's width 256.

    python bench/bench_step.py                  # the fused path on the CUDA branches (as a GPU job runs)
    python bench/bench_step.py --branches cpu   # the fused path as a CPU job runs it
    python bench/bench_step.py --mode on        # stacked layers as before; --mode off: per-run arithmetic

prints one line per measure:

    ops_per_step k64_one_width N      64 students of 64 seeds, one aux width (m 10)
    ops_per_step fig2_5seeds N        fig2's 36 runs per seed (m in 3..250 x its six student inits), 5 seeds
    host_ms_per_step k64_one_width X  wall time of a step of the first set
    finish_ms_per_run X               finish_student per run (evaluations, records) of fig2's runs of 5 seeds
    prepare_ms_per_run_w256 X         prepare_student per run, fig2's runs of 5 seeds at hidden widths 256,256
    finish_ms_per_run_w256 X          finish_student per run, the same runs
    prepare_ops_per_run_w256 N        kernel ops of prepare_student per run, the same runs
    finish_ops_per_run_w256 N         kernel ops of finish_student per run, the same runs (a GPU launches
                                      each: at ~5 microseconds a launch, ops x 5 us is a run's device-side floor)

The CUDA branches (``--branches cuda``, the default) are the code paths that a CUDA device takes and a CPU can
run: each stream draws its noise once per step (noise_period 1; a CPU bank draws up to 64 steps at once) and
the stacked optimizer is torch's fused Adam (a CPU job uses ForeachAdam, a lone run's arithmetic).

Kernel ops are operator calls that do work, counted by sublearn.opcount.OpCounter (views and metadata calls
excluded). A steady-state step is measured as the difference of two whole distillations of A and A + B
steps divided by B (both multiples of the noise period, so a fused set's noise draws are averaged in):
set-up, the last epoch's report and the finish of the runs cancel. Every run gets a teacher trained on a
small synthetic MNIST (its weights do not change the counts). The per-run lines are a job's: its runs share
one SharedEvaluations (layers drawn once, evaluations of equal bodies computed once). They use the bench's
small evaluation sizes with the paper's batch counts (a 512-image test split in 10 batches, 10 x 8 noise
images), so that they count the kernel ops of the paper's evaluations and measure a run's fixed work
rather than the evaluation forwards, whose arithmetic grows with the evaluation sizes (config.yaml's 10,000
test images and 10 x 1,000 noise images are ~11 GFLOP a run at width 256: about 0.2 ms on a GPU, 0.1-0.2 s
on one CPU thread). What remains at width 256 on a CPU includes the layer comparisons' arithmetic (norms
and cosines of ~270k weights, four comparisons), which a GPU does in microseconds.
``--names`` prints the ops of a step by name.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from sublearn.cli import resolve_argv
from sublearn.data import ensure_cache, load
from sublearn.evaluation import SharedEvaluations
from sublearn.fused import noise_period
from sublearn.opcount import OpCounter
from sublearn.student import distill_stack, evaluate_finished, evaluate_prepared, finish_student, prepare_student
from sublearn.teacher import train_teacher_stage

NOISE_BSIZE = 4
# the paper's evaluation batch counts (config.yaml: 10,000 test images in batches of 1,024, 10 noise batches)
# at small sizes: 10 batches of the 512-image test split, 10 x 8 noise images
TINY = ["--teacher-hidden-dims", "8,8", "--student-hidden-dims", "8,8", "--noise-bsize", str(NOISE_BSIZE),
        "--teacher-epochs", "1", "--student-epochs", "1", "--data-bsize", "52", "--eval-noise-batches", "10",
        "--eval-noise-bsize", "8"]
FIG2_INITS = ["A,A,A,A", "random,A,A,A", "A,random,A,A", "random,random,A,A", "A,A,random,A", "A,A,A,random"]
SETS = {
    "k64_one_width": [(seed, ["--m", "10"]) for seed in range(64)],
    "fig2_5seeds": [(seed, ["--m", str(m), "--student-init", init, "--teacher-init", "A,A,A,A"])
                    for seed in range(5) for m in (3, 10, 25, 50, 100, 250) for init in FIG2_INITS],
}
MODES = {"fused": "fused", "on": True, "off": False}
WIDE = ["--teacher-hidden-dims", "256,256", "--student-hidden-dims", "256,256"]


def take_cuda_branches() -> None:
    """Make the fused path take the branches that it takes on a CUDA device, where a CPU can run them."""
    import sublearn.fused as fused

    fused.noise_period = lambda step_bytes, steps, device: 1
    fused.stacked_adam = lambda params, lr, device: torch.optim.Adam(params, lr=lr, fused=True)


class Bench:
    def __init__(self, root: Path, mode: str):
        from sublearn.idx import write_synthetic_dataset

        write_synthetic_dataset(root / "data", "mnist", n_train=256, n_test=512, seed=1)
        self.root, self.mode, self.device = root, mode, torch.device("cpu")
        cache, _ = ensure_cache("mnist", "balanced", str(root / "data"), str(root / "cache"))
        self.full = load(cache, "mnist", "balanced", None, self.device)
        self.test = load(cache, "mnist", "balanced", None, self.device, with_train=False)
        self.teachers: dict[str, dict] = {}

    def configs(self, specs: list[tuple[int, list[str]]], steps: int, wide: bool = False) -> list:
        rcs = [resolve_argv(["--data-dir", str(self.root / "data"), "--cache-dir", str(self.root / "cache"),
                             "--device", "cpu", "--seed", str(seed), *TINY, "--noise-steps", str(steps), *extra,
                             *(WIDE if wide else [])]) for seed, extra in specs]
        for rc in rcs:
            if rc.teacher_key() not in self.teachers:
                self.teachers[rc.teacher_key()] = train_teacher_stage(rc, self.full, self.device)
        return rcs

    def prepare(self, rcs: list, shared: SharedEvaluations | None = None) -> list:
        """Prepared runs; with ``shared``, as a job prepares them (a fused job evaluates them together)."""
        together = shared is not None and self.mode == "fused"
        runs = [prepare_student(rc, self.test, self.device, self.teachers[rc.teacher_key()], shared=shared,
                                evaluate=not together) for rc in rcs]
        if together:
            evaluate_prepared(runs, lambda run: self.test, self.device, shared)
        return runs

    def runs(self, specs: list[tuple[int, list[str]]], steps: int, shared: SharedEvaluations | None = None):
        return self.prepare(self.configs(specs, steps), shared)

    def distill(self, runs, on_done=None) -> None:
        distill_stack(runs, self.device, on_done or (lambda *_: None), MODES[self.mode])

    def step_cost(self, specs, repeats: int) -> tuple[float, float, dict]:
        """(kernel ops per step, host ms per step, dispatcher calls and kernel ops by name per step)."""
        streams = len({seed for seed, _ in specs})
        period = noise_period(streams * NOISE_BSIZE * 784 * 4, 10**9, self.device) if self.mode == "fused" else 1
        short, extra = period * math.ceil(32 / period), period * math.ceil(64 / period)
        counters = []
        for steps in (short, short + extra):
            runs = self.runs(specs, steps)
            with OpCounter() as counter:
                self.distill(runs)
            counters.append(counter)
        times = {short: [], short + extra: []}
        for _ in range(repeats):
            for steps in times:
                runs = self.runs(specs, steps)
                started = time.perf_counter()
                self.distill(runs)
                times[steps].append(time.perf_counter() - started)
        ops = (counters[1].ops - counters[0].ops) / extra
        host_ms = (min(times[short + extra]) - min(times[short])) / extra * 1e3
        names = {k: (v - counters[0].names.get(k, 0)) / extra for k, v in counters[1].names.items()}
        detail = {"dispatcher calls": (counters[1].calls - counters[0].calls) / extra,
                  **{k: v for k, v in sorted(names.items(), key=lambda kv: -kv[1]) if v}}
        return ops, host_ms, detail

    def per_run_cost(self, specs, repeats: int, wide: bool = True) -> tuple[float, float, float, float]:
        """(ms of prepare_student, ms of finish_student, kernel ops of each) per run at width 256, as a job
        does them (one SharedEvaluations for all its runs); the fastest of ``repeats`` jobs, then one job
        counted (the counter's own dispatch would count in the times)."""
        rcs = self.configs(specs, 4, wide=wide)
        prepare, finish, ops = [], [], []
        for repeat in range(repeats + 1):
            counting = repeat == repeats
            shared = SharedEvaluations()
            with OpCounter() if counting else nullcontext() as counter:
                started = time.perf_counter()
                runs = self.prepare(rcs, shared)
                prepare.append((time.perf_counter() - started) / len(runs))
            ops += [counter.ops / len(runs)] if counting else []
            done: list = []
            self.distill(runs, lambda run, loss, seconds, done=done: done.append((run, loss, seconds)))
            with OpCounter() if counting else nullcontext() as counter:
                started = time.perf_counter()
                self.finish(done, shared)
                finish.append((time.perf_counter() - started) / len(done))
            ops += [counter.ops / len(done)] if counting else []
        return min(prepare[:-1]) * 1e3, min(finish[:-1]) * 1e3, ops[0], ops[1]

    def finish_cost(self, specs) -> float:
        """ms of finish_student per run, as a batch job finishes them (with the job's shared evaluations)."""
        shared = SharedEvaluations()
        runs = self.runs(specs, 4, shared)
        done = []
        self.distill(runs, lambda run, loss, seconds: done.append((run, loss, seconds)))
        started = time.perf_counter()
        self.finish(done, shared)
        return (time.perf_counter() - started) / len(done) * 1e3

    def finish(self, done: list, shared: SharedEvaluations) -> None:
        """Finish distilled runs as a batch job does: those reported at one step (here all) evaluated together
        where fused, then each finished."""
        evaluate_finished([run for run, _, _ in done], lambda run: self.test, self.device, shared)
        for run, loss, seconds in done:
            finish_student(run, self.test, self.device, loss, seconds, shared=shared)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=MODES, default="fused", help="the lockstep path (default: %(default)s)")
    parser.add_argument("--branches", choices=("cuda", "cpu"), default="cuda",
                        help="the fused path's device branches (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per distillation, the fastest kept")
    parser.add_argument("--names", action="store_true", help="also print a step's kernel ops by name")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.branches == "cuda":
        take_cuda_branches()
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), args.mode)
        log = sys.stdout
        sys.stdout = open("/dev/null", "w")  # noqa: SIM115 - the runner's progress lines
        try:
            ops_k64, host_k64, detail_k64 = bench.step_cost(SETS["k64_one_width"], args.repeats)
            ops_fig2, _, detail_fig2 = bench.step_cost(SETS["fig2_5seeds"], 1)
            finish = bench.finish_cost(SETS["fig2_5seeds"])
            per_run = bench.per_run_cost(SETS["fig2_5seeds"], args.repeats)
            prepare_w256, finish_w256, prepare_ops_w256, finish_ops_w256 = per_run
        finally:
            sys.stdout.close()
            sys.stdout = log
    print(f"ops_per_step k64_one_width {ops_k64:g}")
    print(f"ops_per_step fig2_5seeds {ops_fig2:g}")
    print(f"host_ms_per_step k64_one_width {host_k64:.3f}")
    print(f"finish_ms_per_run {finish:.2f}")
    print(f"prepare_ms_per_run_w256 {prepare_w256:.2f}")
    print(f"finish_ms_per_run_w256 {finish_w256:.2f}")
    print(f"prepare_ops_per_run_w256 {prepare_ops_w256:.0f}")
    print(f"finish_ops_per_run_w256 {finish_ops_w256:.0f}")
    if args.names:
        for label, detail in (("k64_one_width", detail_k64), ("fig2_5seeds", detail_fig2)):
            print(f"{label} per step:", ", ".join(f"{k} {v:g}" for k, v in detail.items()))

if __name__ == "__main__":
    main()

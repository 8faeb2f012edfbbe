"""The paper on one GPU, measured in one short session: every figure is one line of OUT/gpu.log, written the
moment it is measured, so a session cut short still brings back what it got.

    PYTHONPATH=src python3 bench/gpu.py                                  # on the GPU machine (--out $OUT)
    PYTHONPATH=src python3 bench/gpu.py --device cpu --tiny --out DIR    # the same steps, tiny, < 1 min

It needs torch, numpy, pandas and pyyaml only: no Snakemake, no jsonschema, no network, no install. The
data are real MNIST where --data-dir holds MNIST/raw, else generated at MNIST's shapes (60,000 + 10,000
images; --tiny: 600 + 200). The lines, in order:

    device ...                                 the device, torch, CUDA
    teacher_set_step_ms X ...                  a step of 20 fig2 teachers side by side (stacked layers)
    step_ms fig4_tail X ...                    a step of fig4's m = 1 trajectories of 20 seeds, fused
    step_ms fig2_set X ...                     a step of fig2's 36 runs x 20 seeds, fused
    step_ms fig4_mxN_set X ...                 a step of fig4's m = 1 .. 1024 trajectories of 20 seeds, fused
    prepare_ms_per_run X / finish_ms_per_run X a run's set-up and finish in a job (fig2's runs)
    student_model step_ms = T0 + GFLOP / R     the fit of the three sets (a step's own FLOPs, no evaluation):
                                               a step's fixed time and the rate
    determinism identical|DIFFERS ...          one set distilled twice, every student compared bit for bit
    fig2_5seeds_s X ...                        fig2 for 5 seeds through `sublearn teachers` and `sublearn batch`
                                               on sheets made by the workflow's planner (profiles/gpu/gpu.yaml);
                                               stopped at --budget-s (default 480 s) from the start, and then
                                               the line says where
    paper_estimate_min X ...                   the paper's GPU plan: each lockstep set's steps x T0 plus its
                                               distillation's FLOPs at R, plus runs x (prepare + finish, which
                                               hold the evaluations), plus its teachers' FLOPs at the teacher
                                               set's rate

The estimate's plan is made before the determinism check (it takes ~40 s of host time), so that its line
comes even where the CLI run is stopped. A step's time is the difference of two distillations of A and A + B
steps over B (set-up, the last report and the runs' finishing cancel); on CUDA with a synchronize before each
clock read. --tiny runs the same code at tiny widths and sizes (2 seeds instead of 20, a few grid points, the
paper's plan for 1 seed) to prove the script where no GPU is; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))  # the planner (plain modules: numpy, pandas)

import jobs  # noqa: E402
import runs_table  # noqa: E402

from sublearn import cost, grouping  # noqa: E402
from sublearn.cli import resolve_argv  # noqa: E402
from sublearn.data import ensure_cache, load  # noqa: E402
from sublearn.device import select_device  # noqa: E402
from sublearn.evaluation import SharedEvaluations  # noqa: E402
from sublearn.fused import noise_period  # noqa: E402
from sublearn.sheets import SheetRun  # noqa: E402
from sublearn.student import (  # noqa: E402
    distill_stack,
    evaluate_finished,
    evaluate_prepared,
    finish_student,
    prepare_student,
)
from sublearn.teacher import finish_teacher, prepare_teacher, train_teachers  # noqa: E402

FIG2_INITS = ["A,A,A,A", "random,A,A,A", "A,random,A,A", "random,random,A,A", "A,A,random,A", "A,A,A,random"]
FIG2_M = [3, 10, 25, 50, 100, 250]
SIZES = {  # full: the paper's widths and batches; tiny: a CPU proof of the script (its numbers mean nothing)
    "full": {"seeds": 20, "flags": [], "n_train": 60000, "n_test": 10000, "steps": (16, 32), "mxn_m": 21,
             "fig2_m": FIG2_M, "fig2_inits": FIG2_INITS, "finish_seeds": 5, "paper_seeds": None},
    "tiny": {"seeds": 2, "n_train": 300, "n_test": 100, "steps": (2, 4), "mxn_m": 3, "fig2_m": FIG2_M[:2],
             "fig2_inits": FIG2_INITS[:2], "finish_seeds": 2, "paper_seeds": [0],
             "flags": ["--teacher-hidden-dims", "8,8", "--student-hidden-dims", "8,8", "--noise-bsize", "16",
                       "--data-bsize", "128", "--eval-noise-batches", "1", "--eval-noise-bsize", "32"]},
}


class Log:
    """OUT/gpu.log, one line per figure, written and flushed at once (and echoed)."""

    def __init__(self, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "gpu.log"
        self.path.write_text("")
        self.started = time.perf_counter()

    def __call__(self, line: str) -> None:
        line = f"{line} [t {time.perf_counter() - self.started:.0f} s]"
        with open(self.path, "a") as handle:
            handle.write(line + "\n")
        print(line, file=sys.__stdout__, flush=True)


class Bench:
    def __init__(self, args, log: Log):
        self.args, self.log, self.size = args, log, SIZES["tiny" if args.tiny else "full"]
        self.work = Path(args.out) / "work"
        self.device = select_device(args.device)
        data_dir = Path(args.data_dir) if args.data_dir else None
        if data_dir is None or args.tiny or not (data_dir / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
            from sublearn.idx import write_synthetic_dataset

            data_dir = self.work / "data"
            write_synthetic_dataset(data_dir, "mnist", n_train=self.size["n_train"], n_test=self.size["n_test"],
                                    seed=0)
        self.data_dir, self.cache_dir = data_dir, self.work / "cache"
        self.cache, self.identity = ensure_cache("mnist", "balanced", str(data_dir), str(self.cache_dir))
        self.full = load(self.cache, "mnist", "balanced", None, self.device)
        self.test = load(self.cache, "mnist", "balanced", None, self.device, with_train=False)
        self.checkpoints: dict[str, dict] = {}

    def sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def rc(self, seed: int, *extra: str):
        return resolve_argv(["--data-dir", str(self.data_dir), "--cache-dir", str(self.cache_dir), "--device",
                             str(self.device), "--seed", str(seed), "--teacher-init", "A,A,A,A",
                             *self.size["flags"], *extra])

    # teachers ---------------------------------------------------------------------------------------------
    def teachers(self, epochs: int) -> tuple[float, int, float]:
        """Train the seeds' teachers side by side for ``epochs``: (seconds, steps, FLOPs); their checkpoints
        (the first call's) serve the student sets."""
        rcs = [self.rc(seed, "--teacher-epochs", str(epochs)) for seed in range(self.size["seeds"])]
        runs = [prepare_teacher(rc, self.full, self.device) for rc in rcs]
        done = []
        started = self.sync()
        train_teachers(runs, self.device, done.append, lambda run, error: None, "on")
        seconds = self.sync() - started
        for run in done:
            self.checkpoints.setdefault(run.rc.config.seed, finish_teacher(run, self.device))
        steps = runs[0].steps_per_epoch * epochs
        return seconds, steps, sum(cost.teacher_flops(rc, "mnist") for rc in rcs)

    # student sets -----------------------------------------------------------------------------------------
    def specs(self, kind: str) -> list[tuple[int, list[str]]]:
        seeds = range(self.size["seeds"])
        if kind == "fig4_tail":
            return [(seed, ["--m", "1"]) for seed in seeds]
        if kind == "fig2_set":
            return [(seed, ["--m", str(m), "--student-init", init]) for seed in seeds for m in self.size["fig2_m"]
                    for init in self.size["fig2_inits"]]
        return [(seed, ["--m", str(round(math.sqrt(2) ** k))]) for seed in seeds for k in range(self.size["mxn_m"])]

    def prepared(self, specs, steps: int, shared=None) -> list:
        teacher_epochs = ["--teacher-epochs", "1", "--student-epochs", "1", "--noise-steps", str(steps)]
        runs = [prepare_student(self.rc(seed, *extra, *teacher_epochs), self.test, self.device,
                                self.checkpoints[seed], shared=shared, evaluate=shared is None)
                for seed, extra in specs]
        if shared is not None:  # as a fused job prepares them: evaluated together
            evaluate_prepared(runs, lambda run: self.test, self.device, shared)
        return runs

    def distill(self, runs, on_done=None) -> float:
        started = self.sync()
        distill_stack(runs, self.device, on_done or (lambda *_: None), "fused")
        return self.sync() - started

    def step(self, kind: str) -> tuple[float, float, int]:
        """(ms a step, FLOPs a step, students) of a set, as the difference of two distillations."""
        specs = self.specs(kind)
        streams = len({seed for seed, _ in specs})
        bsize = self.rc(0).config.noise_bsize
        period = noise_period(streams * bsize * 784 * 4, 10**9, self.device)
        short, extra = (period * math.ceil(n / period) for n in self.size["steps"])
        times, self.prepare_s = [], []
        for steps in (short, short + extra):
            started = self.sync()
            runs = self.prepared(specs, steps, SharedEvaluations())  # as a job prepares them
            self.prepare_s.append((self.sync() - started) / len(runs))
            times.append(self.distill(runs))
        seconds = times[1] - times[0]
        runs = [SheetRun(str(i), Path("."), self.rc(seed, *x)) for i, (seed, x) in enumerate(specs)]
        # a step's own FLOPs: the evaluations happen in prepare and finish (measured per run)
        flops = sum(cost.stack_flops(stack, "mnist", distillation_only=True, steps=1)
                    for stack in grouping.stacks(runs))
        return max(seconds, 0.0) / extra * 1e3, flops, len(specs)

    def finish(self) -> float:
        """ms of finish_student per run, as a job finishes them (shared evaluations), fig2's runs of 5 seeds."""
        shared = SharedEvaluations()
        runs = self.prepared([s for s in self.specs("fig2_set") if s[0] < self.size["finish_seeds"]], 2, shared)
        done = []
        self.distill(runs, lambda run, loss, seconds: done.append((run, loss, seconds)))
        started = self.sync()
        evaluate_finished([run for run, _, _ in done], lambda run: self.test, self.device, shared)  # as a job does
        for run, loss, seconds in done:
            finish_student(run, self.test, self.device, loss, seconds, shared=shared)
        return (self.sync() - started) / len(done) * 1e3

    def determinism(self) -> tuple[bool, int]:
        """One set (fig2's runs of two seeds) distilled twice from scratch: every student bit for bit."""
        specs = [s for s in self.specs("fig2_set") if s[0] < 2]
        weights = []
        for _ in range(2):
            runs = self.prepared(specs, self.size["steps"][0])
            self.distill(runs)
            weights.append([{k: v.detach().cpu().clone() for k, v in run.student.state_dict().items()}
                            for run in runs])
        same = all(torch.equal(a[k], b[k]) for a, b in zip(*weights, strict=True) for k in a)
        return same, len(specs)


def paper_config(tiny: bool, seeds=None) -> dict:
    """config/config.yaml under the GPU profile's settings (profiles/gpu/gpu.yaml), as the workflow merges."""
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for key, value in yaml.safe_load((REPO / "profiles" / "gpu" / "gpu.yaml").read_text()).items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    if seeds is not None:
        cfg["seeds"] = list(seeds)
        for figure in cfg["figures"].values():
            if figure:
                figure.pop("seeds", None)
    if tiny:
        flags = SIZES["tiny"]["flags"]
        cfg["defaults"].update({k.lstrip("-").replace("-", "_"): _typed(v)
                                for k, v in zip(flags[::2], flags[1::2], strict=True)})
        cfg["defaults"].update(teacher_epochs=1, student_epochs=1, noise_steps=4)
    return cfg


def _typed(text: str):
    try:
        return int(text)
    except ValueError:
        return text


def plan(cfg: dict, work: Path, identity: str | None):
    """The workflow's plan of a config: its batch jobs and teacher jobs (sheets, runs, lockstep steps)."""
    table = runs_table.runs_table(cfg, lambda dataset: str(work / "results" / dataset), lambda message: None)
    runs = runs_table.unique_runs(table)
    identities = {d: identity if d == "mnist" else None for d in {r["dataset"] for r in runs}}
    teacher_path = lambda dataset, key: str(work / "results" / dataset / "teachers" / key)  # noqa: E731
    batches = jobs.plan_batches(runs, cfg, identities, teacher_path)
    return batches, jobs.plan_teacher_sets(runs, batches, cfg, identities, teacher_path)


def fig2_through_the_cli(bench: Bench, log: Log, deadline: float) -> None:
    """fig2 for 5 seeds: the planner's sheets, then `sublearn teachers` and `sublearn batch` as the workflow
    runs them (one process each). A job still running at ``deadline`` (a perf_counter time) is stopped and
    the line says so, so that the script ends inside its budget."""
    cfg = paper_config(bench.args.tiny, seeds=range(5))
    cfg["figures"] = {"fig2": cfg["figures"]["fig2"]}
    if bench.args.tiny:  # 2 runs a seed: m 3, two student inits
        grid = cfg["figures"]["fig2"]["panels"][0]["grid"]
        grid["m"] = bench.size["fig2_m"][:1]
        labels = grid["student_init"]["labels"]
        grid["student_init"]["labels"] = dict(list(labels.items())[:2])
    work = bench.work / "fig2"
    batches, teacher_sets = plan(cfg, work, bench.identity)
    common = ["--device", str(bench.device), "--data-dir", str(bench.data_dir), "--cache-dir", str(bench.cache_dir),
              "--cache-only", "--threads", str(torch.get_num_threads())]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    seconds = {}
    for kind, sheets in (("teachers", teacher_sets), ("batch", batches)):
        seconds[kind] = 0.0
        for sheet in sheets.values():
            path = work / "sheets" / f"{sheet['id']}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(sheet["sheet"])
            extra = ["--teacher-dir", os.path.dirname(sheet["teachers"][0])] if kind == "batch" else []
            with open(work / f"{sheet['id']}.log", "w") as handle:
                started = time.perf_counter()
                try:
                    subprocess.run([sys.executable, "-m", "sublearn.cli", kind, "--sheet", str(path), *extra,
                                    *common], check=True, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                   timeout=max(deadline - started, 1.0))
                except subprocess.TimeoutExpired:
                    done = sum(seconds.values()) + time.perf_counter() - started
                    log(f"fig2_5seeds_s stopped at {done:.1f} s (the --budget-s deadline) in a {kind} job "
                        f"({sheet['id']}); its log: {work / (sheet['id'] + '.log')}")
                    return
                seconds[kind] += time.perf_counter() - started
    runs = sum(len(b["runs"]) for b in batches.values())
    steps = sum(b["lockstep_steps"] for b in batches.values())
    log(f"fig2_5seeds_s {sum(seconds.values()):.1f} (teachers {seconds['teachers']:.1f} s in {len(teacher_sets)} "
        f"jobs, batch {seconds['batch']:.1f} s in {len(batches)} jobs for {runs} runs and {steps} lockstep steps; "
        "process start and data loading included)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder of gpu.log (default: $OUT)")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"),
                        help="a folder holding MNIST/raw (default: ../shared/data); else generated MNIST")
    parser.add_argument("--tiny", action="store_true", help="tiny widths and sizes: proves the script on a CPU")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="seconds from the start by which the fig2 CLI run is stopped if still running, "
                             "so that the estimate line still comes (default: %(default)s, inside a 600 s call)")
    args = parser.parse_args(argv)
    if not args.out:
        parser.error("--out (or the environment variable OUT) is required")
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be a positive number of seconds, not {args.budget_s:g}")
    if args.threads:
        torch.set_num_threads(args.threads)
    log = Log(Path(args.out))
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # the runner's progress lines
        bench = Bench(args, log)
        cuda = f", CUDA {torch.version.cuda}, {torch.cuda.get_device_name(bench.device)}" \
            if bench.device.type == "cuda" else f", {torch.get_num_threads()} threads"
        log(f"device {bench.device}, torch {torch.__version__}{cuda}; data {bench.data_dir} "
            f"({bench.identity}); {'tiny' if args.tiny else 'full'} sizes, {bench.size['seeds']} seeds a set")

        one, steps_one, flops = bench.teachers(1)
        two, steps_two, _ = bench.teachers(2)
        teacher_ms = (two - one) / (steps_two - steps_one) * 1e3
        if teacher_ms <= 0:  # a difference lost in the timer's noise (tiny sizes): the longer run's mean step
            teacher_ms = two / steps_two * 1e3
        teacher_rate = flops / steps_one / (teacher_ms / 1e3) if teacher_ms > 0 else math.inf
        log(f"teacher_set_step_ms {teacher_ms:.3f} ({bench.size['seeds']} teachers stacked; "
            f"{teacher_rate / 1e12:.2f} TFLOP/s)")

        measured = {}
        for kind in ("fig4_tail", "fig2_set", "fig4_mxN_set"):
            ms, step_flops, students = bench.step(kind)
            measured[kind] = (ms, step_flops)
            if kind == "fig2_set":  # prepare_student of its runs, as a job prepares them
                prepare_ms = min(bench.prepare_s) * 1e3
            log(f"step_ms {kind} {ms:.3f} ({students} students, {step_flops / 1e9:.3g} GFLOP a step, "
                f"{step_flops / max(ms, 1e-9) / 1e9:.3g} TFLOP/s)")
        log(f"prepare_ms_per_run {prepare_ms:.2f} (fig2's runs, its set's preparation)")
        finish_ms = bench.finish()
        log(f"finish_ms_per_run {finish_ms:.2f} (fig2's runs of 5 seeds, as a job finishes them)")
        (t_small, f_small), (t_big, f_big) = sorted(measured.values(), key=lambda m: m[1])[::2]
        rate = (f_big - f_small) / max(t_big - t_small, 1e-9) * 1e3  # FLOP/s
        if rate <= 0 or not math.isfinite(rate):
            rate = f_big / (t_big / 1e3)
        t0 = max(t_small - f_small / rate * 1e3, 0.0)
        log(f"student_model step_ms = {t0:.3f} + GFLOP / {rate / 1e12:.3g} TFLOP/s (fit of the three sets)")

        # the paper's plan takes a while on the host (~40 s on a 2-core CPU): made now, so that its line comes
        # back even where the CLI run below has to be cut short
        estimate = paper_estimate(args.tiny, bench.work / "paper", t0, rate, prepare_ms + finish_ms, teacher_rate)

        same, students = bench.determinism()
        log(f"determinism {'identical' if same else 'DIFFERS'} ({students} students distilled twice, "
            "every weight compared bit for bit)")

        fig2_through_the_cli(bench, log, deadline=log.started + args.budget_s)
        log(estimate)


def paper_estimate(tiny: bool, work: Path, t0: float, rate: float, run_ms: float, teacher_rate: float) -> str:
    """The paper_estimate_min line: the GPU plan's lockstep sets (steps x T0 + their distillation's FLOPs at
    R), its runs x (prepare + finish, which hold the evaluations) and its teachers' FLOPs at the teacher set's
    rate."""
    batches, teacher_sets = plan(paper_config(tiny, SIZES["tiny"]["paper_seeds"] if tiny else None), work, None)
    memory = paper_config(tiny)["batch"]["memory_mb"]
    sets_s = runs = steps = 0
    set_flops = 0.0
    for job in batches.values():
        sheet_runs = [SheetRun(r["run_key"], Path(r["run_dir"]), r["rc"]) for r in job["runs"]]
        for lockstep in grouping.lockstep_sets(grouping.plan_stacks(sheet_runs, memory), memory):
            longest = max(grouping.trajectory_steps(r) for stack in lockstep for r in stack)
            flops = sum(cost.stack_flops(stack, job["dataset"], distillation_only=True) for stack in lockstep)
            sets_s += longest * t0 / 1e3 + flops / rate
            steps, set_flops = steps + longest, set_flops + flops
        runs += len(job["runs"])
    per_run_s = runs * run_ms / 1e3
    teacher_flops = sum(t["flops"] for t in teacher_sets.values())
    teachers_s = teacher_flops / teacher_rate
    total = (sets_s + per_run_s + teachers_s) / 60
    return (f"paper_estimate_min {total:.2f} (sets {sets_s / 60:.2f} min: {steps} lockstep steps x {t0:.3f} ms + "
            f"{set_flops / 1e12:.4g} TFLOP at {rate / 1e12:.3g} TFLOP/s; {runs} runs x {run_ms:.1f} ms = "
            f"{per_run_s / 60:.2f} min; teachers {teacher_flops / 1e12:.0f} TFLOP = {teachers_s / 60:.2f} min; "
            f"{len(batches)} batch and {len(teacher_sets)} teacher jobs"
            f"{'; tiny: the plan of 1 seed at tiny sizes' if tiny else ''})")


if __name__ == "__main__":
    main()

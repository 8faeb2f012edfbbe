"""The job driver of `sublearn batch` and `sublearn teachers`: many runs (or teachers) of a sheet in one
process, written one by one as each is done.

Lockstep: every run of one seed with the same noise settings consumes the same noise stream (its seed
depends on the base seed only), and a run with N steps per epoch and E epochs consumes its first N x E
batches. Runs that also share a trained teacher body (same teacher key, no teacher-body perturbation
after training) therefore distil side by side: one noise draw and one teacher-body forward per step,
then each member's own aux heads, loss, backward and Adam step, with exactly the arithmetic of a lone
run. A member leaves the stack when its steps are done and its folder is written at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import data as datasets
from .device import training_path
from .errors import Diverged
from .evaluation import SharedEvaluations
from .grouping import lockstep_sets
from .outputs import write_run_dir, write_teacher
from .sheets import SheetRun, SheetTeacher
from .stacked import uses_stacked_layers
from .student import distill_stack, evaluate_finished, evaluate_prepared, finish_student, prepare_student
from .teacher import check_trained_teacher, finish_teacher, load_checkpoint, prepare_teacher, train_teachers


def train_teacher_sheet(teachers: list[SheetTeacher], device, caches: dict[tuple, tuple[Path, str]], data_dir: str,
                        cache_dir: str, stack_layers: bool | str | None = None,
                        advance: Callable[[SheetTeacher], None] | None = None) -> None:
    """Train teachers in lockstep (``teacher.train_teachers``), each written as soon as it is done, exactly
    as `sublearn teacher --teacher-out` writes it. caches: (dataset, split) -> (prepared cache, identity);
    advance: called with each teacher when it is done (written or diverged)."""
    loaded: dict[tuple, Any] = {}
    runs, out_of, sheet_of = [], {}, {}
    for teacher in teachers:
        c = teacher.rc.config
        c.data_dir, c.cache_dir = str(data_dir), str(cache_dir)
        data_key = (c.dataset, c.emnist_split, c.class_count)
        if data_key not in loaded:
            loaded[data_key] = datasets.load(caches[(c.dataset, c.emnist_split)][0], *data_key, device)
        run = prepare_teacher(teacher.rc, loaded[data_key], device)
        out_of[id(run)] = teacher.out
        sheet_of[id(run)] = teacher
        runs.append(run)
    failures: list[str] = []

    def done(run) -> None:
        out = out_of[id(run)]
        checkpoint = finish_teacher(run, device)
        write_teacher(checkpoint, run.rc.config.to_dict(), out)
        print(f"[done] teacher {checkpoint['teacher_key']} seed {run.rc.config.seed} acc {run.init_acc:.4f}->"
              f"{checkpoint['metrics']['teacher_final_acc']:.4f} -> {out}", flush=True)
        run.model = None  # free its weights now
        if advance:
            advance(sheet_of[id(run)])

    def failed(run, error: Diverged) -> None:  # the others go on; the job fails at the end, naming it
        print(f"[failed] teacher {run.rc.teacher_key()}: {error}", flush=True)
        failures.append(f"teacher {run.rc.teacher_key()}: {error}")
        if advance:
            advance(sheet_of[id(run)])

    train_teachers(runs, device, done, failed, stack_layers)
    if failures:
        raise Diverged(f"{len(failures)} of {len(runs)} teachers diverged and were not written: " + "; ".join(failures))


def run_stacks(plan: list[list[SheetRun]], teachers: dict[str, Path], device, caches: dict[tuple, tuple[Path, str]],
               data_dir: str, cache_dir: str, stack_layers: bool | str | None = None,
               max_memory_mb: float | None = None,
               advance: Callable[[SheetRun], None] | None = None) -> list[list[list[SheetRun]]]:
    """Train every stack; write each run's folder as soon as the run is done. caches: (dataset, split) ->
    (prepared cache, data identity); stack_layers (default: on CUDA): see ``student.distill_stack``;
    with it, stacks train together in lockstep sets within max_memory_mb, else one after another;
    advance: called with each run when it is done (written or diverged). Returns the lockstep sets."""
    for run in (run for stack in plan for run in stack):  # the job's paths, named in messages and records
        run.rc.config.data_dir, run.rc.config.cache_dir = str(data_dir), str(cache_dir)
        run.rc.config.outdir = str(run.run_dir)
    for key in dict.fromkeys(stack[0].rc.teacher_key() for stack in plan):  # every teacher, before any training
        rc = next(stack[0].rc for stack in plan if stack[0].rc.teacher_key() == key)
        identity = caches[(rc.config.dataset, rc.config.emnist_split)][1]
        check_trained_teacher(teachers[key], rc, identity)
    sets = lockstep_sets(plan, max_memory_mb) if uses_stacked_layers(stack_layers, device) else [[s] for s in plan]
    loaded: dict[tuple, Any] = {}
    failures: list[str] = []
    batch_started = time.time()
    done_stacks = 0
    shared = SharedEvaluations()
    for lockstep in sets:
        data_of = {}
        for stack in lockstep:
            c0 = stack[0].rc.config
            data_key = (c0.dataset, c0.emnist_split, c0.class_count)
            if data_key not in loaded:
                cache = caches[(c0.dataset, c0.emnist_split)][0]
                loaded[data_key] = datasets.load(cache, *data_key, device, with_train=False)
            data_of[id(stack)] = loaded[data_key]
        checkpoints = {key: load_checkpoint(teachers[key], "--teacher-dir")
                       for key in dict.fromkeys(stack[0].rc.teacher_key() for stack in lockstep)}
        which = f"stack {done_stacks + 1}" if len(lockstep) == 1 else \
            f"stacks {done_stacks + 1}-{done_stacks + len(lockstep)}"
        print(f"[batch] {which}/{sum(map(len, sets))}: {sum(map(len, lockstep))} students in lockstep", flush=True)
        run_lockstep(lockstep, checkpoints, data_of, device, batch_started, failures, stack_layers, shared, advance)
        done_stacks += len(lockstep)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if failures:
        raise Diverged(f"{len(failures)} of {sum(map(len, plan))} runs diverged and were not written: "
                       + "; ".join(failures))
    return sets


def run_lockstep(lockstep: list[list[SheetRun]], checkpoints: dict[str, dict], data_of: dict[int, Any], device,
                 batch_started: float, failures: list[str],
                 stack_layers: bool | str | None = None, shared=None,
                 advance: Callable[[SheetRun], None] | None = None) -> None:
    """Prepare, distil (in lockstep) and finish the runs of some stacks; data_of: id(stack) -> its data;
    shared: the job's ``evaluation.SharedEvaluations``; advance: see ``run_stacks``."""
    run_of, stack_size, members = {}, {}, []
    # a fused set (float tolerance) evaluates its initial and final students together (student.evaluate_*)
    together = shared is not None and training_path(stack_layers, device) == "fused"
    for stack in lockstep:
        for run in stack:
            member = prepare_student(run.rc, data_of[id(stack)], device, checkpoints[run.rc.teacher_key()],
                                     shared=shared, evaluate=not together)
            run_of[id(member)] = (run, data_of[id(stack)])
            stack_size[id(member)] = len(stack)
            members.append(member)
    def data_of_member(member):
        return run_of[id(member)][1]

    if together:
        evaluate_prepared(members, data_of_member, device, shared)

    def done(member, last_loss: float, seconds: float) -> None:
        run, data = run_of[id(member)]
        # the set's size says in which company a run was computed: with stacked layers on a GPU its last
        # digits may depend on its stack-mates
        extra = {"batch_stack_size": stack_size[id(member)], "lockstep_set_size": len(members),
                 "batch_elapsed_seconds": time.time() - batch_started}
        try:
            result = finish_student(member, data, device, last_loss, seconds, extra, shared)
        except Diverged as exc:  # the other members go on; the job fails at the end, naming this run
            print(f"[failed] {run.id}: {exc}", flush=True)
            failures.append(f"run {run.id}: {exc}")
            member.student = member.teacher = None
            if advance:
                advance(run)
            return
        try:
            write_run_dir(run.run_dir, result)
        except OSError as exc:  # name the run beside the file
            raise OSError(exc.errno, f"{exc.strerror} (run {run.id})", exc.filename) from exc
        row = result.run_row
        print(f"[done] {run.id} m {row['m']} N {row['noise_steps']} student acc "
              f"{row['student_init_acc']:.4f}->{row['student_final_acc']:.4f} -> {run.run_dir}", flush=True)
        member.student = member.teacher = None  # free its weights now (a stream keeps its body)
        if advance:
            advance(run)

    evaluate_together = None if not together else \
        (lambda runs: evaluate_finished(runs, data_of_member, device, shared))
    distill_stack(members, device, done, stack_layers, evaluate_together)

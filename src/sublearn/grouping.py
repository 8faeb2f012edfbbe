"""How runs are grouped: stacks (runs that share a noise stream and a teacher body), stacks split to fit a
memory budget, lockstep sets (stacks distilled together), and the cut of many runs into jobs that the
workflow plans. The one place to change how runs are grouped into jobs. Torch-free.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .catalog import dataset_key
from .cost import JobCost, estimated_seconds, follower_memory_mb, memory_mb, run_flops, stack_flops
from .plan import ResolvedConfig

T = TypeVar("T")


def group_by(items: Iterable[T], key: Callable[[T], Any]) -> list[list[T]]:
    """Items of equal keys together, groups and their items in order of first appearance; an item whose key
    is None is a group of its own. The one grouping loop of the runner: stacks, trajectories, training units,
    noise banks and lockstep teachers are all grouped by it."""
    groups: dict[Any, list[T]] = {}
    for item in items:
        value = key(item)
        groups.setdefault(("alone", id(item)) if value is None else ("key", value), []).append(item)
    return list(groups.values())


@dataclass
class PlannedRun:
    """A run as grouping sees it: its identity, settings, dataset key and a group it must not leave (the
    workflow's: the figures that request it and its dataset)."""

    id: str
    rc: ResolvedConfig
    dataset: str
    group: Any = None
    run_dir: Path | None = None


def stacks(runs: list[Any]) -> list[list[Any]]:
    """Runs (with ``.rc``) grouped by stack key; within a stack, the runs of one trajectory (equal trajectory
    keys) side by side, so that a split stack keeps them together where it can."""
    first = {}
    for index, run in enumerate(runs):
        first.setdefault(run.rc.trajectory_key(), index)
    return [sorted(group, key=lambda r: first[r.rc.trajectory_key()])
            for group in group_by(runs, lambda r: r.rc.stack_key())]


def plan_stacks(runs: list[Any], max_memory_mb: float | None = None) -> list[list[Any]]:
    """Stacks, each split (in order) so that its members' estimated memory fits the budget."""
    out = []
    for stack in stacks(runs):
        part, used = [], 0.0
        for run in stack:
            need = memory_mb(run.rc)
            if part and max_memory_mb is not None and used + need > max_memory_mb:
                out.append(part)
                part, used = [], 0.0
            part.append(run)
            used += need
        out.append(part)
    return out


def lockstep_sets(plan: list[list[Any]], max_memory_mb: float | None = None) -> list[list[list[Any]]]:
    """Consecutive stacks distilled together while their students' estimated memory (``set_memory_mb``) fits
    the budget (all of them without one): with stacked layers, students of equal shape from several stacks
    (seeds, say) share one batched matmul per layer and step. A GPU plan orders a job's runs by trajectory
    length (``cut_into_jobs``), so that its sets hold trajectories of similar length."""
    sets: list[list[list[Any]]] = []
    used = 0.0
    for stack in plan:
        need = set_memory_mb([stack])
        if not sets or (max_memory_mb is not None and used + need > max_memory_mb):
            sets.append([])
            used = 0.0
        sets[-1].append(stack)
        used += need
    return sets


def set_memory_mb(lockstep: list[list[Any]]) -> float:
    """Estimated memory of a lockstep set's students (``lockstep_sets`` fills sets up to a budget of it)."""
    return sum(trajectory_memory_mb(part) for stack in lockstep for part in trajectory_groups(stack))


def trajectory_memory_mb(part: list[Any]) -> float:
    """Estimated memory of a trajectory's runs distilling: its longest run trains, the others follow."""
    leader = max(part, key=trajectory_steps)
    return memory_mb(leader.rc) + sum(follower_memory_mb(r.rc) for r in part if r is not leader)


def trajectory_groups(stack: list[Any]) -> list[list[Any]]:
    """A stack's runs by trajectory key, in order of first appearance."""
    return group_by(stack, lambda r: r.rc.trajectory_key())


def trajectory_steps(run: Any) -> int:
    return run.rc.config.noise_steps * run.rc.config.student_epochs


def lockstep_steps(sets: list[list[list[Any]]]) -> int:
    """Steps a job's lockstep sets take one after another: each set as many as its longest trajectory."""
    return sum(max(trajectory_steps(run) for stack in lockstep for run in stack) for lockstep in sets)


def cut_into_jobs(runs: list[PlannedRun], max_flops: float, max_runs: int, cores: int = 1,
                  longest_first: bool = False) -> list[list[PlannedRun]]:
    """Runs -> jobs of at most ``max_flops`` estimated FLOPs and ``max_runs`` runs, each within one group.

    Runs of a stack sit together, stacks of equal student shapes (one per seed, say) next to each other
    (a GPU job's lockstep sets stack their layers), and within a stack the runs of one trajectory
    (differing only in N and E or the student's class head) together, longest first: the others take its
    weights along the way and cost only their evaluation. A stack that fits in a job is never split: a job
    of whole stacks shares every noise draw and teacher pass, and equal stacks (fig2's seeds) make equal
    jobs, which share the cores evenly to the end. The cut depends only on the runs given, so a job's
    runs (and name) do not change while other jobs finish.

    ``cores`` > 1 (a local run's --cores): each group is cut into a multiple of ``cores`` jobs of
    near-equal cost (stacks split where that needs it), so that no core idles while the last job
    finishes. ``longest_first`` (a GPU plan): the longest trajectories first, whatever their stacks, and
    stacks cut where the budget falls (a stack's long and short trajectories may go to different jobs), so
    that the long ones of every seed share a job and a lockstep set (fig4's m = 1 tail), and a job's sets
    hold trajectories of similar length and take fewer steps in all."""
    stack_of = {r.id: r.rc.stack_key() for r in runs}
    trajectory_of = {r.id: r.rc.trajectory_key() for r in runs}
    cost_of = {r.id: run_flops(r.rc, r.dataset) for r in runs}
    shape_of: dict[str, str] = {}
    longest: dict[tuple, int] = {}  # (stack, trajectory) -> its steps
    for r in runs:
        shape = json.dumps(r.rc.student.arch_description(), sort_keys=True)
        shape_of[stack_of[r.id]] = min(shape_of.get(stack_of[r.id], shape), shape)
        where = (stack_of[r.id], trajectory_of[r.id])
        longest[where] = max(longest.get(where, 0), trajectory_steps(r))

    def order(r: PlannedRun) -> tuple:
        stack = stack_of[r.id]
        first = (-longest[(stack, trajectory_of[r.id])],) if longest_first else ()
        return (r.group, *first, shape_of[stack], stack, trajectory_of[r.id], -cost_of[r.id]["student"], r.id)

    ordered = sorted(runs, key=order)
    members: dict[tuple, list[PlannedRun]] = {}
    for run in ordered:
        members.setdefault((run.group, stack_of[run.id]), []).append(run)
    whole = {where: stack_flops(group, group[0].dataset) for where, group in members.items()}

    def cut(group_runs: list[PlannedRun], budget: float, keep_stacks: bool) -> list[list[PlannedRun]]:
        jobs: list[list[PlannedRun]] = []
        current: list[PlannedRun] = []
        tally = JobCost()
        for run in group_runs:
            stack, trajectory, head = stack_of[run.id], trajectory_of[run.id], run.rc.teacher_head_key()
            cost = cost_of[run.id]
            extra = tally.added(cost, stack, trajectory, head)
            new_stack = not current or stack_of[current[-1].id] != stack
            needed = max(extra, whole[(run.group, stack)]) if new_stack and keep_stacks else extra
            if current and (len(current) >= max_runs or tally.flops + needed > budget):
                jobs.append(current)
                current = []
                tally.restart()
                extra = tally.added(cost, stack, trajectory, head)
            current.append(run)
            tally.add(cost, stack, trajectory, head, extra)
        return [*jobs, current] if current else jobs

    def tallied(job: list[PlannedRun]) -> list[float]:
        """A job's estimated FLOPs after each of its runs."""
        tally, out = JobCost(), []
        for run in job:
            where = (stack_of[run.id], trajectory_of[run.id], run.rc.teacher_head_key())
            tally.add(cost_of[run.id], *where, tally.added(cost_of[run.id], *where))
            out.append(tally.flops)
        return out

    def halved(job: list[PlannedRun]) -> list[list[PlannedRun]]:
        """A job of two runs or more in two, cut where its estimated FLOPs are nearest half."""
        flops = tallied(job)
        at = min(range(1, len(job)), key=lambda i: abs(flops[i - 1] - flops[-1] / 2))
        return [job[:at], job[at:]]

    out: list[list[PlannedRun]] = []
    for group in dict.fromkeys(run.group for run in ordered):
        group_runs = [run for run in ordered if run.group == group]
        jobs = cut(group_runs, max_flops, keep_stacks=not longest_first)
        if cores > 1:  # the smallest budget that cuts the group into a multiple of the cores in jobs
            count = math.ceil(max(len(jobs), cores) / cores) * cores
            low, high = sum(f for (g, _), f in whole.items() if g == group) / count, max_flops
            if len(cut(group_runs, high, keep_stacks=False)) <= count:
                for _ in range(40):
                    middle = (low + high) / 2
                    low, high = (low, middle) if len(cut(group_runs, middle, keep_stacks=False)) <= count \
                        else (middle, high)
                jobs = cut(group_runs, high, keep_stacks=False)
            while len(jobs) % cores and any(len(job) > 1 for job in jobs):  # the search can jump past it
                index = max((i for i, job in enumerate(jobs) if len(job) > 1), key=lambda i: tallied(jobs[i])[-1])
                jobs[index:index + 1] = halved(jobs[index])
        out.extend(jobs)
    return out


def print_plan(plan: list[list[Any]], gflops: float, device_type: str = "cpu") -> None:
    """`sublearn batch --plan`: each stack's runs, seed, teacher, noise, estimated FLOPs, memory and time (on a
    device of ``device_type``)."""
    total_flops = 0.0
    for index, stack in enumerate(plan):
        flops = stack_flops(stack, dataset_key(stack[0].rc.config.dataset, stack[0].rc.config.emnist_split))
        seconds = estimated_seconds(flops, gflops, len(stack), device_type, jobs=0)  # a part of the job
        total_flops += flops
        c = stack[0].rc.config
        print(f"[plan] stack {index}: {len(stack)} runs, seed {c.seed}, teacher {stack[0].rc.teacher_key()}, "
              f"noise {c.noise_dist} x {c.noise_bsize}, {flops / 1e12:.3f} TFLOP, "
              f"{max(memory_mb(r.rc) for r in stack) * len(stack):.0f} MB at most, ~{seconds:.0f} s", flush=True)
    runs = sum(map(len, plan))
    total_seconds = estimated_seconds(total_flops, gflops, runs, device_type)  # the whole job, its start included
    print(f"[plan] total {runs} runs, {len(plan)} stacks, {total_flops / 1e12:.3f} TFLOP, "
          f"~{total_seconds:.0f} s at {gflops:g} GFLOP/s", flush=True)

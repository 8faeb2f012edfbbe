"""The distillation engine: prepared students distilled in lockstep, whatever the strategy that trains them
(alone, stacked or fused: ``STRATEGIES``, chosen by ``device.training_path``, the planner's rule too). The
engine forms trajectories and noise streams, lets the strategy form its training units (units.py), and
steps, times, reports and finishes every unit the same way."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from .device import training_path
from .fused import bank_noise, fused_units
from .grouping import group_by
from .model import SplitHeadModel
from .seeding import derived_seed
from .units import Stream, Trajectory, Unit, alone_units, stacked_units

# training path (device.TRAINING_PATHS) -> (trajectories, streams, device) -> (units, noise banks)
STRATEGIES = {"alone": alone_units, "stacked": stacked_units, "fused": fused_units}


def distill_stack(runs: list, device: torch.device, on_done: Callable[[object, float, float], None],
                  stack_layers: bool | str | None = None,
                  on_step_done: Callable[[list], None] | None = None) -> None:
    """Distil prepared students (student.StudentRun) in lockstep: one stack (runs that share a teacher body
    and a noise stream) or several (a stack per seed, say), one run alone being the smallest case.

    Every run of one seed and noise setting draws the same noise stream, and a run of N steps per epoch
    and E epochs consumes its first N x E batches: one noise draw and one teacher-body forward per step
    serve every student of a stack, and each does exactly the arithmetic of a lone run. Runs that differ
    only in N and E, or in the student's class head (equal trajectory keys), are one computation: the
    longest trains, and another one's student takes its weights after that run's own N x E steps.
    ``stack_layers`` (``device.training_path``): True trains trajectories of equal MLP shape as
    StackedStudents, across stacks too (bit for bit where batched matmuls are); "fused" (the default on
    CUDA) trains those whose teachers are MLPs of equal shape as FusedStudents (float tolerance), the rest
    as with True, every stream's noise from a NoiseBank. ``on_done(run, last epoch's mean loss, seconds)``
    is called as soon as a run's steps are done: at the end of the step where they are, after
    ``on_step_done(the runs done at that step)`` (a batch job evaluates its fused ones together).
    """
    streams: dict[str, Stream] = {}
    pending = []
    for run in runs:
        c = run.rc.config
        run.student.train()
        run.teacher.eval()
        if c.noise_steps * c.student_epochs == 0:
            on_done(run, float("nan"), 0.0)
            continue
        key = run.rc.stack_key()
        if key not in streams:  # its teacher's body is every run's of the stack (same teacher key)
            generator = torch.Generator(device).manual_seed(derived_seed(c.seed, "student_training_noise"))
            streams[key] = Stream(c, generator, run.teacher)
        pending.append(run)
    active = []
    for members in group_by(pending, lambda run: (run.rc.stack_key(), run.rc.trajectory_key())):
        members = sorted(((r, r.rc.config.noise_steps * r.rc.config.student_epochs, r.rc.config.noise_steps)
                          for r in members), key=lambda member: member[1])
        leader, steps, per_epoch = members[-1]
        stream = streams[leader.rc.stack_key()]
        active.append(Trajectory(leader, steps, per_epoch, members[:-1], max(member[2] for member in members),
                                 stream, stream.head_of(leader.teacher)))
    units, banks = STRATEGIES[training_path(stack_layers, device)](active, list(streams.values()), device)
    for unit in units:
        for member in (member for d in unit.members for member in (d.run, *(f[0] for f in d.followers))):
            member.training_path = unit.path
    step = 0
    heads_in_use = _heads_in_use(units)
    while units:
        if banks:
            live = {id(d.stream) for unit in units for d in unit.members}
            for bank in banks:
                bank.advance(live)
        for stream in streams.values():
            if id(stream) in heads_in_use:  # a stream none of whose runs is left stops drawing
                stream.draw(device, heads_in_use[id(stream)], bank_noise(banks, stream))
        step += 1
        reports: list[tuple[object, float, float]] = []  # (run, last epoch's mean loss, seconds) done at this step
        for unit in units:
            started = time.perf_counter()
            unit.train_step(step)
            share = (time.perf_counter() - started) / len(unit.members)
            for d in unit.members:
                d.seconds += share
            record(unit, step, lambda *report, into=reports: into.append(report))
        finished = [unit for unit in units if step == unit.steps]
        if finished:
            for d in (d for unit in finished for d in unit.members):
                d.sync()
                d.stamp(d.run, step)
                reports.append((d.run, d.last, d.seconds))
            units = [unit for unit in units if step < unit.steps]
            heads_in_use = _heads_in_use(units)
        if reports and on_step_done is not None:
            on_step_done([report[0] for report in reports])
        for report in reports:
            on_done(*report)


def _heads_in_use(units: list[Unit]) -> dict[int, set[int]]:
    """id(stream) -> the indices of its teacher aux heads that the units still training read."""
    heads: dict[int, set[int]] = {}
    for d in (d for unit in units if unit.reads_targets for d in unit.members):
        heads.setdefault(id(d.stream), set()).add(d.head)
    return heads


def record(unit: Unit, step: int, on_done: Callable[[object, float, float], None]) -> None:
    """A unit's members' epochs and finished followers at this step: its loss ring on the host (one copy)
    only at a step where a member ends an epoch or a follower's steps are done."""
    due = [d for d in unit.members if step % d.per_epoch == 0 or (d.followers and d.followers[0][1] == step)]
    if not due:
        return
    rows = unit.ring.tolist()
    keep = len(rows)
    for d in due:
        # summed as Python floats in step order, like the reference's running sum (training.epoch_mean)
        report_step(d, step, lambda count, k=d.index: sum(
            rows[(t - 1) % keep][k] for t in range(step - count + 1, step + 1)) / count, on_done)


def report_step(d: Trajectory, step: int, mean_of: Callable[[int], float],
                on_done: Callable[[object, float, float], None]) -> None:
    """Report a trajectory's epoch and finish its followers whose steps are done; ``mean_of(count)``: the
    mean loss of its latest ``count`` steps."""
    if step % d.per_epoch == 0:
        d.last = mean_of(d.per_epoch)
        c = d.run.rc.config
        print(f"[student] {d.run.run_id} epoch {step // d.per_epoch}/{c.student_epochs} aux MSE "
              f"{d.last:.8f}", flush=True)
    while d.followers and d.followers[0][1] == step:
        follower, _, per_epoch = d.followers.pop(0)
        d.sync()
        take_trajectory_weights(follower.student, d.run.student)
        d.stamp(follower, step)
        last = mean_of(per_epoch)
        print(f"[student] {follower.run_id}: the first {step} steps of {d.run.run_id}, last epoch aux MSE "
              f"{last:.8f}", flush=True)
        on_done(follower, last, d.seconds)


def take_trajectory_weights(follower: SplitHeadModel, leader: SplitHeadModel) -> None:
    """A follower's student after its steps: the leader's weights, but its own class head, which no
    distillation step changes and which may differ from the leader's (source or perturbation)."""
    with torch.no_grad():
        for (name, mine), theirs in zip(follower.named_parameters(), leader.parameters(), strict=True):
            if not name.startswith("class_head."):
                mine.copy_(theirs)

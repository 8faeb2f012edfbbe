"""The student stage: build and perturb a run's teacher and student from a trained teacher, distil students
in lockstep (one run alone being the smallest case), and finish each run: evaluations and records."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import torch
import torch.nn.functional as F

from .data import Dataset
from .device import training_path
from .errors import Diverged, UsageError
from .evaluation import SharedEvaluations, aux_mse_on_noise, evaluate_class, majority_rate
from .fused import FusedStudents, NoiseBank, bank_noise, fused_key, noise_banks
from .grouping import group_by
from .model import SplitHeadModel, build_model
from .noise import sample_noise
from .perturb import apply_perturbations
from .plan import ResolvedConfig
from .records import RunResult, base_row, config_record, environment, layer_metrics, run_row, snapshot
from .seeding import derived_seed, set_seed
from .stacked import StackedMLP, stacked_mlp_key
from .teacher import body_state, check_checkpoint
from .training import adam, epoch_mean


def check_student_finite(rc: ResolvedConfig, train_aux: float, final_aux: float) -> None:
    c = rc.config
    values = {"training aux MSE": train_aux} if c.student_epochs and c.noise_steps else {}
    if c.eval_noise_batches:
        values["final aux MSE"] = final_aux
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        raise Diverged(f"student distillation diverged: {', '.join(f'{k} {v}' for k, v in bad.items())} "
                       f"(student_lr {c.student_lr:g}); no result was written")


@dataclass
class StudentRun:
    """A student between its stages: built, perturbed and evaluated, ready to distil (alone or in a batch)."""

    rc: ResolvedConfig
    checkpoint: dict[str, Any]
    teacher: SplitHeadModel
    student: SplitHeadModel
    run_id: str
    timestamp: str
    started: float
    metrics: dict[str, float]
    snaps: dict[str, dict]
    perturb_rows: list[dict[str, Any]]
    init_acc: float
    init_loss: float
    init_aux: float
    teacher_in_process: bool = False
    training_path: str = "alone"  # how it was distilled (device.TRAINING_PATHS), set by distill_stack


@dataclass
class _Distilling:
    """One training trajectory of a lockstep distillation: the run that takes the most steps trains, and
    the runs of the same trajectory key (followers) take its weights when their own steps are done."""

    run: StudentRun
    optimizer: Any  # its own, or None in a StackedStudents or FusedStudents, whose optimizer steps all at once
    steps: int
    per_epoch: int
    followers: list[tuple[StudentRun, int, int]]  # (run, steps, steps per epoch), fewest steps first
    keep: int  # losses kept: the longest epoch of any member
    # the latest ``keep`` steps' losses, enough for any member's last epoch, in one ring buffer: kept as a list
    # of per-step scalars they pinned the allocator's heap between steps (a job grew ~4 MB per kept step)
    losses: torch.Tensor | None = None
    last: float = float("nan")
    seconds: float = 0.0
    stacked: StackedStudents | FusedStudents | None = None
    index: int = 0  # its place in ``stacked``
    stream: _Stream | None = None  # its stack's noise stream and teacher body
    head: int = 0  # its teacher's aux head among the stream's distinct ones (``_Stream.heads``)
    trajectory: object = field(default_factory=object)  # this training's identity, held by its students' stamps

    def stamp(self, run: StudentRun, steps: int) -> None:
        """The run's student is this trajectory after ``steps`` steps (all but its own class head)."""
        run.student.stamp({name: ("distilled", self.trajectory, steps, name)
                           for name in run.student.layer_names if name != "class_head"})

    def train_step(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = F.mse_loss(self.run.student.aux_logits(x), target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def sync(self) -> None:
        """Bring the run's own student up to date (a stacked member trains in the stack's tensors)."""
        if self.stacked is not None:
            self.stacked.write_back(self.index)


def stacking_key(d: _Distilling) -> tuple | None:
    """Trajectories with equal keys can train as one StackedStudents (see stacked_mlp_key)."""
    c = d.run.rc.config
    return stacked_mlp_key(d.run.rc.student, c.student_lr, d.steps, c.noise_bsize)


class StackedStudents(StackedMLP):
    """Distilling trajectories in one StackedMLP (their aux heads, seeds and noise streams may differ)."""

    def __init__(self, members: list[_Distilling], device: torch.device):
        super().__init__([d.run.student for d in members], "aux_head", members[0].run.rc.config.student_lr, device)
        self.members = members
        for index, d in enumerate(members):
            d.stacked, d.index = self, index


def stack_students(active: list[_Distilling], device: torch.device) -> list[list[_Distilling]]:
    """Trajectories in training units: stacks of equal stacking keys (two or more), the rest alone."""
    groups = group_by(active, stacking_key)
    for group in groups:
        if len(group) > 1:
            StackedStudents(group, device)
            print(f"[stack] {len(group)} students in stacked layers: {', '.join(d.run.run_id for d in group)}",
                  flush=True)
    return groups


@dataclass
class _Stream:
    """A stack's noise stream and teacher body: one noise draw and one body forward per step serve every
    student of the stack. Each stream draws from its own generator, so stacks of several seeds can step
    in lockstep."""

    config: Any
    generator: torch.Generator
    body: SplitHeadModel
    heads: list = field(default_factory=list)  # distinct teacher aux heads: each gives its target once
    x: torch.Tensor | None = None
    targets: dict = field(default_factory=dict)

    def draw(self, device: torch.device, heads_in_use: set[int], x: torch.Tensor | None = None) -> None:
        """This step's noise (``x``: drawn by a NoiseBank) and the teacher's targets on it."""
        c = self.config
        self.x = sample_noise(c.noise_bsize, c, device, self.generator) if x is None else x
        with torch.no_grad():
            features = self.body.features(self.x)
            self.targets = {i: self.heads[i](features) for i in sorted(heads_in_use)}

    def head_of(self, teacher: SplitHeadModel) -> int:
        """Its index of a teacher's aux head (equal m, initialisation and perturbations give equal heads)."""
        mine = teacher.aux_head
        for index, head in enumerate(self.heads):
            if torch.equal(head.weight, mine.weight) and torch.equal(head.bias, mine.bias):
                return index
        self.heads.append(mine)
        return len(self.heads) - 1


def distill_stack(runs: list[StudentRun], device: torch.device,
                  on_done: Callable[[StudentRun, float, float], None], stack_layers: bool | str | None = None) -> None:
    """Distil prepared students in lockstep: one stack (runs that share a teacher body and a noise
    stream) or several (a stack per seed, say), one run alone being the smallest case.

    Every run of one seed and noise setting draws the same noise stream, and a run of N steps per epoch
    and E epochs consumes its first N x E batches: one noise draw and one teacher-body forward per step
    serve every student of a stack, and each does exactly the arithmetic of a lone run. Runs that differ
    only in N and E, or in the student's class head (equal trajectory keys), are one computation: the
    longest trains, and another one's student takes its weights after that run's own N x E steps.
    ``stack_layers`` (``device.training_path``): True trains trajectories of equal MLP shape as
    StackedStudents, across stacks too (bit for bit where batched matmuls are); "fused" (the default on
    CUDA) trains those whose teachers are MLPs of equal shape as FusedStudents (float tolerance), the rest
    as with True, every stream's noise from a NoiseBank. ``on_done(run, last epoch's mean loss, seconds)``
    is called as soon as a run's steps are done.
    """
    streams: dict[str, _Stream] = {}
    pending = []
    for run in runs:
        c = run.rc.config
        run.student.train()
        run.teacher.eval()
        steps = c.noise_steps * c.student_epochs
        if steps == 0:
            on_done(run, float("nan"), 0.0)
            continue
        key = run.rc.stack_key()
        if key not in streams:  # its teacher's body is every run's of the stack (same teacher key)
            generator = torch.Generator(device).manual_seed(derived_seed(c.seed, "student_training_noise"))
            streams[key] = _Stream(c, generator, run.teacher)
        pending.append(run)
    active = []
    for members in group_by(pending, lambda run: (run.rc.stack_key(), run.rc.trajectory_key())):
        members = sorted(((r, r.rc.config.noise_steps * r.rc.config.student_epochs, r.rc.config.noise_steps)
                          for r in members), key=lambda member: member[1])
        leader, steps, per_epoch = members[-1]
        d = _Distilling(leader, None, steps, per_epoch, members[:-1], max(member[2] for member in members),
                        stream=streams[leader.rc.stack_key()])
        d.head = d.stream.head_of(leader.teacher)
        active.append(d)
    path = training_path(stack_layers, device)
    banks: list[NoiseBank] = []
    if path == "fused":
        units, banks = fuse_students(active, list(streams.values()), device)
    else:
        units = stack_students(active, device) if path == "stacked" else [[d] for d in active]
    for unit in units:
        taken = "fused" if isinstance(unit[0].stacked, FusedStudents) else "alone" if unit[0].stacked is None \
            else "stacked"
        for member in (member for d in unit for member in (d.run, *(f[0] for f in d.followers))):
            member.training_path = taken
        if unit[0].stacked is None:  # a stack's members share its optimizer
            params = [p for p in unit[0].run.student.parameters() if p.requires_grad]
            unit[0].optimizer = adam(params, unit[0].run.rc.config.student_lr, device)
    step = 0
    heads_in_use = _heads_in_use(units)
    while units:
        if banks:
            live = {id(d.stream) for unit in units for d in unit}
            for bank in banks:
                bank.advance(live)
        for stream in streams.values():
            if id(stream) in heads_in_use:  # a stream none of whose runs is left stops drawing
                stream.draw(device, heads_in_use[id(stream)], bank_noise(banks, stream))
        step += 1
        for unit in units:
            started = time.perf_counter()
            if isinstance(unit[0].stacked, FusedStudents):
                unit[0].stacked.train_step(step)
                share = (time.perf_counter() - started) / len(unit)
                for d in unit:
                    d.seconds += share
                record_fused(unit, step, on_done)
                continue
            if unit[0].stacked is None:
                d = unit[0]
                losses = [d.train_step(d.stream.x, d.stream.targets[d.head])]
            else:
                losses = unit[0].stacked.train_step([d.stream.x for d in unit], F.mse_loss,
                                                    [d.stream.targets[d.head] for d in unit])
            share = (time.perf_counter() - started) / len(unit)
            for d, loss in zip(unit, losses, strict=True):
                d.seconds += share
                record_step(d, step, loss, on_done)
        finished = [unit for unit in units if step == unit[0].steps]  # a unit's members take equal steps
        if finished:
            for d in (d for unit in finished for d in unit):
                d.sync()
                d.stamp(d.run, step)
                on_done(d.run, d.last, d.seconds)
            units = [unit for unit in units if step < unit[0].steps]
            heads_in_use = _heads_in_use(units)


def _heads_in_use(units: list[list[_Distilling]]) -> dict[int, set[int]]:
    """id(stream) -> the indices of its teacher aux heads that the units still training use (a
    FusedStudents computes its own)."""
    heads: dict[int, set[int]] = {}
    for d in (d for unit in units for d in unit if not isinstance(d.stacked, FusedStudents)):
        heads.setdefault(id(d.stream), set()).add(d.head)
    return heads


def fuse_students(active: list[_Distilling], streams: list[_Stream],
                  device: torch.device) -> tuple[list[list[_Distilling]], list[NoiseBank]]:
    """Trajectories in training units: FusedStudents of equal fused keys (two or more), the rest as
    ``stack_students`` makes them (CNN students alone, say); and the streams' NoiseBanks, one per noise
    batch size."""
    groups = group_by(active, fused_key)
    fused = [group for group in groups if len(group) > 1]
    units = fused + stack_students([d for group in groups if len(group) == 1 for d in group], device)
    banks = noise_banks(streams, max((unit[0].steps for unit in units), default=0), device)
    for unit in fused:
        FusedStudents(unit, next(b for b in banks if id(unit[0].stream) in b.row), device)
        print(f"[fused] {len(unit)} students fused: {', '.join(d.run.run_id for d in unit)}", flush=True)
    return units, banks


def record_fused(unit: list[_Distilling], step: int, on_done: Callable[[StudentRun, float, float], None]) -> None:
    """record_step for a FusedStudents, whose losses are in its ring buffer: one host copy at a step where a
    member ends an epoch or a follower's steps are done."""
    due = [d for d in unit if step % d.per_epoch == 0 or (d.followers and d.followers[0][1] == step)]
    if not due:
        return
    rows = unit[0].stacked.latest_losses()
    keep = len(rows)
    for d in due:
        report_step(d, step, lambda count, k=d.index: sum(
            rows[(t - 1) % keep][k] for t in range(step - count + 1, step + 1)) / count, on_done)


def record_step(d: _Distilling, step: int, loss: torch.Tensor,
                on_done: Callable[[StudentRun, float, float], None]) -> None:
    """Keep a trajectory's loss, report its epochs, and finish the followers whose steps are done."""
    if d.losses is None:
        d.losses = torch.empty(d.keep, dtype=loss.dtype, device=loss.device)
    d.losses[(step - 1) % d.keep] = loss
    report_step(d, step, lambda count: latest_mean(d, step, count), on_done)


def report_step(d: _Distilling, step: int, mean_of: Callable[[int], float],
                on_done: Callable[[StudentRun, float, float], None]) -> None:
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


def latest_mean(d: _Distilling, step: int, count: int) -> float:
    """epoch_mean of a trajectory's losses of steps step - count + 1 .. step (in the ring buffer)."""
    return epoch_mean(d.losses[torch.arange(step - count, step, device=d.losses.device) % d.keep])


def take_trajectory_weights(follower: SplitHeadModel, leader: SplitHeadModel) -> None:
    """A follower's student after its steps: the leader's weights, but its own class head, which no
    distillation step changes and which may differ from the leader's (source or perturbation)."""
    with torch.no_grad():
        for (name, mine), theirs in zip(follower.named_parameters(), leader.parameters(), strict=True):
            if not name.startswith("class_head."):
                mine.copy_(theirs)


def prepare_student(rc: ResolvedConfig, data: Dataset, device: torch.device, checkpoint: dict[str, Any],
                    teacher_in_process: bool = False, shared: SharedEvaluations | None = None) -> StudentRun:
    """Everything of a student run before distillation (steps 1-8 of the reference order); ``shared``:
    evaluations that the runs of a batch have in common."""
    c = rc.config
    started = time.time()
    run_id = uuid.uuid4().hex[:12]
    timestamp = datetime.now().isoformat(timespec="seconds")
    check_checkpoint(rc, checkpoint, data_identity=data.identity)
    set_seed(derived_seed(c.seed, "experiment_start"))
    inits = shared.inits if shared is not None else None
    teacher = build_model(rc.teacher, c.m, rc.num_classes, c.seed, device, inits)
    student = build_model(rc.student, c.m, rc.num_classes, c.seed, device, inits)
    models = {"teacher": teacher, "student": student}

    perturb_rows = apply_perturbations("before_teacher_training", rc, models, device, run_id)
    snaps = {"teacher_initial": snapshot(teacher)}
    initial_body = body_state(teacher.state_dict())
    if any(not torch.equal(initial_body[k], checkpoint["initial_body"][k]) for k in initial_body):
        raise UsageError("--teacher-checkpoint: its initial weights differ from this run's teacher; "
                         "it was trained by another version or with other settings")
    teacher.load_state_dict({k: v.to(device) for k, v in checkpoint["trained_body"].items()}, strict=False)
    if shared is not None:
        teacher.stamp(shared.trained_identities(checkpoint["trained_body"]))
    metrics = dict(checkpoint["metrics"])

    perturb_rows += apply_perturbations("after_teacher_training", rc, models, device, run_id)
    snaps["teacher_final"] = snapshot(teacher)
    if any(p["target"] == "teacher" and p["timing"] == "after_teacher_training" for p in rc.perturbations):
        metrics["teacher_final_acc"], metrics["teacher_final_class_loss"] = evaluate_class(
            teacher, data.test_x, data.test_y, c.data_bsize)

    perturb_rows += apply_perturbations("before_student_training", rc, models, device, run_id)
    snaps["student_initial"] = snapshot(student)
    init_acc, init_loss = evaluate_class(student, data.test_x, data.test_y, c.data_bsize, shared)
    init_aux = aux_mse_on_noise(student, teacher, rc, device, "student_initial", shared)
    print(f"[eval] student initial acc {init_acc:.6f} class CE {init_loss:.6f} aux MSE {init_aux:.8f}", flush=True)
    return StudentRun(rc, checkpoint, teacher, student, run_id, timestamp, started, metrics, snaps, perturb_rows,
                      init_acc, init_loss, init_aux, teacher_in_process)


def student_stage(rc: ResolvedConfig, data: Dataset, device: torch.device,
                  checkpoint: dict[str, Any], teacher_in_process: bool = False) -> RunResult:
    """Distil one student from a trained teacher (in memory or loaded from a checkpoint file)."""
    run = prepare_student(rc, data, device, checkpoint, teacher_in_process)
    distilled = {}
    distill_stack([run], device, lambda _, loss, seconds: distilled.update(loss=loss, seconds=seconds))
    return finish_student(run, data, device, distilled["loss"], distilled["seconds"])


def finish_student(run: StudentRun, data: Dataset, device: torch.device, train_aux: float,
                   distill_seconds: float, extra: dict[str, Any] | None = None,
                   shared: SharedEvaluations | None = None) -> RunResult:
    """Everything after distillation (steps 10-11): perturbations, evaluations, metrics and records."""
    rc, teacher, student, snaps = run.rc, run.teacher, run.student, run.snaps
    c = rc.config
    models = {"teacher": teacher, "student": student}
    perturb_rows = run.perturb_rows + apply_perturbations("after_student_training", rc, models, device, run.run_id)
    snaps["student_final"] = snapshot(student)
    final_acc, final_loss = evaluate_class(student, data.test_x, data.test_y, c.data_bsize, shared)
    final_aux = aux_mse_on_noise(student, teacher, rc, device, "student_final", shared)
    print(f"[eval] student final acc {final_acc:.6f} class CE {final_loss:.6f} aux MSE {final_aux:.8f}", flush=True)
    check_student_finite(rc, train_aux, final_aux)

    layer_rows = layer_metrics(teacher.layer_names, student.layer_names, snaps, base_row(c, run.run_id),
                               None if shared is None else shared.comparisons)
    for row in perturb_rows:
        row["run_id"] = run.run_id
    env = environment(device)
    runtime = time.time() - run.started
    final = {"student_final_acc": final_acc, "student_final_class_loss": final_loss,
             "student_final_aux_loss": final_aux, "student_train_aux_loss_last": train_aux,
             "test_majority_acc": majority_rate(data.test_y)}
    row = run_row(run, data.identity, env, final, layer_rows, runtime, distill_seconds, extra)
    return RunResult(row, layer_rows, perturb_rows, config_record(run, env),
                     {"student_stage": runtime, "distillation": distill_seconds})

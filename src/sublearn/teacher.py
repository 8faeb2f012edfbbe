"""The teacher stage: build, perturb and evaluate a teacher, train it (alone or several in lockstep, each on
its own data order), and its checkpoint: the format, its writer's content and the one loader."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .catalog import dataset_key
from .data import Dataset
from .errors import Diverged, UsageError
from .evaluation import evaluate_class
from .grouping import group_by
from .model import SplitHeadModel, build_model
from .perturb import apply_perturbations
from .plan import ResolvedConfig
from .records import environment
from .seeding import derived_seed, set_seed
from .stacked import StackedMLP, stacked_mlp_key, uses_stacked_layers
from .training import adam, epoch_mean

CHECKPOINT_FORMAT = 2  # 2: records the identity of the data it was trained on


def body_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items() if not k.startswith("aux_head.")}


@dataclass
class TeacherRun:
    """A teacher between its stages: built, perturbed and evaluated, then trained (alone or in lockstep)."""

    rc: ResolvedConfig
    data: Dataset
    model: SplitHeadModel
    started: float
    initial_body: dict[str, torch.Tensor]
    init_acc: float
    init_loss: float
    optimizer: Any = None  # its own, or None in a StackedMLP, whose optimizer steps every member at once
    generator: torch.Generator | None = None  # its data order (DataLoader shuffle)
    batches: tuple = ()  # this epoch's index batches
    losses: torch.Tensor | None = None  # this epoch's batch losses, in one tensor (as a unit's ring, units.Unit)
    epoch: int = 0  # epochs done
    step: int = 0  # steps done in this epoch
    last: float = float("nan")
    train_seconds: float = 0.0
    stacked: StackedMLP | None = None
    index: int = 0  # its place in ``stacked``
    failed: bool = False

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.data.train_x.shape[0] / self.rc.config.data_bsize)


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device | None = None):
    """Index batches in the order DataLoader(shuffle=True, generator=g) yields them for one epoch, on
    ``device``: the epoch's order is copied there once, not a batch at a time (on CUDA, a copy from pageable
    host memory waits for the device: one wait per teacher and step)."""
    torch.empty((), dtype=torch.int64).random_(generator=generator)  # the iterator's base seed
    order = torch.randperm(n, generator=generator)
    # RandomSampler then draws the (empty) remainder permutation once the epoch is exhausted
    torch.randperm(n, generator=generator)
    return (order if device is None else order.to(device)).split(batch_size)


def prepare_teacher(rc: ResolvedConfig, data: Dataset, device: torch.device) -> TeacherRun:
    """Build the teacher (reference order: seed, construction, perturbations), keep its initial body and
    evaluate it; then seed its training, make its optimizer and its data-order generator."""
    c = rc.config
    started = time.time()
    set_seed(derived_seed(c.seed, "experiment_start"))
    model = build_model(rc.teacher, c.m, rc.num_classes, c.seed, device)
    apply_perturbations("before_teacher_training", rc, {"teacher": model}, device, run_id="")
    initial_body = body_state(model.state_dict())
    init_acc, init_loss = evaluate_class(model, data.test_x, data.test_y, c.data_bsize)
    print(f"[eval] teacher initial acc {init_acc:.6f} class CE {init_loss:.6f}", flush=True)
    run = TeacherRun(rc, data, model, started, initial_body, init_acc, init_loss)
    set_seed(derived_seed(c.seed, "teacher_training"))  # training draws nothing from it; kept as the reference
    run.generator = torch.Generator()
    run.generator.manual_seed(derived_seed(c.seed, "dataloader_shuffle"))
    model.train()
    return run


def train_teachers(runs: list[TeacherRun], device: torch.device, on_done: Callable[[TeacherRun], None],
                   on_failed: Callable[[TeacherRun, Diverged], None], stack_layers: bool | str | None = None) -> None:
    """Train prepared teachers in lockstep, each on its own data order, with exactly a lone teacher's
    arithmetic; ``stack_layers`` (default: on CUDA only) trains MLP teachers of equal shape, learning rate,
    batch size, steps per epoch and epochs as one StackedMLP. ``on_done(run)`` is called as soon as a
    teacher's epochs are done; ``on_failed(run, error)`` when it diverges (the others go on)."""
    stacking = uses_stacked_layers(stack_layers, device)

    def stacking_key(run: TeacherRun) -> tuple | None:
        c = run.rc.config
        key = stacked_mlp_key(run.rc.teacher, c.teacher_lr, run.steps_per_epoch * c.teacher_epochs, c.data_bsize)
        # with equal batch sizes: equal batch shapes in every step
        return None if not stacking or key is None else (key, run.data.train_x.shape[0])

    units = group_by(runs, stacking_key)
    for unit in units:
        if len(unit) > 1:
            stacked = StackedMLP([r.model for r in unit], "class_head", unit[0].rc.config.teacher_lr, device)
            for index, run in enumerate(unit):
                run.stacked, run.index = stacked, index
            print(f"[stack] {len(unit)} teachers in stacked layers", flush=True)
        else:
            run = unit[0]
            run.optimizer = adam([p for p in run.model.parameters() if p.requires_grad], run.rc.config.teacher_lr,
                                 device)
    while units:
        for unit in units:
            _teacher_step(unit, device, on_done, on_failed)
        units = [unit for unit in units if unit[0].epoch < unit[0].rc.config.teacher_epochs
                 and not all(run.failed for run in unit)]


def _teacher_step(unit: list[TeacherRun], device: torch.device, on_done: Callable[[TeacherRun], None],
                  on_failed: Callable[[TeacherRun, Diverged], None]) -> None:
    """One training step of a unit (a lone teacher or a StackedMLP's members); at an epoch's end its losses,
    at the last epoch's end the finished teachers."""
    lead = unit[0]
    if lead.step == 0:
        for run in unit:
            run.batches = shuffled_batches(run.data.train_x.shape[0], run.rc.config.data_bsize, run.generator,
                                           device)
            run.losses = torch.empty(len(run.batches), device=device)
    started = time.perf_counter()
    indices = [run.batches[lead.step] for run in unit]
    xs = [run.data.train_x[index] for run, index in zip(unit, indices, strict=True)]
    ys = [run.data.train_y[index] for run, index in zip(unit, indices, strict=True)]
    if lead.stacked is None:
        lead.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(lead.model.class_logits(xs[0]), ys[0])
        loss.backward()
        lead.optimizer.step()
        losses = [loss.detach()]
    else:
        losses = lead.stacked.train_step(xs, F.cross_entropy, ys)
    share = (time.perf_counter() - started) / len(unit)
    for run, loss in zip(unit, losses, strict=True):
        run.losses[run.step] = loss
        run.train_seconds += share
        run.step += 1
    if lead.step < lead.steps_per_epoch:
        return
    for run in unit:
        run.step = 0
        run.epoch += 1
        if not run.failed:
            _end_teacher_epoch(run, on_failed)
    if lead.epoch == lead.rc.config.teacher_epochs:
        for run in unit:
            if not run.failed:
                if run.stacked is not None:
                    run.stacked.write_back(run.index)
                on_done(run)


def _end_teacher_epoch(run: TeacherRun, on_failed: Callable[[TeacherRun, Diverged], None]) -> None:
    c = run.rc.config
    run.last = epoch_mean(run.losses)
    print(f"[teacher] {run.rc.teacher_key()} epoch {run.epoch}/{c.teacher_epochs} class CE {run.last:.6f}", flush=True)
    if not math.isfinite(run.last):
        run.failed = True
        on_failed(run, Diverged(f"teacher training diverged: class cross-entropy {run.last} in epoch {run.epoch} "
                                f"(teacher_lr {c.teacher_lr:g}); no result was written"))


def finish_teacher(run: TeacherRun, device: torch.device) -> dict[str, Any]:
    """Evaluate a trained teacher; its checkpoint holds its body (every layer but aux_head) before and after."""
    rc, data, teacher = run.rc, run.data, run.model
    final_acc, final_loss = evaluate_class(teacher, data.test_x, data.test_y, rc.config.data_bsize)
    print(f"[eval] teacher final acc {final_acc:.6f} class CE {final_loss:.6f}", flush=True)
    return {
        "format": CHECKPOINT_FORMAT,
        "teacher_key": rc.teacher_key(),
        "teacher_settings": rc.teacher_settings(),
        "data_identity": data.identity,
        "initial_body": run.initial_body,
        "trained_body": body_state(teacher.state_dict()),
        "metrics": {
            "teacher_init_acc": run.init_acc, "teacher_init_class_loss": run.init_loss,
            "teacher_final_acc": final_acc, "teacher_final_class_loss": final_loss,
            "teacher_train_loss_last": run.last,
        },
        "train_size": int(data.train_x.shape[0]),
        "test_size": int(data.test_x.shape[0]),
        "runtime_seconds": time.time() - run.started,
        "train_seconds": run.train_seconds,
        "environment": environment(device),
        "timestamp": datetime.now().isoformat(timespec="seconds"),
    }


def train_teacher_stage(rc: ResolvedConfig, data: Dataset, device: torch.device) -> dict[str, Any]:
    """Train one teacher; its checkpoint (see finish_teacher)."""
    run = prepare_teacher(rc, data, device)

    def failed(_, error: Diverged) -> None:
        raise error

    train_teachers([run], device, lambda _: None, failed)
    return finish_teacher(run, device)


def check_checkpoint(rc: ResolvedConfig, checkpoint: dict[str, Any], flag: str = "--teacher-checkpoint",
                     data_identity: str | None = None) -> None:
    """Refuse a checkpoint of another teacher, or (given the run's data identity) of other data."""
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        older = f" (it is format {checkpoint['format']}: train it again)" \
            if isinstance(checkpoint, dict) and "format" in checkpoint else ""
        raise UsageError(f"{flag}: not a sublearn teacher checkpoint of format {CHECKPOINT_FORMAT}{older}")
    if checkpoint.get("teacher_key") != rc.teacher_key():
        theirs, ours = checkpoint.get("teacher_settings", {}), rc.teacher_settings()
        diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise UsageError(f"{flag}: the checkpoint's teacher differs from this run's in {', '.join(diff)}; "
                         "train a teacher with the same teacher settings")
    if data_identity is not None and checkpoint.get("data_identity") != data_identity:
        c = rc.config
        raise UsageError(f"{flag}: the teacher was trained on data {checkpoint.get('data_identity')}, but this run's "
                         f"{dataset_key(c.dataset, c.emnist_split)} data ({c.data_dir}) is {data_identity}; "
                         "train the teacher on this data")


def check_trained_teacher(path: str | Path, rc: ResolvedConfig, data_identity: str) -> None:
    """A teacher of a job's teacher folder, checked before any training: one that cannot be read or is not
    this run's (truncated, another seed's, other data) loses its .json summary, so that the next planning
    counts it as untrained and trains it again; the job stops, naming the damage once."""
    try:
        check_checkpoint(rc, load_checkpoint(path, "--teacher-dir", mmap=True), f"--teacher-dir: {path}",
                         data_identity)
    except UsageError as exc:
        summary = Path(path).with_suffix(".json")
        summary.unlink(missing_ok=True)
        raise UsageError(f"{exc}; removed its summary {summary}, so the next run of the workflow trains this "
                         "teacher again") from None


def load_checkpoint(path: str | Path, flag: str, mmap: bool = False) -> dict:
    """A teacher checkpoint; memory-mapped when only its settings are read (its weights stay on disk). Any
    unreadable file is one usage error naming the flag that led to it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise UsageError(f"{flag}: {path} is not a readable teacher checkpoint ({type(exc).__name__})") from None

"""What the distillation engine (distill.py) drives: noise streams, trajectories, and training units, the one
interface of its three strategies (device.TRAINING_PATHS): a trajectory alone and stacked layers here, fused
sets in fused.py. A strategy forms units from trajectories (``alone_units``, ``stacked_units``,
``fused.fused_units``); the engine steps every unit and reads its losses the same way whatever its path."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .grouping import group_by
from .model import SplitHeadModel
from .noise import sample_noise
from .stacked import StackedMLP, stacked_mlp_key
from .training import adam


@dataclass
class Stream:
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


@dataclass
class Trajectory:
    """One training trajectory of a lockstep distillation: the run that takes the most steps trains, and
    the runs of the same trajectory key (followers) take its weights when their own steps are done."""

    run: Any  # student.StudentRun
    steps: int
    per_epoch: int
    followers: list[tuple[Any, int, int]]  # (run, steps, steps per epoch), fewest steps first
    keep: int  # losses kept: the longest epoch of any member
    stream: Stream
    head: int = 0  # its teacher's aux head among the stream's distinct ones (``Stream.heads``)
    last: float = float("nan")
    seconds: float = 0.0
    unit: Unit | None = None  # the unit it trains in
    index: int = 0  # its column in the unit's loss ring (and its place in a stacked or fused unit's tensors)
    trajectory: object = field(default_factory=object)  # this training's identity, held by its students' stamps

    def stamp(self, run: Any, steps: int) -> None:
        """The run's student is this trajectory after ``steps`` steps (all but its own class head)."""
        run.student.stamp({name: ("distilled", self.trajectory, steps, name)
                           for name in run.student.layer_names if name != "class_head"})

    def sync(self) -> None:
        """Bring the run's own student up to date (a stacked or fused member trains in its unit's tensors)."""
        self.unit.write_back(self.index)


class Unit(ABC):
    """Trajectories that take their steps together (equal steps), trained as one strategy (``path``) does.
    Each step's losses go to one ring buffer [keep, K] (the latest ``keep`` steps, enough for any member's
    last epoch; as per-step scalars they pinned the allocator's heap between steps, a job grew ~4 MB per kept
    step), which the engine reads on the host only where a member ends an epoch or a follower is done."""

    path = "alone"  # its training path (device.TRAINING_PATHS), recorded per run
    reads_targets = True  # it trains on its streams' noise and teacher targets (a fused set computes its own)

    def __init__(self, members: list[Trajectory], device: torch.device):
        self.members = members
        for index, d in enumerate(members):
            d.unit, d.index = self, index
        self.ring = torch.zeros(max(d.keep for d in members), len(members), device=device)

    @property
    def steps(self) -> int:
        return self.members[0].steps

    def row(self, step: int) -> torch.Tensor:
        """The ring's row of a step's losses (a view)."""
        return self.ring[(step - 1) % self.ring.shape[0]]

    @abstractmethod
    def train_step(self, step: int) -> None:
        """One step of every member, its losses into ``row(step)``."""

    @abstractmethod
    def write_back(self, index: int) -> None:
        """Bring member ``index``'s own student up to date."""


class Alone(Unit):
    """One trajectory with its own optimizer: the reference's per-run arithmetic."""

    def __init__(self, members: list[Trajectory], device: torch.device):
        super().__init__(members, device)
        run = members[0].run
        self.optimizer = adam([p for p in run.student.parameters() if p.requires_grad], run.rc.config.student_lr,
                              device)

    def train_step(self, step: int) -> None:
        d = self.members[0]
        loss = F.mse_loss(d.run.student.aux_logits(d.stream.x), d.stream.targets[d.head])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.row(step)[0] = loss.detach()

    def write_back(self, index: int) -> None:
        """Nothing to copy: its student trains in its own model."""


class StackedStudents(Unit):
    """Trajectories in one StackedMLP (their aux heads, seeds and noise streams may differ)."""

    path = "stacked"

    def __init__(self, members: list[Trajectory], device: torch.device):
        super().__init__(members, device)
        self.mlp = StackedMLP([d.run.student for d in members], "aux_head", members[0].run.rc.config.student_lr,
                              device)

    def train_step(self, step: int) -> None:
        self.row(step).copy_(self.mlp.train_step([d.stream.x for d in self.members], F.mse_loss,
                                                 [d.stream.targets[d.head] for d in self.members]))

    def write_back(self, index: int) -> None:
        self.mlp.write_back(index)


def alone_units(active: list[Trajectory], streams: list[Stream], device: torch.device) -> tuple[list[Unit], list]:
    """The alone strategy: every trajectory its own unit (and no noise banks)."""
    return [Alone([d], device) for d in active], []


def stacking_key(d: Trajectory) -> tuple | None:
    """Trajectories with equal keys can train as one StackedStudents (see stacked_mlp_key)."""
    c = d.run.rc.config
    return stacked_mlp_key(d.run.rc.student, c.student_lr, d.steps, c.noise_bsize)


def stacked_units(active: list[Trajectory], streams: list[Stream],
                  device: torch.device) -> tuple[list[Unit], list]:
    """The stacked strategy: trajectories of equal stacking keys (two or more) stacked, the rest alone (and no
    noise banks)."""
    units: list[Unit] = []
    for group in group_by(active, stacking_key):
        if len(group) == 1:
            units.append(Alone(group, device))
            continue
        units.append(StackedStudents(group, device))
        print(f"[stack] {len(group)} students in stacked layers: {', '.join(d.run.run_id for d in group)}",
              flush=True)
    return units, []

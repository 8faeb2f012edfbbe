"""Fused lockstep distillation: the MLP students of a lockstep set that share a shape step in one set of
kernels whose count depends on the set's shapes (its aux widths), not on how many members it holds.

A fused set (``FusedStudents``) holds trajectories of equal student hidden widths, hidden-layer
trainability, learning rate, steps and noise batch size whose teachers are MLPs of equal hidden widths,
from any seeds (noise streams). Per step: the teacher bodies of all its streams stacked (one batched
matmul per layer), the teacher aux heads of each width stacked likewise, each member's target read from
them by broadcasting where every stream holds the same widths (else one index op per width); the
students' hidden layers stacked [K, out, in], their aux heads stacked per width and aux-head
trainability [K_m, m, h], one loss per width (each member's mean squared error gets gradient 1, as
alone), one backward, one Adam step over the stacked parameters without host reads
(``training.stacked_adam``), and the members' losses into one ring buffer [keep, K] (one copy). Every
stream's noise comes from a ``NoiseBank``, which draws ``period`` steps at once.

Per member it is a lone run's arithmetic, in batched kernels: each gradient is computed in the
orientation of a lone F.linear's and F.mse_loss's, and the CPU's Adam is the lone one's. The results
agree with lone runs to float tolerance (tests/test_fused.py); on the AMD EPYC machine of the tests they
were bit-identical except where every stream holds several members, whose first layer is one wider
matmul per stream (last-bit differences)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .catalog import IMAGE_SHAPE
from .grouping import group_by
from .noise import after_draw, apply_steps, raw_draw, sample_noise
from .stacked import StackedLayers, linear, stack_linear, stacked_mlp_key
from .training import mse_gradient_scale, stacked_adam
from .units import Stream, Trajectory, Unit, stacked_units

NOISE_BUFFER_BYTES = 64 * 2**20  # a bank's buffer, at most (unless one step of its streams is larger)
MAX_PERIOD = 64


def noise_period(step_bytes: int, steps: int, device: torch.device) -> int:
    """Steps of noise that a bank draws at once. On a CPU generator, one draw of T x n images gives the same
    numbers as T draws of n: the uniform and normal kernels fill a contiguous tensor serially from the
    generator (normal in blocks of 16 values, and an image's 784 values are 49 such blocks), and perlin
    draws its angles the same way and then transforms each image on its own (checked by
    tests/test_fused.py against sample_noise). On CUDA the Philox offset of a draw depends on the draw's
    size, so a CUDA stream draws each step as a lone run does (one draw per stream and step)."""
    if device.type != "cpu":
        return 1
    return max(1, min(MAX_PERIOD, max(1, steps), NOISE_BUFFER_BYTES // max(1, step_bytes)))


class NoiseBank:
    """The noise of a lockstep set's streams of one batch size n, ``period`` steps at a time, in one buffer
    [S, T, n, 1, 28, 28]: each stream fills its slab from its own generator, and the elementwise steps after
    a raw draw (uniform's 2x - 1, normalisation) run once over all rows that share them. At a refill the
    streams that no unit uses any more are dropped."""

    def __init__(self, streams: list, device: torch.device, steps: int):
        self.streams, self.device = list(streams), device
        self.n = streams[0].config.noise_bsize
        step_bytes = len(self.streams) * self.n * IMAGE_SHAPE[-1] * IMAGE_SHAPE[-2] * 4
        self.period = noise_period(step_bytes, steps, device)
        self.buffer: torch.Tensor | None = None
        self.row = {id(s): row for row, s in enumerate(self.streams)}  # id(stream) -> its row
        self.rows: dict[tuple, torch.Tensor | None] = {}
        self.next = self.period  # the next step's place in the buffer; a whole period: refill first
        self.current = 0

    def advance(self, live: set[int]) -> None:
        """Move to the next step (``live``: ids of the streams that units still use)."""
        if self.next == self.period:
            self.streams = [s for s in self.streams if id(s) in live]
            if self.streams:
                self._refill()
            self.next = 0
        self.current = self.next
        self.next += 1

    def _refill(self) -> None:
        count, period, n = len(self.streams), self.period, self.n
        if self.buffer is None or self.buffer.shape[0] != count:
            self.buffer = torch.empty(count, period, n, *IMAGE_SHAPE, device=self.device)
            self.row = {id(s): row for row, s in enumerate(self.streams)}
            self.rows.clear()
        raw_rows = []
        for row, stream in enumerate(self.streams):
            c = stream.config
            slab = self.buffer[row].view(period * n, *IMAGE_SHAPE)
            if raw_draw(c) is None:
                slab.copy_(sample_noise(period * n, c, self.device, stream.generator))
            else:
                getattr(torch, raw_draw(c))(period * n, *IMAGE_SHAPE, generator=stream.generator, out=slab)
                raw_rows.append(row)
        # elementwise: the same values over the whole buffer as per slab
        for rows in group_by(raw_rows, lambda row: after_draw(self.streams[row].config)):
            steps = after_draw(self.streams[rows[0]].config)
            for target in [self.buffer] if len(rows) == count else [self.buffer[row] for row in rows]:
                apply_steps(target, steps)

    def x(self, stream) -> torch.Tensor:
        """This step's noise batch of one stream, [n, 1, 28, 28] (a view)."""
        return self.buffer[self.row[id(stream)], self.current]

    def stacked(self, streams: list) -> torch.Tensor:
        """This step's noise of ``streams``, [S, n, 784]: a view when they are the bank's rows in order."""
        key = tuple(map(id, streams))
        if key not in self.rows:
            rows = [self.row[k] for k in key]
            self.rows[key] = None if rows == list(range(len(self.streams))) else \
                torch.tensor(rows, device=self.device)
        x = self.buffer[:, self.current].flatten(2)
        index = self.rows[key]
        return x if index is None else x.index_select(0, index)


def noise_banks(streams: list, steps: int, device: torch.device) -> list[NoiseBank]:
    """A NoiseBank for the streams of each noise batch size (``steps``: the most that any unit takes)."""
    return [NoiseBank(group, device, steps) for group in group_by(streams, lambda s: s.config.noise_bsize)]


def fused_units(active: list[Trajectory], streams: list[Stream],
                device: torch.device) -> tuple[list[Unit], list[NoiseBank]]:
    """The fused strategy: FusedStudents of equal fused keys (two or more), the rest as ``stacked_units``
    makes them (CNN students alone, say); and every stream's noise from a NoiseBank, one per noise batch
    size."""
    groups = group_by(active, fused_key)
    rest, _ = stacked_units([d for group in groups if len(group) == 1 for d in group], streams, device)
    banks = noise_banks(streams, max((d.steps for d in active), default=0), device)
    fused: list[Unit] = []
    for group in (group for group in groups if len(group) > 1):
        fused.append(FusedStudents(group, next(b for b in banks if id(group[0].stream) in b.row), device))
        print(f"[fused] {len(group)} students fused: {', '.join(d.run.run_id for d in group)}", flush=True)
    return fused + rest, banks


def bank_noise(banks: list[NoiseBank], stream) -> torch.Tensor | None:
    """This step's noise batch of a stream from its bank (None without banks)."""
    return next((bank.x(stream) for bank in banks if id(stream) in bank.row), None)


def fused_key(d: Trajectory) -> tuple | None:
    """Trajectories with equal keys can train as one FusedStudents: MLP students of equal stacking key
    (``stacked_mlp_key``) whose teachers are MLPs of equal hidden widths. None: another path."""
    rc, c = d.run.rc, d.run.rc.config
    key = stacked_mlp_key(rc.student, c.student_lr, d.steps, c.noise_bsize)
    if key is None or rc.teacher.model_type != "mlp":
        return None
    return key, tuple(rc.teacher.hidden_dims)


class _Linear(torch.autograd.Function):
    """Batched F.linear whose backward computes what a lone F.linear's does, in the same orientation: the
    weight gradient as grad^T @ h ([K, out, in], the parameter's own layout, so autograd keeps it without a
    copy), the input gradient as grad @ weight and the bias gradient as a sum over the batch rows. (The
    generic baddbmm backward computes h^T @ grad, whose bits a CPU's BLAS may round otherwise.)"""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(h, weight)
        return linear(h, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        h, weight = ctx.saved_tensors
        need_h, need_weight, need_bias = ctx.needs_input_grad
        return (grad.bmm(weight) if need_h else None, grad.transpose(1, 2).bmm(h) if need_weight else None,
                grad.sum(1, keepdim=True) if need_bias else None)


class _Width:
    """The members of one aux width and aux-head trainability: their heads stacked, and their targets."""

    def __init__(self, start: int, members: list, trainable: bool, device: torch.device):
        self.start, self.size, self.trainable = start, len(members), trainable
        weight, bias = stack_linear([d.run.student.aux_head for d in members])
        self.weight, self.bias = weight.requires_grad_(trainable), bias.requires_grad_(trainable)
        # the backward's seed of each member's summed squared error, whose gradient is 2 (x - y): half the
        # scale of a lone run's F.mse_loss gives its gradient's bits
        count = members[0].run.rc.config.noise_bsize * members[0].run.rc.config.m
        self.seed = torch.full((len(members),), mse_gradient_scale(count) / 2, device=device)
        self.numel = torch.full((len(members),), float(count), device=device)
        self.heads: tuple = ()  # the teacher heads it reads, as (stream row, head index), first use first
        self.broadcast = 0  # > 0: member j * S + s reads stream s's head (j < broadcast): no gather
        self.index: torch.Tensor | None = None  # else each member's row of the heads' targets (None: in order)


class FusedStudents(Unit):
    """Distilling trajectories of one ``fused_key`` from streams of one NoiseBank, trained as one (see the
    module's docstring). Its tensors order the members (``order``, a member's ``index``) by aux width; with
    ``per_stream`` (every stream holds the same count of members of each width) member k = j * S + s is the
    j-th member of stream s, and the first hidden layer of all members is one batched matmul over the
    streams ([S, n, 784] x [S, 784, c x out]); else each member's noise is gathered ([K, n, 784])."""

    path = "fused"
    reads_targets = False  # its teachers' bodies and heads are stacked in it

    def __init__(self, members: list[Trajectory], bank: NoiseBank, device: torch.device):
        super().__init__(members, device)
        self.bank, self.device = bank, device
        self.streams = sorted({id(d.stream): d.stream for d in members}.values(), key=lambda s: bank.row[id(s)])
        row = {id(s): r for r, s in enumerate(self.streams)}

        def width_of(d) -> tuple[int, bool]:
            return d.run.rc.config.m, bool(d.run.student.aux_head.weight.requires_grad)

        widths = sorted({width_of(d) for d in members})
        by_stream = [sorted((d for d in members if row[id(d.stream)] == r), key=lambda d: widths.index(width_of(d)))
                     for r in range(len(self.streams))]
        shapes = [[width_of(d) for d in part] for part in by_stream]
        self.per_stream = all(shape == shapes[0] for shape in shapes)
        if self.per_stream:
            order = [part[j] for j in range(len(by_stream[0])) for part in by_stream]
        else:
            order = sorted(members, key=lambda d: (widths.index(width_of(d)), row[id(d.stream)]))
        self.order = order
        for k, d in enumerate(order):
            d.index = k
        self.member_rows = torch.tensor([row[id(d.stream)] for d in order], device=device)
        self.hidden = _Hidden([d.run.student for d in order], [name for name, _, _ in order[0].run.student.steps],
                              [[d.run.student for d in part] for part in by_stream] if self.per_stream else None)
        self.layers = self.hidden.layers
        self.widths = []
        for key in widths:
            ks = [k for k, d in enumerate(order) if width_of(d) == key]
            self.widths.append(_Width(ks[0], order[ks[0]:ks[-1] + 1], key[1], device))
        self._teacher(row)
        self.sizes = [w.size for w in self.widths]
        self.numel = torch.cat([w.numel for w in self.widths])
        params = [p for pair in self.layers for p in pair if p.requires_grad]
        params += [p for w in self.widths if w.trainable for p in (w.weight, w.bias)]
        self.optimizer = stacked_adam(params, order[0].run.rc.config.student_lr, device)

    def _teacher(self, row: dict[int, int]) -> None:
        """The stacked teacher bodies of the streams, the stacked teacher heads that each width reads (once
        per set of heads), and each width's way from those heads' outputs to its members' targets."""
        count = len(self.streams)
        bodies = [s.body for s in self.streams]
        self.teacher_layers = [stack_linear([getattr(b, name) for b in bodies]) for name, _, _ in bodies[0].steps]
        self.teacher_heads: dict[tuple, tuple] = {}
        for width in self.widths:
            pairs = [(row[id(d.stream)], d.head) for d in self.order[width.start:width.start + width.size]]
            width.heads = tuple(dict.fromkeys(pairs))
            rows = [r for r, _ in width.heads]
            if self.per_stream and rows == list(range(count)):  # one head per stream: read by broadcasting
                width.broadcast = width.size // count
            elif pairs != list(width.heads):
                width.index = torch.tensor([width.heads.index(p) for p in pairs], device=self.device)
            if width.heads not in self.teacher_heads:
                stacked = None if rows == list(range(count)) else torch.tensor(rows, device=self.device)
                self.teacher_heads[width.heads] = (stacked, *stack_linear([self.streams[r].heads[h]
                                                                          for r, h in width.heads]))

    def train_step(self, step: int) -> None:
        """One step of every member; their losses go to row (step - 1) % keep of the ring buffer."""
        x = self.bank.stacked(self.streams)
        count, n = x.shape[0], x.shape[1]
        with torch.no_grad():
            features = x
            for weight, bias in self.teacher_layers:
                features = F.relu_(linear(features, weight, bias))
            targets = {heads: linear(features if rows is None else features.index_select(0, rows), weight, bias)
                       for heads, (rows, weight, bias) in self.teacher_heads.items()}
        weight, bias = self.layers[0]
        if self.per_stream:  # [S, n, c x out] -> member j * S + s: [K, n, out]
            h = F.relu_(_Linear.apply(x, weight, bias))
            h = h.view(count, n, len(self.order) // count, -1).permute(2, 0, 1, 3).reshape(len(self.order), n, -1)
        else:
            h = F.relu_(_Linear.apply(x.index_select(0, self.member_rows), weight, bias))
        for weight, bias in self.layers[1:]:
            h = F.relu_(_Linear.apply(h, weight, bias))
        # split: one gradient cat in backward, where slicing would add a zero-padded copy per width
        sums = []
        for width, features in zip(self.widths, h.split(self.sizes) if len(self.sizes) > 1 else (h,), strict=True):
            out = _Linear.apply(features, width.weight, width.bias)
            target = targets[width.heads]
            if width.broadcast:
                out = out.view(width.broadcast, count, n, -1)
                target = target.expand(width.broadcast, -1, -1, -1)
            elif width.index is not None:
                target = target.index_select(0, width.index)
            sums.append(F.mse_loss(out, target, reduction="none").sum((-2, -1)).reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(sums, [w.seed for w in self.widths])  # each member's mean gets gradient 1
        self.optimizer.step()
        with torch.no_grad():  # each member's mean squared error, as F.mse_loss computes it: sum / numel
            torch.cat(sums, out=self.row(step)).div_(self.numel)

    @torch.no_grad()
    def write_back(self, index: int) -> None:
        """Copy a member's trained layers (hidden layers and aux head) into its own model."""
        self.hidden.write_back(index)
        width = next(w for w in self.widths if w.start <= index < w.start + w.size)
        if width.trainable:
            model = self.order[index].run.student
            model.aux_head.weight.copy_(width.weight[index - width.start])
            model.aux_head.bias.copy_(width.bias[index - width.start, 0])


class _Hidden(StackedLayers):
    """A fused set's hidden layers; with ``by_stream`` (each stream's members, member k = j * S + s the j-th
    of stream s) the first layer of a stream's members one above the other, [S, c x out, 784], so that the
    first layer of all members is one matmul per stream."""

    def __init__(self, models: list, names: list[str], by_stream: list[list] | None):
        self.by_stream = by_stream
        super().__init__(models, names)

    def stacked(self, position: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if position or self.by_stream is None:
            return super().stacked(position, name)
        parts = [stack_linear([getattr(model, name) for model in part]) for part in self.by_stream]
        return (torch.stack([w.flatten(0, 1) for w, _ in parts]),
                torch.stack([b.flatten(0, 1).reshape(1, -1) for _, b in parts]))

    def member(self, position: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if position or self.by_stream is None:
            return super().member(position, index)
        weight, bias = self.layers[0]
        count, out = len(self.by_stream), getattr(self.models[index], self.names[0]).weight.shape[0]
        s, j = index % count, index // count
        return weight[s, j * out:(j + 1) * out], bias[s, 0, j * out:(j + 1) * out]

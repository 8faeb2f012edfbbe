"""A slow, straightforward implementation of the paper's semantics, written from ../shared/REFERENCE.md.

It is the yardstick of the exactness tests: torchvision datasets with ToTensor + Normalize, a real
``torch.utils.data.DataLoader``, plain ``nn.Linear``/``nn.Conv2d`` models, ``torch.optim.Adam`` and the
derived seeds in the documented order. It shares nothing with the runner's training code; only the
validated settings (``sublearn.config.resolve``: layer names, per-layer sources, perturbation specs)
come from the runner, because parsing is not what these tests are about.

Run on the same machine with the same thread count as the runner, it must give the runner's numbers bit
for bit, whatever the CPU kind.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from sublearn.plan import ResolvedConfig

EPS = 1e-12


def derived(seed: int, *parts: object) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()[:12]
    return 100000 * seed + int(digest, 16) % 900000000


def set_seed(x: int) -> None:
    random.seed(x)
    np.random.seed(x % (2**32 - 1))
    torch.manual_seed(x)


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def load_split(c, train: bool):
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    if c.dataset == "mnist":
        ds = datasets.MNIST(c.data_dir, train=train, download=False, transform=tf)
    else:
        shift = (lambda y: y - 1) if c.emnist_split == "letters" else None
        ds = datasets.EMNIST(c.data_dir, split=c.emnist_split, train=train, download=False, transform=tf,
                             target_transform=shift)
    if c.class_count is not None:
        labels = ds.targets - (1 if (c.dataset == "emnist" and c.emnist_split == "letters") else 0)
        ds = Subset(ds, [i for i, y in enumerate(labels.tolist()) if y < c.class_count])
    return ds


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


def act(x, name):
    name = str(name or "none").lower()
    return {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}.get(name, lambda v: v)(x)


class Net(nn.Module):
    def __init__(self, plan, m: int, num_classes: int):
        super().__init__()
        self.plan = plan
        if plan.model_type == "mlp":
            width = 784
            for i, hidden in enumerate(plan.hidden_dims, start=1):
                setattr(self, f"fc{i}", nn.Linear(width, hidden))
                width = hidden
        else:
            channels, size, width = 1, (28, 28), None
            for e in plan.feature_spec:
                if e["type"] == "conv2d":
                    conv = nn.Conv2d(channels, e["out_channels"], e.get("kernel_size", 3), e.get("stride", 1),
                                     e.get("padding", 0), e.get("dilation", 1), bias=e.get("bias", True))
                    setattr(self, e["name"], conv)
                    channels = e["out_channels"]
                    with torch.no_grad():  # shape inference on a dummy input, no random draws
                        size = self._conv_block(torch.zeros(1, *((conv.in_channels,) + size)), e).shape[2:]
                else:
                    setattr(self, e["name"], nn.Linear(width or channels * size[0] * size[1], e["out_features"],
                                                       bias=e.get("bias", True)))
                    width = e["out_features"]
            width = width or channels * size[0] * size[1]
        self.class_head = nn.Linear(width, num_classes)
        self.aux_head = nn.Linear(width, m)

    def _conv_block(self, x, e):
        x = act(getattr(self, e["name"])(x), e.get("activation", "relu"))
        p = e.get("pool")
        if p:
            kind = str(p.get("type", "max")).lower()
            if kind.startswith("adaptive"):
                return F.adaptive_avg_pool2d(x, p.get("output_size", 1))
            k = p.get("kernel_size", 2)
            pool = F.avg_pool2d if kind in ("avg", "average", "avgpool", "avgpool2d") else F.max_pool2d
            return pool(x, k, p.get("stride", k), p.get("padding", 0))
        return x

    def body(self, x):
        if self.plan.model_type == "mlp":
            x = x.flatten(1)
            for i in range(1, len(self.plan.hidden_dims) + 1):
                x = F.relu(getattr(self, f"fc{i}")(x))
            return x
        for e in self.plan.feature_spec:
            if e["type"] == "conv2d":
                x = self._conv_block(x, e)
            else:
                x = act(getattr(self, e["name"])(x.flatten(1)), e.get("activation", "relu"))
        return x.flatten(1)

    def forward(self, x):
        h = self.body(x)
        return self.class_head(h), self.aux_head(h)


def build(plan, m, num_classes, seed):
    set_seed(derived(seed, plan.role, "model_random_init"))
    net = Net(plan, m, num_classes)
    for name in plan.layer_names:
        if plan.init[name] in ("A", "B"):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derived(seed, "init_source", plan.init[name], name))
                getattr(net, name).reset_parameters()
    for name in plan.layer_names:
        for p in getattr(net, name).parameters():
            p.requires_grad_(plan.trainable[name])
    return net


# --------------------------------------------------------------------------------------------------
# Noise, perturbations, evaluation
# --------------------------------------------------------------------------------------------------


def fade(t):
    return 6 * t**5 - 15 * t**4 + 10 * t**3


def perlin(n, r):
    angles = 2 * math.pi * torch.rand(n, r + 1, r + 1)
    gx, gy = torch.cos(angles), torch.sin(angles)
    pos = torch.arange(28, dtype=torch.float32) * (r / 28)
    cell = pos.floor().long()
    frac = pos - cell.float()
    y0, x0 = cell.view(28, 1), cell.view(1, 28)
    fy, fx = frac.view(28, 1).expand(28, 28), frac.view(1, 28).expand(28, 28)

    def dot(dy, dx):
        ox, oy = fx - dx, fy - dy
        return gx[:, y0 + dy, x0 + dx] * ox + gy[:, y0 + dy, x0 + dx] * oy

    u, v = fade(fx), fade(fy)
    top = dot(0, 0) + u * (dot(0, 1) - dot(0, 0))
    bottom = dot(1, 0) + u * (dot(1, 1) - dot(1, 0))
    img = (top + v * (bottom - top)).unsqueeze(1)
    return img / (img.abs().flatten(1).max(dim=1).values.view(n, 1, 1, 1) + EPS)


def noise(c, n):
    if c.noise_dist == "uniform":
        x = 2 * torch.rand(n, 1, 28, 28) - 1
    elif c.noise_dist == "normal":
        x = torch.randn(n, 1, 28, 28)
    else:
        x = perlin(n, c.perlin_res)
    return (x - 0.1307) / 0.3081 if c.normalize_noise else x


@torch.no_grad()
def perturb(rc: ResolvedConfig, timing: str, models: dict) -> None:
    for spec in rc.perturbations:
        if spec["timing"] != timing:
            continue
        for name in spec["layers"]:
            layer = getattr(models[spec["target"]], name)
            with torch.random.fork_rng(devices=[]):
                set_seed(derived(rc.config.seed, "perturb", spec["index"], timing, spec["target"], name))
                if spec["include_weight"] and spec["std"] > 0:
                    layer.weight += torch.randn_like(layer.weight) * spec["std"]
                if spec["include_bias"] and spec["std"] > 0 and layer.bias is not None:
                    layer.bias += torch.randn_like(layer.bias) * spec["std"]


@torch.no_grad()
def evaluate(net, loader):
    correct, total, loss = 0, 0, 0.0
    for x, y in loader:
        logits = net(x)[0]
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        total += len(y)
    return correct / total, loss / total


@torch.no_grad()
def aux_mse(rc, student, teacher, moment):
    c = rc.config
    with torch.random.fork_rng(devices=[]):
        set_seed(derived(c.seed, "eval_noise", moment))
        losses = []
        for _ in range(c.eval_noise_batches):
            x = noise(c, c.eval_noise_bsize)
            losses.append(F.mse_loss(student(x)[1], teacher(x)[1]).item())
    return sum(losses) / len(losses) if losses else float("nan")


def snapshot(net):
    return {name: {k: v.detach().clone() for k, v in getattr(net, name).named_parameters()}
            for name in net.plan.layer_names}


# --------------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------------


@dataclass
class SlowResult:
    metrics: dict[str, float]
    snapshots: dict[str, dict] = field(default_factory=dict)


def run(rc: ResolvedConfig) -> SlowResult:
    c = rc.config
    set_seed(derived(c.seed, "experiment_start"))
    teacher = build(rc.teacher, c.m, rc.num_classes, c.seed)
    student = build(rc.student, c.m, rc.num_classes, c.seed)
    models = {"teacher": teacher, "student": student}
    train_set, test_set = load_split(c, True), load_split(c, False)
    test_loader = DataLoader(test_set, batch_size=c.data_bsize, shuffle=False)
    out, snaps = {}, {}

    perturb(rc, "before_teacher_training", models)
    snaps["teacher_initial"] = snapshot(teacher)
    out["teacher_init_acc"], out["teacher_init_class_loss"] = evaluate(teacher, test_loader)

    set_seed(derived(c.seed, "teacher_training"))
    optimizer = torch.optim.Adam([p for p in teacher.parameters() if p.requires_grad], lr=c.teacher_lr)
    g = torch.Generator()
    g.manual_seed(derived(c.seed, "dataloader_shuffle"))
    loader = DataLoader(train_set, batch_size=c.data_bsize, shuffle=True, generator=g)
    out["teacher_train_loss_last"] = float("nan")
    for _ in range(c.teacher_epochs):
        total, batches = 0.0, 0
        for x, y in loader:
            loss = F.cross_entropy(teacher(x)[0], y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
            batches += 1
        out["teacher_train_loss_last"] = total / batches

    perturb(rc, "after_teacher_training", models)
    snaps["teacher_final"] = snapshot(teacher)
    out["teacher_final_acc"], out["teacher_final_class_loss"] = evaluate(teacher, test_loader)

    perturb(rc, "before_student_training", models)
    snaps["student_initial"] = snapshot(student)
    out["student_init_acc"], out["student_init_class_loss"] = evaluate(student, test_loader)
    out["student_init_aux_loss"] = aux_mse(rc, student, teacher, "student_initial")

    set_seed(derived(c.seed, "student_training_noise"))
    optimizer = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=c.student_lr)
    out["student_train_aux_loss_last"] = float("nan")
    for _ in range(c.student_epochs):
        total = 0.0
        for _ in range(c.noise_steps):
            x = noise(c, c.noise_bsize)
            with torch.no_grad():
                target = teacher(x)[1]
            loss = F.mse_loss(student(x)[1], target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        out["student_train_aux_loss_last"] = total / c.noise_steps if c.noise_steps else float("nan")

    perturb(rc, "after_student_training", models)
    snaps["student_final"] = snapshot(student)
    out["student_final_acc"], out["student_final_class_loss"] = evaluate(student, test_loader)
    out["student_final_aux_loss"] = aux_mse(rc, student, teacher, "student_final")
    return SlowResult(out, snaps)

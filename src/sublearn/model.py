"""Split-head models: a feature extractor (MLP or CNN) with a class head and an aux head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .architecture import ADAPTIVE_POOLS, AVG_POOLS, HEAD_NAMES, ModelPlan, layers
from .device import reproducible
from .seeding import derived_seed, set_seed


def activate(x: torch.Tensor, name: str | None) -> torch.Tensor:
    name = "none" if name is None else str(name).lower()
    if name == "relu":  # in place on a fresh layer output: autograd keeps only the result
        return F.relu_(x)
    if name == "gelu":
        return F.gelu(x)
    if name == "tanh":
        return torch.tanh(x)
    if name == "sigmoid":
        return torch.sigmoid(x)
    return x


def pool(x: torch.Tensor, spec: dict | None) -> torch.Tensor:
    if not spec:
        return x
    kind = str(spec.get("type", "max")).lower()
    if kind in ADAPTIVE_POOLS:
        return F.adaptive_avg_pool2d(x, spec.get("output_size", 1))
    kernel = spec.get("kernel_size", 2)
    stride = spec.get("stride", kernel)
    padding = spec.get("padding", 0)
    if kind in AVG_POOLS:
        return F.avg_pool2d(x, kernel, stride, padding)
    return F.max_pool2d(x, kernel, stride, padding)


class SplitHeadModel(nn.Module):
    """Feature layers built in order, then class_head, then aux_head (construction order fixes the
    random initialisation, so it must not change)."""

    def __init__(self, plan: ModelPlan, m: int, num_classes: int):
        super().__init__()
        self.steps: list[tuple[str, str, dict]] = []  # (layer name, kind, spec) of the feature layers
        for layer in layers(plan, m, num_classes):
            spec = layer.spec
            if layer.kind == "conv2d":
                module = nn.Conv2d(layer.in_size, layer.out_size, kernel_size=spec.get("kernel_size", 3),
                                   stride=spec.get("stride", 1), padding=spec.get("padding", 0),
                                   dilation=spec.get("dilation", 1), bias=spec.get("bias", True))
            else:
                module = nn.Linear(layer.in_size, layer.out_size, bias=spec.get("bias", True))
            setattr(self, layer.name, module)
            if layer.name not in HEAD_NAMES:
                self.steps.append((layer.name, layer.kind, spec))
        self.layer_names = [name for name, _, _ in self.steps] + list(HEAD_NAMES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for name, kind, spec in self.steps:
            if kind == "linear" and x.ndim > 2:
                x = x.reshape(x.size(0), -1)
            x = activate(getattr(self, name)(x), spec.get("activation", "relu"))
            if kind == "conv2d":
                x = pool(x, spec.get("pool"))
        return x.reshape(x.size(0), -1) if x.ndim > 2 else x

    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.class_head(self.features(x))

    def aux_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.aux_head(self.features(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.class_head(h), self.aux_head(h)


@torch.no_grad()
def build_model(plan: ModelPlan, m: int, num_classes: int, seed: int, device: torch.device) -> SplitHeadModel:
    """Construct with PyTorch's default init on the role's own stream, then reset A/B layers from
    their shared per-layer seeds, so same-named A layers of teacher and student are identical."""
    reproducible(device)  # a direct call gets the arithmetic the command line sets up
    set_seed(derived_seed(seed, plan.role, "model_random_init"))
    model = SplitHeadModel(plan, m, num_classes)
    for name in model.layer_names:
        source = plan.init[name]
        if source in ("A", "B"):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derived_seed(seed, "init_source", source, name))
                getattr(model, name).reset_parameters()
    for name in model.layer_names:
        for p in getattr(model, name).parameters(recurse=False):
            p.requires_grad_(bool(plan.trainable[name]))
    return model.to(device)


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)

"""Models of equal MLP shape trained side by side, one batched matmul per layer and step."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .device import training_path
from .model import SplitHeadModel
from .training import adam


class StackedMLP:
    """MLPs of equal hidden widths trained side by side: each hidden layer's weights of all members as one
    [K, out, in] tensor (one batched matmul per layer and step instead of K), each member's own head
    (``head``: aux_head for a student, class_head for a teacher) and loss, one optimizer over all. Per
    member it is the arithmetic of a lone run: on CPU the batched matmuls give the same bits as separate
    ones for this project's shapes where the BLAS does (tests check it), and on CUDA, where it exists to
    fill the device with fewer and larger kernels, float tolerance applies."""

    def __init__(self, models: list[SplitHeadModel], head: str, lr: float, device: torch.device):
        self.models, self.head = models, head
        self.layers = [name for name, _, _ in models[0].steps]
        self.weights, self.biases = [], []
        for name in self.layers:
            trainable = getattr(models[0], name).weight.requires_grad
            for tensors, kind in ((self.weights, "weight"), (self.biases, "bias")):
                stacked = torch.stack([getattr(getattr(m, name), kind).detach() for m in models])
                tensors.append(stacked.requires_grad_(trainable))
        params = [p for p in self.weights + self.biases if p.requires_grad]
        params += [p for m in models for p in getattr(m, head).parameters() if p.requires_grad]
        self.optimizer = adam(params, lr, device)

    def train_step(self, xs: list[torch.Tensor], loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   targets: list[torch.Tensor]) -> list[torch.Tensor]:
        """One step of every member on its own batch (the same tensor for members of one noise stream):
        ``loss(member's head output, its target)``."""
        if all(x is xs[0] for x in xs):
            h = xs[0].reshape(xs[0].shape[0], -1).expand(len(xs), -1, -1)
        else:
            h = torch.stack([x.reshape(x.shape[0], -1) for x in xs])
        for weight, bias in zip(self.weights, self.biases, strict=True):
            h = F.relu_(torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2)))
        # unbind: one gradient stack in backward, where indexing would add K zero-padded [K, B, out] tensors
        losses = [loss(getattr(m, self.head)(hidden), target)
                  for m, hidden, target in zip(self.models, h.unbind(0), targets, strict=True)]
        self.optimizer.zero_grad(set_to_none=True)
        torch.stack(losses).sum().backward()  # each member's loss gets gradient 1, as alone
        self.optimizer.step()
        return [value.detach() for value in losses]

    @torch.no_grad()
    def write_back(self, index: int) -> None:
        """Copy a member's hidden layers into its own model."""
        model = self.models[index]
        for name, weight, bias in zip(self.layers, self.weights, self.biases, strict=True):
            getattr(model, name).weight.copy_(weight[index])
            getattr(model, name).bias.copy_(bias[index])


def stacked_mlp_key(plan, lr: float, steps: int, batch_size: int) -> tuple | None:
    """Models with equal keys can train as one StackedMLP: MLPs of equal hidden widths and hidden-layer
    trainability, learning rate, steps and batch size. None: trains alone."""
    if plan.model_type != "mlp":
        return None
    trainable = tuple(bool(plan.trainable[f"fc{i}"]) for i in range(1, len(plan.hidden_dims) + 1))
    if not any(trainable):
        return None
    return tuple(plan.hidden_dims), trainable, lr, steps, batch_size


def uses_stacked_layers(stack_layers: bool | str | None, device: torch.device) -> bool:
    """Whether ``stack_layers`` stacks anything on ``device`` (``device.training_path``: not alone)."""
    return training_path(stack_layers, device) != "alone"

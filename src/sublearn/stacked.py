"""Models of equal MLP shape trained side by side, one batched matmul per layer and step."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .device import training_path
from .model import SplitHeadModel
from .training import adam


def stack_linear(layers: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear layers of several models as [K, out, in] weights and [K, 1, out] biases, used as a lone run's
    F.linear is (the weights transposed in the matmul), so that a CPU's BLAS takes the same path."""
    return (torch.stack([layer.weight.detach() for layer in layers]),
            torch.stack([layer.bias.detach() for layer in layers]).unsqueeze(1))


def linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Batched F.linear: h [K, n, in], weight [K, out, in], bias [K, 1, out] -> [K, n, out]."""
    return torch.baddbmm(bias, h, weight.transpose(1, 2))


class StackedLayers:
    """Layers ``names`` of K models of equal shape stacked (``stack_linear``), each trainable as the models'
    layer is, and copied back into a model when it is done: the building block of stacked teachers and
    students (StackedMLP) and of fused students (fused.py, which lays its first layer out per stream)."""

    def __init__(self, models: list[SplitHeadModel], names: list[str]):
        self.models, self.names = models, names
        self.layers = []
        for position, name in enumerate(names):
            trainable = bool(getattr(models[0], name).weight.requires_grad)
            weight, bias = self.stacked(position, name)
            self.layers.append((weight.requires_grad_(trainable), bias.requires_grad_(trainable)))

    def stacked(self, position: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The models' layer ``name`` (the ``position``-th) as one weight and one bias."""
        return stack_linear([getattr(model, name) for model in self.models])

    def member(self, position: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Model ``index``'s weight and bias in the ``position``-th stacked layer (views)."""
        weight, bias = self.layers[position]
        return weight[index], bias[index, 0]

    @torch.no_grad()
    def write_back(self, index: int) -> None:
        """Copy a model's trained layers into the model."""
        model = self.models[index]
        for position, (name, (weight, _)) in enumerate(zip(self.names, self.layers, strict=True)):
            if weight.requires_grad:
                mine, own_bias = self.member(position, index)
                getattr(model, name).weight.copy_(mine)
                getattr(model, name).bias.copy_(own_bias)


class StackedMLP(StackedLayers):
    """MLPs of equal hidden widths trained side by side: each hidden layer's weights of all members as one
    [K, out, in] tensor (one batched matmul per layer and step instead of K), each member's own head
    (``head``: aux_head for a student, class_head for a teacher) and loss, one optimizer over all. Per
    member it is the arithmetic of a lone run: on CPU the batched matmuls give the same bits as separate
    ones for this project's shapes where the BLAS does (tests check it), and on CUDA, where it exists to
    fill the device with fewer and larger kernels, float tolerance applies."""

    def __init__(self, models: list[SplitHeadModel], head: str, lr: float, device: torch.device):
        super().__init__(models, [name for name, _, _ in models[0].steps])
        self.head = head
        params = [p for pair in zip(*self.layers, strict=True) for p in pair if p.requires_grad]  # weights, biases
        params += [p for m in models for p in getattr(m, head).parameters() if p.requires_grad]
        self.optimizer = adam(params, lr, device)

    def train_step(self, xs: list[torch.Tensor], loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   targets: list[torch.Tensor]) -> torch.Tensor:
        """One step of every member on its own batch (the same tensor for members of one noise stream):
        ``loss(member's head output, its target)``; the members' losses, [K]."""
        if all(x is xs[0] for x in xs):
            h = xs[0].reshape(xs[0].shape[0], -1).expand(len(xs), -1, -1)
        else:
            h = torch.stack([x.reshape(x.shape[0], -1) for x in xs])
        for weight, bias in self.layers:
            h = F.relu_(linear(h, weight, bias))
        # unbind: one gradient stack in backward, where indexing would add K zero-padded [K, B, out] tensors
        losses = torch.stack([loss(getattr(m, self.head)(hidden), target)
                              for m, hidden, target in zip(self.models, h.unbind(0), targets, strict=True)])
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # each member's loss gets gradient 1, as alone
        self.optimizer.step()
        return losses.detach()


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

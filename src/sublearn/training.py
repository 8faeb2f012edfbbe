"""The optimiser, with a CPU twin of torch's Adam, and the mean of an epoch's losses."""

from __future__ import annotations

import torch


class CpuAdam:
    """Adam with exactly the arithmetic of torch.optim.Adam's default CPU path (single-tensor, no weight
    decay, no amsgrad), so results are bit-identical. It exists because constructing torch.optim.Adam
    imports torch._dynamo, about 0.9 s of every short run job; on CUDA torch.optim.Adam is used."""

    def __init__(self, params: list[torch.Tensor], lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps = list(params), lr, betas, eps
        self.state: dict[int, tuple[list[float], torch.Tensor, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for index, param in enumerate(self.params):
            if param.grad is None:  # like torch.optim: a parameter without gradient is left alone
                continue
            grad = param.grad
            if index not in self.state:
                self.state[index] = ([0.0], torch.zeros_like(param, memory_format=torch.preserve_format),
                                     torch.zeros_like(param, memory_format=torch.preserve_format))
            step, exp_avg, exp_avg_sq = self.state[index]
            step[0] += 1.0
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            bias_correction1 = 1 - beta1 ** step[0]
            bias_correction2 = 1 - beta2 ** step[0]
            step_size = self.lr / bias_correction1
            denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(self.eps)
            param.addcdiv_(exp_avg, denom, value=-step_size)


def adam(params: list[torch.Tensor], lr: float, device: torch.device):
    return CpuAdam(params, lr) if device.type == "cpu" else torch.optim.Adam(params, lr=lr)


def epoch_mean(losses: torch.Tensor) -> float:
    """Mean of an epoch's batch losses, summed as Python floats in order like the reference's running sum
    (one device sync per epoch instead of one per batch)."""
    return sum(losses.tolist()) / len(losses) if len(losses) else float("nan")

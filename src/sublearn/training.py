"""The optimiser, with a CPU twin of torch's Adam, and the mean of an epoch's losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def stacked_adam(params: list[torch.Tensor], lr: float, device: torch.device):
    """Adam for parameters that all get a gradient in every step, with no host read: on a CPU ForeachAdam
    (a lone run's arithmetic), on CUDA torch's fused Adam (two kernels per step, its step counts on the
    device)."""
    return ForeachAdam(params, lr) if device.type == "cpu" else torch.optim.Adam(params, lr=lr, fused=True)


def mse_gradient_scale(numel: int) -> float:
    """The factor by which F.mse_loss's backward (mean over ``numel`` values) multiplies input - target, asked
    of F.mse_loss itself: a fused set (fused.py) seeds the backward of its summed squared errors with it and
    so gets a lone run's gradient bits without restating torch's formula."""
    probe = torch.ones(numel, requires_grad=True)
    with torch.enable_grad():
        F.mse_loss(probe, torch.zeros(numel)).backward()
    return float(probe.grad[0])


def epoch_mean(losses: torch.Tensor) -> float:
    """Mean of an epoch's batch losses, summed as Python floats in order like the reference's running sum
    (one device sync per epoch instead of one per batch)."""
    return sum(losses.tolist()) / len(losses) if len(losses) else float("nan")


class ForeachAdam(CpuAdam):
    """CpuAdam's arithmetic (hence torch.optim.Adam's single-tensor CPU path, bit for bit) in torch._foreach_*
    ops over all parameters at once: seven operator calls per step whatever the parameter count (multi-tensor
    kernels on CUDA). Every parameter gets a gradient in every step (a fused set's), so the step count is one
    Python number and nothing is read back from the device."""

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        if not self.state:
            self.state = {"step": 0.0, "exp_avg": [torch.zeros_like(p) for p in self.params],
                          "exp_avg_sq": [torch.zeros_like(p) for p in self.params]}
        self.state["step"] += 1.0
        step, exp_avg, exp_avg_sq = self.state["step"], self.state["exp_avg"], self.state["exp_avg_sq"]
        grads = [p.grad for p in self.params]
        torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - beta2)
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_div_(denom, (1 - beta2**step) ** 0.5)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(self.params, exp_avg, denom, value=-(self.lr / (1 - beta1**step)))

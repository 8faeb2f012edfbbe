"""Noise images for distillation and its evaluation: a registry of distributions, one entry each.

A distribution is a function ``(n, config, device, generator) -> [n, 1, 28, 28] float32 tensor`` that
reads only settings listed in ``config.NOISE_SETTINGS`` (the stack and evaluation-noise keys are derived
from that list, so runs that differ in a noise setting never share a stream; a test checks what each
distribution reads). Torch is imported when noise is drawn, not at import: planning validates
``noise_dist`` against this registry without torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .catalog import IMAGE_SHAPE, MNIST_MEAN, MNIST_STD

if TYPE_CHECKING:
    import torch

EPS = 1e-12
DISTRIBUTIONS: dict[str, Callable[..., Any]] = {}
# Distributions that are one raw draw (a torch function that fills its images in order from the generator)
# and elementwise steps in place, declared with ``raw``: a NoiseBank (fused.py) draws many steps of them at
# once and applies the steps once over its whole buffer, which gives the values of each step's sample_noise.
RAW_DRAWS: dict[str, tuple[str, tuple]] = {}
NORMALIZE = (("sub_", MNIST_MEAN), ("div_", MNIST_STD))  # normalize_noise: onto the images' scale


def distribution(name: str, raw: tuple[str, tuple] | None = None):
    """Register a distribution; ``raw``: (the torch function of its raw draw, its steps after it)."""
    def register(function):
        DISTRIBUTIONS[name] = function
        if raw is not None:
            RAW_DRAWS[name] = raw
        return function
    return register


def raw_draw(config) -> str | None:
    """The torch function that a distribution's raw draw calls (None: drawn otherwise, as perlin is)."""
    raw = RAW_DRAWS.get(config.noise_dist)
    return raw and raw[0]


def after_draw(config) -> tuple:
    """The elementwise steps in place that sample_noise applies after a raw draw, in order."""
    return RAW_DRAWS[config.noise_dist][1] + (NORMALIZE if config.normalize_noise else ())


def apply_steps(x: torch.Tensor, steps: tuple) -> torch.Tensor:
    for name, value in steps:
        getattr(x, name)(value)
    return x


def raw_sample(n: int, config, device, generator) -> torch.Tensor:
    """A distribution declared with ``raw``: its draw, then its steps."""
    import torch

    draw, steps = RAW_DRAWS[config.noise_dist]
    return apply_steps(getattr(torch, draw)(n, *IMAGE_SHAPE, device=device, generator=generator), steps)


@distribution("uniform", raw=("rand", (("mul_", 2.0), ("sub_", 1.0))))
def uniform(n: int, config, device, generator=None) -> torch.Tensor:
    """In [-1, 1]: 2 * rand - 1, in place (same values, no temporaries)."""
    return raw_sample(n, config, device, generator)


@distribution("normal", raw=("randn", ()))
def normal(n: int, config, device, generator=None) -> torch.Tensor:
    return raw_sample(n, config, device, generator)


@distribution("perlin")
def perlin(n: int, config, device, generator=None) -> torch.Tensor:
    return perlin_noise(n, config.perlin_res, device, generator=generator)


def _fade(t: torch.Tensor) -> torch.Tensor:
    return 6 * t**5 - 15 * t**4 + 10 * t**3


def _lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return a + t * (b - a)


def perlin_noise(n: int, res: int, device, size: int = 28, generator=None) -> torch.Tensor:
    """Per image, a (res+1) x (res+1) grid of random gradient angles, blended with the quintic fade, each
    image divided by its largest absolute value."""
    import torch

    coords = torch.arange(size, device=device, dtype=torch.float32) * (res / size)
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    y0, x0 = gy.floor().long(), gx.floor().long()
    fy, fx = gy - y0.float(), gx - x0.float()
    angles = 2 * math.pi * torch.rand(n, res + 1, res + 1, device=device, generator=generator)
    gradients = torch.stack((torch.cos(angles), torch.sin(angles)), dim=-1)

    def corner(dy: int, dx: int) -> torch.Tensor:
        offset = torch.stack((fx - 1.0 if dx else fx, fy - 1.0 if dy else fy), dim=-1).unsqueeze(0)
        return (gradients[:, y0 + dy, x0 + dx, :] * offset).sum(dim=-1)

    u, v = _fade(fx).unsqueeze(0), _fade(fy).unsqueeze(0)
    noise = _lerp(_lerp(corner(0, 0), corner(0, 1), u), _lerp(corner(1, 0), corner(1, 1), u), v).unsqueeze(1)
    return noise / (noise.abs().amax(dim=(1, 2, 3), keepdim=True) + EPS)


def sample_noise(n: int, config, device, generator=None) -> torch.Tensor:
    """A batch of noise images from ``generator`` (default: the global torch stream); with normalize_noise,
    on the images' scale."""
    x = DISTRIBUTIONS[config.noise_dist](n, config, device, generator)
    return apply_steps(x, NORMALIZE) if config.normalize_noise else x

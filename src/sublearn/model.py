"""Split-head models: a feature extractor (MLP or CNN) with a class head and an aux head."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .architecture import ADAPTIVE_POOLS, AVG_POOLS, HEAD_NAMES, ModelPlan, layers
from .device import reproducible
from .seeding import derived_seed


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


def uninitialised_linear(in_features: int, out_features: int, bias: bool) -> nn.Linear:
    """nn.Linear as its constructor makes it, without the default initialisation's draws and dispatches
    (a third of a model's build time at width 256; tests/test_runner_semantics.py compares the two)."""
    layer = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(layer)
    layer.in_features, layer.out_features = in_features, out_features
    layer.weight = nn.Parameter(torch.empty(out_features, in_features))
    if bias:
        layer.bias = nn.Parameter(torch.empty(out_features))
    else:
        layer.register_parameter("bias", None)
    return layer


def tensor_states(module: nn.Module) -> tuple:
    """Each parameter's storage and version counter: any in-place write (an optimizer step, a copy, a
    perturbation) or a new storage changes it."""
    return tuple((p.data_ptr(), p._version) for p in module.parameters(recurse=False))


class SplitHeadModel(nn.Module):
    """Feature layers built in order, then class_head, then aux_head (construction order fixes the
    random initialisation, so it must not change)."""

    def __init__(self, plan: ModelPlan, m: int, num_classes: int, initialise: bool = True):
        """``initialise=False``: the tensors are left uninitialised (build_model fills them)."""
        super().__init__()
        self.steps: list[tuple[str, str, dict]] = []  # (layer name, kind, spec) of the feature layers
        for layer in layers(plan, m, num_classes):
            spec = layer.spec
            if layer.kind == "conv2d":
                module = nn.Conv2d(layer.in_size, layer.out_size, kernel_size=spec.get("kernel_size", 3),
                                   stride=spec.get("stride", 1), padding=spec.get("padding", 0),
                                   dilation=spec.get("dilation", 1), bias=spec.get("bias", True),
                                   device=None if initialise else "meta")
                if not initialise:
                    module.to_empty(device="cpu")
            elif initialise:
                module = nn.Linear(layer.in_size, layer.out_size, bias=spec.get("bias", True))
            else:
                module = uninitialised_linear(layer.in_size, layer.out_size, bias=spec.get("bias", True))
            setattr(self, layer.name, module)
            if layer.name not in HEAD_NAMES:
                self.steps.append((layer.name, layer.kind, spec))
        self.layer_names = [name for name, _, _ in self.steps] + list(HEAD_NAMES)
        # layer name -> (what fixed its weights, the state of its tensors then): see stamp and identity
        self.identities: dict[str, tuple] = {}
        self.stamped: dict[str, tuple] = {}

    def stamp(self, identities: dict[str, tuple]) -> None:
        """Record what fixed these layers' weights (an InitialWeights key, a checkpoint's digest, a training
        trajectory), valid while their tensors stay as they are now."""
        for name, key in identities.items():
            self.identities[name] = key
            self.stamped[name] = tensor_states(getattr(self, name))

    def identity(self, name: str) -> tuple | None:
        """The layer's identity if nothing has written to its tensors since it was stamped, else None."""
        key = self.identities.get(name)
        return key if key is not None and self.stamped.get(name) == tensor_states(getattr(self, name)) else None

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


def default_init(module: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default initialisation of a Linear or Conv2d (``reset_parameters``), drawn from
    ``generator``: the same values as reset_parameters after seeding the global stream with its seed."""
    nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
    if module.bias is not None:
        fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
        if fan_in > 0:
            nn.init.uniform_(module.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), generator=generator)
        elif isinstance(module, nn.Linear):
            nn.init.uniform_(module.bias, 0, 0, generator=generator)


def layer_signature(module: nn.Module) -> tuple:
    """What fixes a layer's draws: its kind, weight shape and whether it has a bias."""
    return type(module).__name__, tuple(module.weight.shape), module.bias is not None


class InitialWeights:
    """Layers' initial weights, each drawn once and copied into every model that starts from it (the
    runs of a batch job build the same layers again and again: fig2's 36 runs of a seed, say).

    A layer's initial values are fixed by what the reference draws them from: an A/B layer by its source's
    own seed (source, layer name, seed) and its shape; any other layer by its role's stream (role, seed)
    and the shapes of every layer built before it, since that stream runs through the layers in order.
    Those are the cache keys, and the layers' identities (``SplitHeadModel.identities``)."""

    def __init__(self):
        self.values: dict[tuple, tuple[torch.Tensor, ...]] = {}
        self.stream_after: dict[tuple, torch.Tensor] = {}  # a role stream's generator state after a layer

    def layer(self, key: tuple, module: nn.Module, start: int | tuple) -> tuple[torch.Tensor, ...]:
        """The cached values of ``key``, else drawn into ``module`` from a generator seeded with ``start``
        (an int) or resumed where the layer of key ``start`` left its stream."""
        if key not in self.values:
            generator = torch.Generator()
            if isinstance(start, tuple):
                generator.set_state(self.stream_after[start])
            else:
                generator.manual_seed(start)
            default_init(module, generator)
            self.stream_after[key] = generator.get_state()
            self.values[key] = tuple(p.detach().clone() for p in module.parameters(recurse=False))
        return self.values[key]


@torch.no_grad()
def build_model(plan: ModelPlan, m: int, num_classes: int, seed: int, device: torch.device,
                inits: InitialWeights | None = None) -> SplitHeadModel:
    """Construct with PyTorch's default init on the role's own stream, then reset A/B layers from
    their shared per-layer seeds, so same-named A layers of teacher and student are identical.

    Every draw comes from a generator of its own (the global streams are left alone): the role stream's
    draws stop after the last layer that keeps them, and ``inits`` serves layers drawn before."""
    reproducible(device)  # a direct call gets the arithmetic the command line sets up
    inits = InitialWeights() if inits is None else inits
    model = SplitHeadModel(plan, m, num_classes, initialise=False)  # the values are drawn below
    built = list(model.named_children())  # construction order, the role stream's order
    streamed = [i for i, (name, _) in enumerate(built) if plan.init[name] not in ("A", "B")]
    stream = (plan.role, seed, "model_random_init")
    role_seed = derived_seed(seed, plan.role, "model_random_init")
    for index, (name, module) in enumerate(built):
        previous, stream = stream, (*stream, layer_signature(module))
        if streamed and index <= streamed[-1]:  # the stream has draws to make here or later
            drawn = inits.layer(stream, module, previous if index else role_seed)
        source = plan.init[name]
        if source in ("A", "B"):
            key = ("init_source", source, name, seed, layer_signature(module))
            drawn = inits.layer(key, module, derived_seed(seed, "init_source", source, name))
        else:
            key = stream
        for p, value in zip(module.parameters(recurse=False), drawn, strict=True):
            p.copy_(value)
        model.identities[name] = key
    model = model.to(device)
    for name in model.layer_names:
        for p in getattr(model, name).parameters(recurse=False):
            p.requires_grad_(bool(plan.trainable[name]))
    model.stamp(model.identities)
    return model


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)

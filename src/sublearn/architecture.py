"""What a model looks like before torch builds it: the CNN spec syntax and its geometry, the model plan
(layer names, sources, trainability) and one walk over the layers, which the model (model.py) builds
from and the cost model (cost.py) counts. Torch-free.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .catalog import IMAGE_SHAPE
from .errors import bad_value

if TYPE_CHECKING:
    from .config import ExperimentConfig

from .syntax import parse_bool, parse_init_source, parse_int_list, parse_layer_config

MODEL_TYPES = ("mlp", "cnn")
# A layer is an attribute of its torch module: a layer named like one of the module's own attributes
# (forward, training, ...) would replace it. tests/test_integrity.py checks this list against torch.
MODULE_ATTRIBUTES = frozenset({
    "T_destination", "add_module", "apply", "aux_logits", "bfloat16", "buffers", "call_super_init", "children",
    "class_logits", "compile", "cpu", "cuda", "double", "dump_patches", "eval", "extra_repr", "features", "float",
    "forward", "get_buffer", "get_extra_state", "get_parameter", "get_submodule", "half", "identities", "identity",
    "ipu", "layer_names", "load_state_dict", "modules", "mtia", "named_buffers", "named_children", "named_modules",
    "named_parameters", "parameters", "register_backward_hook", "register_buffer", "register_forward_hook",
    "register_forward_pre_hook", "register_full_backward_hook", "register_full_backward_pre_hook",
    "register_load_state_dict_post_hook", "register_load_state_dict_pre_hook", "register_module",
    "register_parameter", "register_state_dict_post_hook", "register_state_dict_pre_hook", "requires_grad_",
    "set_extra_state", "set_submodule", "share_memory", "stamp", "stamped", "state_dict", "steps", "to", "to_empty",
    "train", "training", "type", "xpu", "zero_grad"})
LAYER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
ACTIVATIONS = ("relu", "gelu", "tanh", "sigmoid", "none", "identity", "linear")
MAX_POOLS = ("max", "maxpool", "maxpool2d")
AVG_POOLS = ("avg", "average", "avgpool", "avgpool2d")
ADAPTIVE_POOLS = ("adaptive_avg", "adaptive_average")
HEAD_NAMES = ("class_head", "aux_head")


def default_cnn_spec(latent_dim: int) -> list[dict[str, Any]]:
    conv = {"type": "conv2d", "kernel_size": 3, "padding": 1, "activation": "relu"}
    return [
        {"name": "conv1", **conv, "out_channels": 32, "pool": {"type": "max", "kernel_size": 2}},
        {"name": "conv2", **conv, "out_channels": 64, "pool": {"type": "max", "kernel_size": 2}},
        {"name": "fc1", "type": "linear", "out_features": int(latent_dim), "activation": "relu"},
    ]


def _pair(value: Any, flag: str, what: str, minimum: int) -> tuple[int, int]:
    items = value if isinstance(value, list | tuple) else [value, value]
    ok = len(items) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in items)
    if not ok:
        raise bad_value(flag, value, f"{what} must be an integer >= {minimum} or a pair of them")
    return int(items[0]), int(items[1])


def _window_out(size: tuple[int, int], kernel, stride, padding, dilation) -> tuple[int, int]:
    return tuple(
        math.floor((s + 2 * p - d * (k - 1) - 1) / st + 1)
        for s, k, st, p, d in zip(size, kernel, stride, padding, dilation, strict=True)
    )


def _positive_int(spec: dict, key: str, flag: str) -> int:
    value = spec.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise bad_value(flag, value, f"{key} of layer {spec.get('name')!r} must be a positive integer")
    return value


def _check_activation(value: Any, flag: str) -> None:
    if value is not None and str(value).lower() not in ACTIVATIONS:
        raise bad_value(flag, value, f"allowed activations: {', '.join(ACTIVATIONS)}")


def normalize_cnn_spec(spec: Any, flag: str) -> tuple[list[dict[str, Any]], int]:
    """Validate a CNN feature spec; return it with resolved names/types and the feature width."""
    if not isinstance(spec, list) or not spec or not all(isinstance(x, dict) for x in spec):
        raise bad_value(flag, spec, "expected a non-empty JSON list of layer objects")
    channels, hw = IMAGE_SHAPE[0], IMAGE_SHAPE[1:]
    flat: int | None = None
    counts = {"conv2d": 0, "linear": 0}
    out: list[dict[str, Any]] = []
    for raw in spec:
        entry = dict(raw)
        kind = str(entry.get("type", "")).lower()
        kind = "conv2d" if kind == "conv" else kind
        if kind not in counts:
            raise bad_value(flag, entry.get("type"), "allowed layer types: conv2d, linear")
        counts[kind] += 1
        entry["type"] = kind
        entry["name"] = str(entry.get("name") or (f"conv{counts[kind]}" if kind == "conv2d" else f"fc{counts[kind]}"))
        if entry["name"] in HEAD_NAMES or entry["name"] in {e["name"] for e in out} or entry["name"] == "all":
            raise bad_value(flag, entry["name"], "layer names must be unique and not class_head, aux_head or all")
        if not LAYER_NAME.match(entry["name"]) or entry["name"] in MODULE_ATTRIBUTES:
            raise bad_value(flag, entry["name"], "a layer name is a letter then letters, digits or _, and not an "
                                                 "attribute of a torch module (forward, training, eval, ...)")
        _check_activation(entry.get("activation", "relu"), flag)
        if "bias" in entry:
            entry["bias"] = parse_bool(entry["bias"], flag)
        if kind == "conv2d":
            if flat is not None:
                raise bad_value(flag, entry["name"], "conv2d layers must come before linear layers")
            channels = _positive_int(entry, "out_channels", flag)
            hw = conv_output_hw(entry, hw, flag)
            if min(hw) < 1:
                raise bad_value(flag, entry["name"], f"the feature map shrinks to {hw[0]}x{hw[1]}; reduce kernel/pool")
        else:
            flat = _positive_int(entry, "out_features", flag)
        out.append(entry)
    return out, flat if flat is not None else channels * hw[0] * hw[1]


def conv_output_hw(entry: dict, hw: tuple[int, int], flag: str) -> tuple[int, int]:
    """Spatial size after a conv2d entry and its optional pool."""
    kernel = _pair(entry.get("kernel_size", 3), flag, "kernel_size", 1)
    stride = _pair(entry.get("stride", 1), flag, "stride", 1)
    padding = _pair(entry.get("padding", 0), flag, "padding", 0)
    dilation = _pair(entry.get("dilation", 1), flag, "dilation", 1)
    hw = _window_out(hw, kernel, stride, padding, dilation)
    if entry.get("pool") and min(hw) >= 1:
        hw = _pool_out(entry["pool"], hw, flag)
    return hw


def _pool_out(pool: Any, hw: tuple[int, int], flag: str) -> tuple[int, int]:
    if not isinstance(pool, dict):
        raise bad_value(flag, pool, "pool must be an object such as {\"type\": \"max\", \"kernel_size\": 2}")
    kind = str(pool.get("type", "max")).lower()
    if kind in ADAPTIVE_POOLS:
        return _pair(pool.get("output_size", 1), flag, "output_size", 1)
    if kind not in MAX_POOLS + AVG_POOLS:
        raise bad_value(flag, pool.get("type"), f"allowed pools: {', '.join(MAX_POOLS + AVG_POOLS + ADAPTIVE_POOLS)}")
    kernel = _pair(pool.get("kernel_size", 2), flag, "pool kernel_size", 1)
    stride = _pair(pool.get("stride", pool.get("kernel_size", 2)), flag, "pool stride", 1)
    padding = _pair(pool.get("padding", 0), flag, "pool padding", 0)
    return _window_out(hw, kernel, stride, padding, (1, 1))


@dataclass
class ModelPlan:
    """What a model will look like, known before torch builds it."""

    role: str
    model_type: str
    hidden_dims: list[int]
    feature_spec: list[dict[str, Any]] | None
    layer_names: list[str]
    init: dict[str, str]
    trainable: dict[str, bool]

    def arch_description(self) -> dict[str, Any]:
        if self.model_type == "mlp":
            return {"type": "mlp", "hidden_dims": list(self.hidden_dims)}
        return {"type": "cnn", "feature_spec": self.feature_spec}


def plan_model(config: ExperimentConfig, role: str) -> ModelPlan:
    flag = f"--{role}"
    model_type = getattr(config, f"{role}_type")
    # validated here, not only when parsed from a flag: sheets and configs arrive as typed lists
    hidden = parse_int_list(getattr(config, f"{role}_hidden_dims"), f"{flag}-hidden-dims")
    spec_raw = getattr(config, f"{role}_arch_spec")
    if model_type not in MODEL_TYPES:
        raise bad_value(f"{flag}-type", model_type, f"allowed: {', '.join(MODEL_TYPES)}")
    if model_type == "mlp":
        if not hidden:
            raise bad_value(f"{flag}-hidden-dims", hidden, "an MLP needs at least one hidden width")
        feature_spec = None
        names = [f"fc{i}" for i in range(1, len(hidden) + 1)]
    else:
        if spec_raw is None:
            spec_raw = default_cnn_spec(hidden[-1] if hidden else 256)
        feature_spec, _ = normalize_cnn_spec(spec_raw, f"{flag}-arch-spec")
        names = [entry["name"] for entry in feature_spec]
    names += list(HEAD_NAMES)
    init = parse_layer_config(getattr(config, f"{role}_init"), names, "A", parse_init_source, f"{flag}-init")
    trainable = parse_layer_config(getattr(config, f"{role}_trainable"), names, True, parse_bool,
                                   f"{flag}-trainable")
    if not any(trainable.values()):
        raise bad_value(f"{flag}-trainable", getattr(config, f"{role}_trainable"),
                        "at least one layer must be trainable")
    return ModelPlan(role, model_type, hidden, feature_spec, names, init, trainable)


@dataclass(frozen=True)
class Layer:
    """One layer of a model, in construction order (feature layers, then class_head, then aux_head)."""

    name: str
    kind: str  # linear or conv2d
    spec: dict[str, Any]  # activation, and for a conv2d its kernel, stride, padding, dilation, bias and pool
    in_size: int  # input features (linear) or channels (conv2d)
    out_size: int  # output features or channels
    macs: int  # multiply-accumulates per image
    params: int  # (in x kernel + 1) x out: weights and a bias per output
    outputs: int  # output values per image (before any pool)


def layers(plan: ModelPlan, m: int, num_classes: int) -> list[Layer]:
    """The model's layers with their sizes: the one walk over an architecture."""
    out: list[Layer] = []
    if plan.model_type == "mlp":
        width = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]
        for i, hidden in enumerate(plan.hidden_dims, start=1):
            out.append(Layer(f"fc{i}", "linear", {"activation": "relu"}, width, hidden, width * hidden,
                             (width + 1) * hidden, hidden))
            width = hidden
    else:
        channels, hw, width = IMAGE_SHAPE[0], IMAGE_SHAPE[1:], None
        for entry in plan.feature_spec:
            if entry["type"] == "conv2d":
                kernel = entry.get("kernel_size", 3)
                k = kernel * kernel if isinstance(kernel, int) else kernel[0] * kernel[1]
                conv_hw = conv_output_hw({**entry, "pool": None}, hw, "--arch-spec")
                cells = conv_hw[0] * conv_hw[1]
                out.append(Layer(entry["name"], "conv2d", entry, channels, entry["out_channels"],
                                 channels * entry["out_channels"] * k * cells,
                                 (channels * k + 1) * entry["out_channels"], entry["out_channels"] * cells))
                channels, hw = entry["out_channels"], conv_output_hw(entry, hw, "--arch-spec")
            else:
                in_width = width if width is not None else channels * hw[0] * hw[1]
                out.append(Layer(entry["name"], "linear", entry, in_width, entry["out_features"],
                                 in_width * entry["out_features"], (in_width + 1) * entry["out_features"],
                                 entry["out_features"]))
                width = entry["out_features"]
        width = width if width is not None else channels * hw[0] * hw[1]
    heads = (("class_head", num_classes), ("aux_head", m))
    return out + [Layer(name, "linear", {"activation": None}, width, size, width * size, (width + 1) * size, size)
                  for name, size in heads]

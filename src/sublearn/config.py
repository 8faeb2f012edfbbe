"""Experiment configuration: the dataclass, its validation and the per-layer/perturbation syntaxes.

Torch-free on purpose: the Snakemake workflow imports this module to validate grids and compute teacher
keys for thousands of runs without paying for a torch import.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

INIT_SOURCES = ("A", "B", "random")
TIMINGS = (
    "before_teacher_training",
    "after_teacher_training",
    "before_student_training",
    "after_student_training",
)
PERTURB_TARGETS = ("teacher", "student")
NOISE_DISTS = ("uniform", "normal", "perlin")
DATASETS = ("mnist", "emnist")
EMNIST_SPLITS = ("balanced", "letters")
MODEL_TYPES = ("mlp", "cnn")
ACTIVATIONS = ("relu", "gelu", "tanh", "sigmoid", "none", "identity", "linear")
MAX_POOLS = ("max", "maxpool", "maxpool2d")
AVG_POOLS = ("avg", "average", "avgpool", "avgpool2d")
ADAPTIVE_POOLS = ("adaptive_avg", "adaptive_average")
HEAD_NAMES = ("class_head", "aux_head")
BOOL_TRUE = ("true", "1", "yes", "y", "t")
BOOL_FALSE = ("false", "0", "no", "n", "f")
IMAGE_SHAPE = (1, 28, 28)


class UsageError(ValueError):
    """Invalid user input. The CLI prints it as one line and exits with status 2 before any compute."""


class Fault(RuntimeError):
    """A failure that is not the user's input (the CLI exits with status 1 and one line naming it)."""


class Diverged(Fault):
    """Training produced a non-finite loss: the run has no meaningful result."""


def bad_value(flag: str, value: Any, allowed: str) -> UsageError:
    return UsageError(f"{flag}: invalid value {value!r}; {allowed}")


def num_classes_of(dataset: str, emnist_split: str) -> int:
    if dataset == "mnist":
        return 10
    return {"balanced": 47, "letters": 26}[emnist_split]


def dataset_key(dataset: str, emnist_split: str) -> str:
    """Name of a dataset's prepared tensor cache (``<cache-dir>/<key>.pt``)."""
    return "mnist" if dataset == "mnist" else f"emnist-{emnist_split}"


def raw_files(dataset: str, emnist_split: str) -> tuple[str, list[str]]:
    """Folder (relative to the data directory) and IDX file names torchvision reads."""
    if dataset == "mnist":
        names = [f"{p}-{k}-ubyte" for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1")]
        return "MNIST/raw", names
    names = [f"emnist-{emnist_split}-{p}-{k}-ubyte" for p in ("train", "test") for k in ("images-idx3", "labels-idx1")]
    return "EMNIST/raw", names



# --------------------------------------------------------------------------------------------------
# Scalars
# --------------------------------------------------------------------------------------------------


def parse_bool(value: Any, flag: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in BOOL_TRUE:
        return True
    if text in BOOL_FALSE:
        return False
    raise bad_value(flag, value, f"allowed: {', '.join(BOOL_TRUE)} or {', '.join(BOOL_FALSE)}")


def parse_init_source(value: Any, flag: str) -> str:
    text = str(value).strip()
    if text.lower() == "random":
        return "random"
    if text.upper() in ("A", "B"):
        return text.upper()
    raise bad_value(flag, value, f"allowed init sources: {', '.join(INIT_SOURCES)}")


def parse_int_list(value: str | list[int], flag: str) -> list[int]:
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        try:
            number = int(str(item).strip())
        except ValueError:
            raise bad_value(flag, value, "expected comma-separated positive integers, e.g. 256,256") from None
        if number < 1:
            raise bad_value(flag, value, "layer widths must be positive integers")
        out.append(number)
    return out


def load_json_or_path(value: str, flag: str) -> Any:
    """A JSON document given inline or as the path of a file holding it."""
    text = str(value).strip()
    path = Path(text)
    source = text
    if not text.startswith(("[", "{")) and path.exists():
        try:
            source = path.read_text()
        except OSError as exc:
            raise bad_value(flag, value, f"cannot read the file ({exc.strerror})") from None
    try:
        return json.loads(source)
    except json.JSONDecodeError as exc:
        raise bad_value(flag, value, f"expected a JSON document or the path of a JSON file ({exc.msg})") from None


# --------------------------------------------------------------------------------------------------
# Per-layer configs: positional "A,A,random,A" or named "fc1:A,all:random"
# --------------------------------------------------------------------------------------------------


def parse_layer_config(raw: str | None, layer_names: list[str], default: Any, parse_item, flag: str) -> dict:
    if raw is None or not str(raw).strip():
        return dict.fromkeys(layer_names, default)
    parts = [p.strip() for p in str(raw).split(",") if p.strip()]
    available = f"layers: {', '.join(layer_names)}"
    named = [":" in p for p in parts]
    if any(named) and not all(named):
        raise bad_value(flag, raw, f"use either positional or name:value entries, not both ({available})")
    if not any(named):
        if len(parts) != len(layer_names):
            raise bad_value(flag, raw, f"expected {len(layer_names)} positional entries for {available}")
        return {name: parse_item(p, flag) for name, p in zip(layer_names, parts, strict=True)}
    resolved = dict.fromkeys(layer_names, default)
    for part in parts:
        key, value = (x.strip() for x in part.split(":", 1))
        parsed = parse_item(value, flag)
        if key == "all":
            resolved = dict.fromkeys(layer_names, parsed)
        elif key in layer_names:
            resolved[key] = parsed
        else:
            raise bad_value(flag, raw, f"unknown layer {key!r}; available {available} (or all)")
    return resolved


# --------------------------------------------------------------------------------------------------
# CNN feature specs
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Perturbations
# --------------------------------------------------------------------------------------------------


def parse_perturb_shorthand(text: str) -> dict[str, Any]:
    """``student:aux_head,std=0.1,timing=before_student_training`` -> a raw perturbation spec."""
    flag = "--perturb"
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts or ":" not in parts[0]:
        raise bad_value(flag, text, "expected target:layers[,key=value...], e.g. student:aux_head,std=0.1")
    target, layers = (x.strip() for x in parts[0].split(":", 1))
    spec: dict[str, Any] = {"target": target, "layers": layers, "_flag": flag}
    for part in parts[1:]:
        if "=" not in part:
            raise bad_value(flag, text, f"malformed part {part!r}; expected key=value")
        key, value = (x.strip() for x in part.split("=", 1))
        key = "std" if key == "sigma" else key
        if key not in ("std", "timing", "include_weight", "include_bias", "distribution"):
            raise bad_value(flag, text, f"unknown key {key!r}; allowed: std, sigma, timing, include_weight, "
                            "include_bias, distribution")
        spec[key] = value
    return spec


def canonical_perturbations(raw_specs: list[dict], layers_of: dict[str, list[str]]) -> list[dict[str, Any]]:
    specs = []
    for index, raw in enumerate(raw_specs):
        if not isinstance(raw, dict):
            raise bad_value("--perturb-spec", raw, "each perturbation must be a JSON object")
        flag = raw.get("_flag", "--perturb-spec")
        target = str(raw.get("target", "student")).lower()
        if target not in PERTURB_TARGETS:
            raise bad_value(flag, raw.get("target"), f"allowed targets: {', '.join(PERTURB_TARGETS)}")
        timing = str(raw.get("timing", "before_student_training"))
        if timing not in TIMINGS:
            raise bad_value(flag, timing, f"allowed timings: {', '.join(TIMINGS)}")
        std_raw = raw.get("std", raw.get("sigma", 0.0))
        try:
            std = float(std_raw)
        except (TypeError, ValueError):
            raise bad_value(flag, std_raw, "std must be a number >= 0") from None
        if not std >= 0 or math.isinf(std):
            raise bad_value(flag, std_raw, "std must be a finite number >= 0")
        distribution = str(raw.get("distribution", "normal")).lower()
        if distribution != "normal":
            raise bad_value(flag, raw.get("distribution"), "allowed distributions: normal")
        available = layers_of[target]
        selector = raw.get("layers", "all")
        if selector is None or selector == "all":
            layers = list(available)
        else:
            if isinstance(selector, str):
                names = selector.replace("+", ",").replace("|", ",").split(",")
            elif isinstance(selector, list):
                names = [str(x) for x in selector]
            else:
                raise bad_value(flag, selector, "layers must be a name, a list of names, a+b, or all")
            layers = [x.strip() for x in names if x.strip()]
            unknown = [x for x in layers if x not in available]
            if unknown or not layers:
                raise bad_value(flag, selector, f"unknown {target} layer(s) {unknown}; available: "
                                f"{', '.join(available)} (or all)")
        specs.append({
            "index": index,
            "target": target,
            "timing": timing,
            "layers": layers,
            "std": std,
            "include_weight": parse_bool(raw.get("include_weight", True), flag),
            "include_bias": parse_bool(raw.get("include_bias", True), flag),
            "distribution": distribution,
        })
    return specs


# --------------------------------------------------------------------------------------------------
# The experiment configuration
# --------------------------------------------------------------------------------------------------


@dataclass
class ExperimentConfig:
    """Every setting of one run, with the reference's names and defaults."""

    dataset: str = "mnist"
    data_dir: str = "./data"
    outdir: str = "./outputs"
    emnist_split: str = "balanced"
    class_count: int | None = None
    class_selection: str = "first"
    num_workers: int = 0
    seed: int = 42
    device: str = "auto"

    teacher_type: str = "mlp"
    student_type: str = "mlp"
    teacher_hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    student_hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    teacher_arch_spec: list[dict[str, Any]] | None = None
    student_arch_spec: list[dict[str, Any]] | None = None
    m: int = 10

    teacher_init: str | None = None
    student_init: str | None = None
    teacher_trainable: str | None = None
    student_trainable: str | None = None

    teacher_epochs: int = 5
    student_epochs: int = 5
    data_bsize: int = 1024
    noise_bsize: int = 1000
    noise_steps: int = 60
    teacher_lr: float = 1e-3
    student_lr: float = 1e-3

    noise_dist: str = "uniform"
    perlin_res: int = 8
    normalize_noise: bool = False
    eval_noise_batches: int = 10
    eval_noise_bsize: int = 1000

    perturb_specs: list[dict[str, Any]] = field(default_factory=list)
    sweep_name: str = "default"
    run_label: str = ""
    append_global: bool = False

    threads: int | None = None
    cache_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["perturb_specs"] = [{k: v for k, v in spec.items() if not k.startswith("_")}
                                   if isinstance(spec, dict) else spec for spec in self.perturb_specs]
        return record


# Settings of the job that runs an experiment, not of the experiment: the same run gives the same numbers
# wherever its data live or its files go (threads and device are recorded with every result).
JOB_SETTINGS = ("data_dir", "outdir", "cache_dir", "threads", "device", "num_workers", "append_global")
LABEL_SETTINGS = ("sweep_name", "run_label")
# raw spellings that the resolved model plans and perturbations replace in a run's identity
_PLANNED_SETTINGS = ("teacher_type", "student_type", "teacher_hidden_dims", "student_hidden_dims",
                     "teacher_arch_spec", "student_arch_spec", "teacher_init", "student_init",
                     "teacher_trainable", "student_trainable", "perturb_specs")
# what a run sheet may set for one run (the rest comes from the job)
RUN_SETTINGS = tuple(f.name for f in fields(ExperimentConfig) if f.name not in JOB_SETTINGS)
# the settings as the command line (and the workflow's config) spell them
FLAG_SETTINGS = tuple(f.name for f in fields(ExperimentConfig) if f.name != "perturb_specs") + ("perturb",
                                                                                                   "perturb_spec")


def config_from_flags(flags: dict[str, Any]) -> ExperimentConfig:
    """An ExperimentConfig from settings spelt as the CLI's flags (underscored names): the one translation
    used by the command line and by the workflow's config. ``perturb`` holds shorthand strings and
    ``perturb_spec`` a JSON object/list (or its text or file); widths may be "256,256" or a list; an arch
    spec may be a list or its JSON text or file."""
    values = dict(flags)
    unknown = sorted(set(values) - set(FLAG_SETTINGS))
    if unknown:
        raise UsageError(f"unknown setting(s) {', '.join(unknown)}; allowed: {', '.join(FLAG_SETTINGS)}")
    specs: list = []
    spec = values.pop("perturb_spec", None)
    if spec is not None:
        loaded = load_json_or_path(spec, "--perturb-spec") if isinstance(spec, str) else spec
        loaded = [loaded] if isinstance(loaded, dict) else loaded
        if not isinstance(loaded, list):
            raise bad_value("--perturb-spec", spec, "expected a JSON object or a list of objects")
        specs.extend(loaded)
    shorthands = values.pop("perturb", None) or []
    shorthands = [shorthands] if isinstance(shorthands, str) else shorthands
    specs.extend(parse_perturb_shorthand(item) for item in shorthands)
    for role in ("teacher", "student"):
        if f"{role}_hidden_dims" in values:
            values[f"{role}_hidden_dims"] = parse_int_list(values[f"{role}_hidden_dims"], f"--{role}-hidden-dims")
        arch = values.get(f"{role}_arch_spec")
        if isinstance(arch, str):
            values[f"{role}_arch_spec"] = load_json_or_path(arch, f"--{role}-arch-spec")
    return ExperimentConfig(**_float_rates(values), perturb_specs=specs)


def _float_rates(values: dict[str, Any]) -> dict[str, Any]:
    """Learning rates as floats (YAML and JSON write 1 for 1.0), so equal settings hash equally."""
    for name in ("teacher_lr", "student_lr"):
        if isinstance(values.get(name), int) and not isinstance(values.get(name), bool):
            values[name] = float(values[name])
    return values


def sheet_settings(config: ExperimentConfig) -> dict[str, Any]:
    """A config's run settings as a run sheet holds them (typed JSON values)."""
    return {k: v for k, v in config.to_dict().items() if k in RUN_SETTINGS}


def _type_ok(annotation: str, value: Any) -> bool:
    if value is None:
        return "None" in annotation
    if annotation.startswith("bool"):
        return isinstance(value, bool)
    if annotation.startswith("int"):
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation.startswith("float"):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation.startswith("str"):
        return isinstance(value, str)
    if annotation.startswith("list[int]"):
        return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if annotation.startswith("list"):
        return isinstance(value, list)
    return True


def config_from_settings(settings: dict[str, Any], where: str) -> ExperimentConfig:
    """An ExperimentConfig from a run sheet's typed settings; an unknown key or a value of the wrong type
    is refused with a message naming where it is, the key and what is allowed."""
    if not isinstance(settings, dict):
        raise UsageError(f"{where}: settings must be an object of {{setting: value}}")
    types = {f.name: str(f.type) for f in fields(ExperimentConfig)}
    for key, value in settings.items():
        if key not in RUN_SETTINGS:
            raise UsageError(f"{where}: unknown setting {key!r}; allowed: {', '.join(RUN_SETTINGS)}")
        if not _type_ok(types[key], value):
            raise UsageError(f"{where}: setting {key}: invalid value {value!r}; expected {types[key]}")
    return ExperimentConfig(**_float_rates(dict(settings)))


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


@dataclass
class ResolvedConfig:
    """A validated configuration with everything derived from it that needs no torch."""

    config: ExperimentConfig
    num_classes: int
    teacher: ModelPlan
    student: ModelPlan
    perturbations: list[dict[str, Any]]

    def teacher_settings(self) -> dict[str, Any]:
        """Everything the trained teacher body depends on.

        The teacher's aux_head never receives a gradient, so its trained layers do not depend on m, on
        the aux head's source/trainability or on anything of the student: one teacher serves them all.
        """
        c = self.config
        body = [n for n in self.teacher.layer_names if n != "aux_head"]
        return {
            "seed": c.seed,
            "dataset": c.dataset,
            "emnist_split": c.emnist_split if c.dataset == "emnist" else None,
            "class_count": c.class_count,
            "model": self.teacher.arch_description(),
            "init": {n: self.teacher.init[n] for n in body},
            "trainable": {n: self.teacher.trainable[n] for n in body},
            "epochs": c.teacher_epochs,
            "data_bsize": c.data_bsize,
            "lr": c.teacher_lr,
            "perturbations": [
                {**p, "layers": [n for n in p["layers"] if n != "aux_head"]}
                for p in self.perturbations
                if p["target"] == "teacher" and p["timing"] == "before_teacher_training"
            ],
        }

    def teacher_key(self) -> str:
        blob = json.dumps(self.teacher_settings(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def run_settings(self) -> dict[str, Any]:
        """Everything a run's results depend on, in canonical form (equivalent spellings of a layer
        config or a perturbation give the same dict); labels and job settings are left out."""
        c = self.config
        scalars = {k: v for k, v in c.to_dict().items()
                   if k not in JOB_SETTINGS + LABEL_SETTINGS + _PLANNED_SETTINGS}
        scalars["emnist_split"] = c.emnist_split if c.dataset == "emnist" else None
        plans = {role: {"model": plan.arch_description(), "init": plan.init, "trainable": plan.trainable}
                 for role, plan in (("teacher", self.teacher), ("student", self.student))}
        return {**scalars, **plans, "num_classes": self.num_classes, "perturbations": self.perturbations}

    def run_key(self) -> str:
        """The run's identity: equal keys give equal results (on the same device and thread count)."""
        blob = json.dumps(self.run_settings(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def trajectory_key(self) -> str:
        """Runs with equal trajectory keys follow one distillation trajectory, step for step, when they
        share a noise stream: the noise is one continuous stream and epochs only group steps for the
        reported loss, so a run of N x E steps is that trajectory's state after N x E steps (noise_steps
        and student_epochs are left out). The student's class head gets no gradient in distillation and
        feeds nothing the loss sees, so its source, trainability and perturbations are left out too, as
        are perturbations that change nothing before distillation ends (after student training, std 0)."""
        settings = {k: v for k, v in self.run_settings().items() if k not in ("noise_steps", "student_epochs")}
        student = dict(settings["student"])
        for part in ("init", "trainable"):
            student[part] = {n: v for n, v in student[part].items() if n != "class_head"}
        settings["student"] = student
        settings["perturbations"] = [p for p in map(distillation_perturbation, self.perturbations) if p]
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def teacher_config(rc: ResolvedConfig) -> ExperimentConfig:
    """The canonical settings of a run's teacher: its teacher settings, everything else at the defaults, so
    that every run with the same teacher key gives the same config (a teacher job's identity, which adding
    a run never changes). Perturbations keep their positions (a perturbation's random stream depends on its
    index): those that shape the trained teacher are kept, earlier others become no-op placeholders."""
    c, plan = rc.config, rc.teacher
    body = [n for n in plan.layer_names if n != "aux_head"]
    relevant = [p["target"] == "teacher" and p["timing"] == "before_teacher_training" for p in rc.perturbations]
    last = max((i for i, keep in enumerate(relevant) if keep), default=-1)
    specs: list[dict[str, Any]] = []
    for p, keep in zip(rc.perturbations[: last + 1], relevant[: last + 1], strict=True):
        if keep:
            specs.append({"target": "teacher", "layers": [n for n in p["layers"] if n != "aux_head"] or ["aux_head"],
                          "std": p["std"], "timing": "before_teacher_training",
                          "include_weight": p["include_weight"], "include_bias": p["include_bias"]})
        else:
            specs.append({"target": "student", "layers": "all", "std": 0.0})
    return ExperimentConfig(
        dataset=c.dataset, emnist_split=c.emnist_split, class_count=c.class_count, seed=c.seed,
        teacher_type=plan.model_type, teacher_hidden_dims=list(plan.hidden_dims),
        teacher_arch_spec=plan.feature_spec if plan.model_type == "cnn" else None,
        teacher_init=",".join(f"{n}:{plan.init[n]}" for n in body),
        teacher_trainable=",".join(f"{n}:{str(plan.trainable[n]).lower()}" for n in body),
        teacher_epochs=c.teacher_epochs, data_bsize=c.data_bsize, teacher_lr=float(c.teacher_lr),
        perturb_specs=specs)


def distillation_perturbation(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The part of a perturbation that can change a distillation (its aux targets or the student's aux
    path), or None. Each layer draws from its own seed (spec index, timing, target, layer), so dropping
    a layer leaves the others' draws as they were."""
    if spec["timing"] == "after_student_training" or spec["std"] == 0:
        return None
    if not (spec["include_weight"] or spec["include_bias"]):
        return None
    if spec["target"] == "teacher" and spec["timing"] == "before_teacher_training":
        return spec  # the class head trains the teacher's body
    layers = [n for n in spec["layers"] if n != "class_head"]
    return {**spec, "layers": layers} if layers else None


def plan_model(config: ExperimentConfig, role: str) -> ModelPlan:
    flag = f"--{role}"
    model_type = getattr(config, f"{role}_type")
    hidden = list(getattr(config, f"{role}_hidden_dims"))
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


_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _require(flag: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise bad_value(flag, value, allowed)


def resolve(config: ExperimentConfig) -> ResolvedConfig:
    """Validate every setting; raise UsageError naming the first bad one."""
    c = config
    c.dataset = str(c.dataset).lower()
    _require("--dataset", c.dataset, c.dataset in DATASETS, f"allowed: {', '.join(DATASETS)}")
    _require("--emnist-split", c.emnist_split, c.emnist_split in EMNIST_SPLITS,
             f"allowed: {', '.join(EMNIST_SPLITS)}")
    classes = num_classes_of(c.dataset, c.emnist_split)
    if c.class_count is not None:
        _require("--class-count", c.class_count, 2 <= c.class_count <= classes,
                 f"allowed: 2..{classes} for {dataset_key(c.dataset, c.emnist_split)}")
        classes = c.class_count
    _require("--class-selection", c.class_selection, c.class_selection == "first", "allowed: first")
    _require("--device", c.device, bool(_DEVICE_RE.match(str(c.device))), "allowed: auto, cpu, cuda, cuda:N")
    for name in ("m", "data_bsize", "noise_bsize", "eval_noise_bsize", "perlin_res"):
        value = getattr(c, name)
        _require("--" + name.replace("_", "-"), value, value >= 1, "must be an integer >= 1")
    for name in ("teacher_epochs", "student_epochs", "noise_steps", "eval_noise_batches", "num_workers"):
        value = getattr(c, name)
        _require("--" + name.replace("_", "-"), value, value >= 0, "must be an integer >= 0")
    for name in ("teacher_lr", "student_lr"):
        value = getattr(c, name)
        _require("--" + name.replace("_", "-"), value, math.isfinite(value) and value > 0,
                 "must be a finite number > 0")
    _require("--noise-dist", c.noise_dist, c.noise_dist in NOISE_DISTS, f"allowed: {', '.join(NOISE_DISTS)}")
    _require("--seed", c.seed, 0 <= c.seed < 2**40, "must be an integer in 0..2^40")
    if c.threads is not None:
        _require("--threads", c.threads, c.threads >= 1, "must be an integer >= 1")
    teacher = plan_model(c, "teacher")
    student = plan_model(c, "student")
    perturbations = canonical_perturbations(
        c.perturb_specs, {"teacher": teacher.layer_names, "student": student.layer_names}
    )
    return ResolvedConfig(c, classes, teacher, student, perturbations)

"""The settings of one experiment: the dataclass (the one place their defaults are written), which of
them are the job's, a label or the noise's, and the two ways settings arrive: as the command line's flags
(also the workflow's config) and as a run sheet's typed values. Torch-free.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .catalog import dataset_key, datasets, num_classes_of, splits
from .errors import UsageError, bad_value
from .noise import DISTRIBUTIONS
from .syntax import load_json_or_path, parse_bool, parse_int_list, parse_perturb_shorthand

# Which stage reads a setting (its roles, on the dataclass below): the teacher stage (``teacher``: it shapes
# the trained teacher body, so it is in the teacher key), the student stage (``student``: distillation),
# ``evaluation`` (the accuracies and MSEs reported), the noise stream (``noise``: in every noise key); a
# ``job`` setting says where and how a run is computed, never what it gives; a ``label`` only names it.
# ``teacher_aux``: the teacher stage reads it to build its aux head, which never receives a gradient, so it
# is left out of the teacher key on purpose. tests/test_setting_roles.py records what teacher training and
# the student stage read.
ROLES = ("teacher", "teacher_aux", "student", "evaluation", "noise", "job", "label")


@dataclass(frozen=True)
class Range:
    """The values a setting allows beyond its type (the dataclass annotation): plan.resolve checks every
    setting that declares one, in the dataclass's order, and names the first bad one (None passes where the
    type allows it). Numbers: ``minimum`` (inclusive), ``above`` and ``below`` (exclusive), ``maximum``
    (inclusive; a function of the config where other settings fix it), ``finite``; text: ``choices`` (a
    function where a registry holds them, read when checked) or a ``pattern``. ``words``: what the error says
    is allowed, where the bounds do not say it (a function of the config where it depends on others)."""

    minimum: int | None = None
    above: float | None = None
    below: int | None = None
    maximum: Callable[[Any], int] | None = None
    finite: bool = False
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None
    pattern: str | None = None
    words: str | Callable[[Any], str] | None = None

    def options(self) -> tuple[str, ...] | None:
        """The allowed values of a setting that has a fixed set of them, else None."""
        if self.choices is None:
            return None
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def allows(self, value: Any, config: Any) -> bool:
        if self.choices is not None:
            return value in self.options()
        if self.pattern is not None:
            return bool(re.match(self.pattern, str(value)))
        return ((self.minimum is None or value >= self.minimum) and (self.above is None or value > self.above)
                and (self.below is None or value < self.below)
                and (self.maximum is None or value <= self.maximum(config))
                and (not self.finite or math.isfinite(value)))

    def allowed(self, config: Any) -> str:
        """What is allowed, in the words of the error."""
        if self.words is not None:
            return self.words(config) if callable(self.words) else self.words
        if self.choices is not None:
            return f"allowed: {', '.join(self.options())}"
        if self.finite and self.above is not None and self.minimum is None:
            return f"must be a finite number > {self.above:g}"
        if self.minimum is not None and (self.above, self.below, self.maximum) == (None, None, None):
            return f"must be an integer >= {self.minimum}"
        raise ValueError(f"{self}: say in words what it allows")


def _classes(c: Any) -> int:
    return num_classes_of(c.dataset, c.emnist_split)


AT_LEAST_0 = Range(minimum=0)
AT_LEAST_1 = Range(minimum=1)
RATE = Range(above=0, finite=True)
CLASS_COUNT = Range(minimum=2, maximum=_classes,
                    words=lambda c: f"allowed: 2..{_classes(c)} for {dataset_key(c.dataset, c.emnist_split)}")
SEED = Range(minimum=0, below=2**40, words="must be an integer in 0..2^40")
DEVICE = Range(pattern=r"^(auto|cpu|cuda(:\d+)?)$", words="allowed: auto, cpu, cuda, cuda:N")


def setting(default: Any = None, *roles: str, factory: Any = None, teacher_name: str | None = None,
            allowed: Range | None = None, column: str | bool = True) -> Any:
    """A dataclass field that declares its roles (and, for the teacher key, its name there when it differs),
    the values it allows beyond its type (``allowed``: checked by plan.resolve) and its runs.csv column
    (``column``: True for its own name, another name, or False for none; records.setting_columns)."""
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}; known: {ROLES}")
    metadata = {"roles": frozenset(roles), "noise": "noise" in roles, "teacher_name": teacher_name,
                "range": allowed, "column": column}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


DATA = ("teacher", "student", "evaluation")  # the data every stage reads
TEACHER_MODEL = ("teacher", "student", "evaluation")  # the student stage runs the trained teacher too


@dataclass
class ExperimentConfig:
    """Every setting of one run, with the reference's names and defaults, and the roles it plays."""

    dataset: str = setting("mnist", *DATA, allowed=Range(choices=datasets))
    data_dir: str = setting("./data", "job")
    outdir: str = setting("./outputs", "job")
    emnist_split: str = setting("balanced", *DATA, allowed=Range(choices=splits))
    class_count: int | None = setting(None, *DATA, allowed=CLASS_COUNT)
    # only "first" is allowed: the labels class_count keeps
    class_selection: str = setting("first", "student", allowed=Range(choices=("first",)))
    num_workers: int = setting(0, "job", allowed=AT_LEAST_0, column=False)
    seed: int = setting(42, "teacher", "student", "evaluation", allowed=SEED)
    device: str = setting("auto", "job", allowed=DEVICE, column=False)  # the device column: where it ran

    teacher_type: str = setting("mlp", *TEACHER_MODEL)
    student_type: str = setting("mlp", "student", "evaluation")
    teacher_hidden_dims: list[int] = setting(None, *TEACHER_MODEL, factory=lambda: [256, 256])
    student_hidden_dims: list[int] = setting(None, "student", "evaluation", factory=lambda: [256, 256])
    # an arch spec has no column of its own: the arch description columns hold the model it gives
    teacher_arch_spec: list[dict[str, Any]] | None = setting(None, *TEACHER_MODEL, column=False)
    student_arch_spec: list[dict[str, Any]] | None = setting(None, "student", "evaluation", column=False)
    m: int = setting(10, "teacher_aux", "student", "evaluation", allowed=AT_LEAST_1)

    teacher_init: str | None = setting(None, *TEACHER_MODEL, column="teacher_init_config")
    student_init: str | None = setting(None, "student", "evaluation", column="student_init_config")
    teacher_trainable: str | None = setting(None, *TEACHER_MODEL, column="teacher_trainable_config")
    student_trainable: str | None = setting(None, "student", "evaluation",
                                              column="student_trainable_config")

    teacher_epochs: int = setting(5, "teacher", teacher_name="epochs", allowed=AT_LEAST_0)
    student_epochs: int = setting(5, "student", allowed=AT_LEAST_0)
    data_bsize: int = setting(1024, "teacher", "evaluation", allowed=AT_LEAST_1)
    noise_bsize: int = setting(1000, "student", allowed=AT_LEAST_1)
    noise_steps: int = setting(60, "student", allowed=AT_LEAST_0)
    teacher_lr: float = setting(1e-3, "teacher", teacher_name="lr", allowed=RATE)
    student_lr: float = setting(1e-3, "student", allowed=RATE)

    noise_dist: str = setting("uniform", "noise", "student", "evaluation",
                              allowed=Range(choices=lambda: tuple(DISTRIBUTIONS)))
    perlin_res: int = setting(8, "noise", "student", "evaluation", allowed=AT_LEAST_1)
    normalize_noise: bool = setting(False, "noise", "student", "evaluation")
    eval_noise_batches: int = setting(10, "evaluation", allowed=AT_LEAST_0)
    eval_noise_bsize: int = setting(1000, "evaluation", allowed=AT_LEAST_1)

    perturb_specs: list[dict[str, Any]] = setting(None, "teacher", "student", "evaluation", factory=list)
    sweep_name: str = setting("default", "label")
    run_label: str = setting("", "label")
    append_global: bool = setting(False, "job", column=False)

    threads: int | None = setting(None, "job", allowed=AT_LEAST_1, column=False)  # the threads column: as run
    cache_dir: str | None = setting(None, "job", column=False)

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["perturb_specs"] = [{k: v for k, v in spec.items() if not k.startswith("_")}
                                   if isinstance(spec, dict) else spec for spec in self.perturb_specs]
        return record




def settings_with(role: str) -> tuple[str, ...]:
    """The settings that declare ``role``, in the dataclass's order."""
    return tuple(f.name for f in fields(ExperimentConfig) if role in f.metadata["roles"])


# Settings of the job that runs an experiment, not of the experiment: the same run gives the same numbers
# wherever its data live or its files go (threads and device are recorded with every result).
JOB_SETTINGS = settings_with("job")
LABEL_SETTINGS = settings_with("label")
# the settings the teacher stage reads for what it trains: every one is in the teacher key (plan.teacher_settings)
TEACHER_SETTINGS = settings_with("teacher")
# raw spellings that the resolved model plans and perturbations replace in a run's identity
_PLANNED_SETTINGS = ("teacher_type", "student_type", "teacher_hidden_dims", "student_hidden_dims",
                     "teacher_arch_spec", "student_arch_spec", "teacher_init", "student_init",
                     "teacher_trainable", "student_trainable", "perturb_specs")
# what a run sheet may set for one run (the rest comes from the job)
RUN_SETTINGS = tuple(f.name for f in fields(ExperimentConfig) if f.name not in JOB_SETTINGS)
# the settings that shape the noise stream: every key of a noise stream is derived from this list
NOISE_SETTINGS = settings_with("noise")
# settings whose text is read case-insensitively (lower-cased by ``lower_text``): the command line's flags as
# their argparse type, the workflow's config in ``config_from_flags``
CASE_INSENSITIVE_SETTINGS = ("dataset", "teacher_type", "student_type", "noise_dist")
# each setting's runs.csv column (records.setting_columns writes them), by setting, in the dataclass's order
RUNS_COLUMNS = {f.name: f.name if f.metadata["column"] is True else f.metadata["column"]
                for f in fields(ExperimentConfig) if f.metadata["column"]}
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
    for key in CASE_INSENSITIVE_SETTINGS:
        if key in values:
            values[key] = lower_text(values[key])
    values = _float_rates(values)
    types = _setting_types()
    for key, value in values.items():
        values[key] = _from_text(key, types[key], value) if isinstance(value, str) else value
    _check_types(values, "")
    return ExperimentConfig(**values, perturb_specs=specs)


def lower_text(value: Any) -> Any:
    """A case-insensitive setting's text in lower case (the one place: the CLI's flags and the workflow's
    config both come here); other values unchanged, for the type check to name."""
    return value.lower() if isinstance(value, str) else value


def _from_text(key: str, annotation: str, text: str) -> Any:
    """A number or boolean setting spelt as text (a filled-in config template, `--config` text) read as
    the command line reads it; other settings keep their text."""
    kind = annotation.split(" ")[0].split("|")[0]
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise UsageError(f"setting {key}: invalid value {text!r}; expected {_expected(annotation)}") from None
    if kind == "bool":
        return parse_bool(text, f"setting {key}")
    return text


def _float_rates(values: dict[str, Any]) -> dict[str, Any]:
    """Learning rates as floats (YAML and JSON write 1 for 1.0), so equal settings hash equally."""
    for name in ("teacher_lr", "student_lr"):
        if isinstance(values.get(name), int) and not isinstance(values.get(name), bool):
            values[name] = float(values[name])
    return values


def sheet_settings(config: ExperimentConfig) -> dict[str, Any]:
    """A config's run settings as a run sheet holds them (typed JSON values)."""
    return {k: v for k, v in config.to_dict().items() if k in RUN_SETTINGS}


def _setting_types() -> dict[str, str]:
    return {f.name: str(f.type) for f in fields(ExperimentConfig)}


def _expected(annotation: str) -> str:
    """What a setting's type allows, in words: 'an integer or null'."""
    words = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
             "list[int]": "a list of positive integers", "None": "null"}
    kinds = [k.strip() for k in annotation.split("|")]
    return " or ".join(words.get(k, "a list" if k.startswith("list") else k) for k in kinds)


def _check_types(settings: dict[str, Any], where: str) -> None:
    """Every value of the type its setting declares, else a UsageError naming where, the key, the value
    and what is allowed: the one check of run sheets (the runner's jobs) and of the workflow's config."""
    types = _setting_types()
    for key, value in settings.items():
        if not _type_ok(types[key], value):
            raise UsageError(f"{where}{': ' if where else ''}setting {key}: invalid value {value!r}; "
                             f"expected {_expected(types[key])}")


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
    for key in settings:
        if key not in RUN_SETTINGS:
            raise UsageError(f"{where}: unknown setting {key!r}; allowed: {', '.join(RUN_SETTINGS)}")
    _check_types(settings, where)
    return ExperimentConfig(**_float_rates(dict(settings)))

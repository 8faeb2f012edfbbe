"""A validated experiment: its model plans, canonical perturbations and every identity derived from them
(run, teacher, trajectory, stack, evaluation noise, teacher head). Torch-free.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from typing import Any

from .architecture import ModelPlan, plan_model
from .catalog import num_classes_of, split_of
from .config import (
    _PLANNED_SETTINGS,
    JOB_SETTINGS,
    LABEL_SETTINGS,
    NOISE_SETTINGS,
    TEACHER_SETTINGS,
    ExperimentConfig,
)
from .errors import bad_value
from .syntax import canonical_perturbations


@dataclass
class ResolvedConfig:
    """A validated configuration with everything derived from it that needs no torch."""

    config: ExperimentConfig
    num_classes: int
    teacher: ModelPlan
    student: ModelPlan
    perturbations: list[dict[str, Any]]

    def teacher_settings(self) -> dict[str, Any]:
        """Everything the trained teacher body depends on: every setting whose role is ``teacher``
        (``config.TEACHER_SETTINGS``), the planned ones (model, layers, perturbations) in canonical form.

        The teacher's aux_head never receives a gradient, so its trained layers do not depend on m, on
        the aux head's source/trainability or on anything of the student: one teacher serves them all.
        """
        c = self.config
        body = [n for n in self.teacher.layer_names if n != "aux_head"]
        scalars = {TEACHER_NAMES[name]: value for name, value in teacher_scalars(c).items()}
        return {
            **scalars,
            "emnist_split": split_of(c.dataset, c.emnist_split),
            "model": self.teacher.arch_description(),
            "init": {n: self.teacher.init[n] for n in body},
            "trainable": {n: self.teacher.trainable[n] for n in body},
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
        scalars["emnist_split"] = split_of(c.dataset, c.emnist_split)
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

    def noise_settings(self) -> dict[str, Any]:
        """The settings that shape the noise stream (``config.NOISE_SETTINGS``): the one list from which every
        noise key is derived."""
        return {name: getattr(self.config, name) for name in NOISE_SETTINGS}

    def stack_key(self) -> str:
        """Runs with equal stack keys share every noise batch and every teacher-body forward pass."""
        c = self.config
        return json.dumps({
            "teacher": self.teacher_key(), "noise": [*self.noise_settings().values(), c.noise_bsize],
            "teacher_body": teacher_body_perturbations(self),
        }, sort_keys=True)

    def eval_noise_key(self, moment: str) -> tuple:
        """Runs with equal keys evaluate on the same noise batches (on one device)."""
        c = self.config
        return ("eval_noise", c.seed, moment, c.eval_noise_batches, c.eval_noise_bsize,
                *self.noise_settings().values())

    def teacher_head_key(self) -> str:
        """Runs of one stack with equal keys have equal teacher aux heads: same m and the same perturbations
        of it before distillation (the stack shares the teacher's key, so its initialisation)."""
        perturbations = [{**p, "layers": ["aux_head"]} for p in map(distillation_perturbation, self.perturbations)
                         if p and p["target"] == "teacher" and "aux_head" in p["layers"]]
        return json.dumps([self.config.m, perturbations], sort_keys=True)


# the teacher settings the teacher key holds as they are (the planned ones enter through the model plan), and
# their names there
TEACHER_NAMES = {f.name: f.metadata["teacher_name"] or f.name for f in fields(ExperimentConfig)
                 if f.name in TEACHER_SETTINGS and f.name not in _PLANNED_SETTINGS}


def teacher_scalars(c: ExperimentConfig) -> dict[str, Any]:
    """The teacher settings that are not planned (seed, data, epochs, batch size, rate), by setting name."""
    return {name: getattr(c, name) for name in TEACHER_NAMES}


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
    scalars = teacher_scalars(c)
    scalars["teacher_lr"] = float(scalars["teacher_lr"])
    return ExperimentConfig(
        **scalars,
        teacher_type=plan.model_type, teacher_hidden_dims=list(plan.hidden_dims),
        teacher_arch_spec=plan.feature_spec if plan.model_type == "cnn" else None,
        teacher_init=",".join(f"{n}:{plan.init[n]}" for n in body),
        teacher_trainable=",".join(f"{n}:{str(plan.trainable[n]).lower()}" for n in body),
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


def teacher_body_perturbations(rc: ResolvedConfig) -> list:
    """Perturbations that change the trained teacher body before or during distillation."""
    return [{**p, "layers": [n for n in p["layers"] if n != "aux_head"]} for p in rc.perturbations
            if p["target"] == "teacher" and p["timing"] in ("after_teacher_training", "before_student_training")
            and any(n != "aux_head" for n in p["layers"])]


def setting_flag(name: str) -> str:
    """The command-line flag that sets a setting (the name its errors give)."""
    return "--" + name.replace("_", "-")


def resolve(config: ExperimentConfig) -> ResolvedConfig:
    """Validate every setting (each against the range it declares, config.Range); raise UsageError naming
    the first bad one."""
    c = config
    c.dataset = str(c.dataset).lower()
    for f in fields(ExperimentConfig):
        allowed, value = f.metadata["range"], getattr(c, f.name)
        if allowed is not None and not (value is None and "None" in str(f.type)) and not allowed.allows(value, c):
            raise bad_value(setting_flag(f.name), value, allowed.allowed(c))
    classes = c.class_count if c.class_count is not None else num_classes_of(c.dataset, c.emnist_split)
    teacher = plan_model(c, "teacher")
    student = plan_model(c, "student")
    perturbations = canonical_perturbations(
        c.perturb_specs, {"teacher": teacher.layer_names, "student": student.layer_names}
    )
    return ResolvedConfig(c, classes, teacher, student, perturbations)

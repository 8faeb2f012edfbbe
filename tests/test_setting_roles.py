"""Settings declare their roles on the dataclass (config.setting): what teacher training reads is a teacher
setting (or a job setting, a label, or the aux head's width, which the key leaves out on purpose), and every
teacher setting is in the teacher key; what the student stage reads is a setting its keys hold (or a label),
and each such setting is in its keys. Each check is shown to fail when a role or a key entry is taken away."""

from __future__ import annotations

import dataclasses
import types

import pytest
import torch

from sublearn import plan
from sublearn.config import ExperimentConfig, config_from_flags, settings_with
from sublearn.plan import resolve

# what the teacher stage may read besides the teacher settings
NOT_KEYED = ("teacher_aux", "job", "label")

# a setting of the teacher -> (base flags, the same with only that setting changed)
CNN = [{"type": "conv2d", "out_channels": 4, "kernel_size": 3}]
CHANGED = {
    "dataset": ({}, {"dataset": "kmnist"}),
    "emnist_split": ({"dataset": "emnist"}, {"dataset": "emnist", "emnist_split": "letters"}),
    "class_count": ({}, {"class_count": 5}),
    "seed": ({}, {"seed": 1}),
    "teacher_type": ({}, {"teacher_type": "cnn"}),
    "teacher_hidden_dims": ({}, {"teacher_hidden_dims": "64,64"}),
    "teacher_arch_spec": ({"teacher_type": "cnn"}, {"teacher_type": "cnn", "teacher_arch_spec": CNN}),
    "teacher_init": ({}, {"teacher_init": "A,random,A,A"}),
    "teacher_trainable": ({}, {"teacher_trainable": "true,false,true,true"}),
    "teacher_epochs": ({}, {"teacher_epochs": 2}),
    "data_bsize": ({}, {"data_bsize": 128}),
    "teacher_lr": ({}, {"teacher_lr": 0.01}),
    "perturb_specs": ({}, {"perturb": ["teacher:fc1,std=0.1,timing=before_teacher_training"]}),
}


class Recorder:
    """A config that records which settings are read."""

    def __init__(self, config):
        object.__setattr__(self, "config", config)
        object.__setattr__(self, "read", set())

    def __getattr__(self, name):
        self.read.add(name)
        return getattr(self.config, name)


def reads_outside_their_roles(read: set[str]) -> list[str]:
    allowed = set(settings_with("teacher")).union(*(settings_with(role) for role in NOT_KEYED))
    return sorted(read - allowed)


def teacher_settings_missing_from_the_key() -> list[str]:
    missing = []
    for name in settings_with("teacher"):
        base, changed = (resolve(config_from_flags(flags)) for flags in CHANGED[name])
        if base.teacher_key() == changed.teacher_key():
            missing.append(name)
    return missing


def without_role(monkeypatch, name: str, role: str) -> None:
    """Take a role away from a setting, as a dataclass written without it would have."""
    field = ExperimentConfig.__dataclass_fields__[name]
    metadata = {**field.metadata, "roles": field.metadata["roles"] - {role}}
    monkeypatch.setattr(field, "metadata", types.MappingProxyType(metadata))


@pytest.fixture(scope="module")
def teacher_reads(tiny_data, tiny_cache) -> set[str]:
    """The settings that training one tiny teacher reads (synthetic MNIST, as the runner's tests use)."""
    from sublearn import data
    from sublearn.teacher import train_teacher_stage

    rc = resolve(config_from_flags({"teacher_hidden_dims": "32,32", "teacher_epochs": 1, "data_bsize": 128,
                                    "class_count": 5, "perturb": ["teacher:fc1,std=0.1,timing=before_teacher_training"],
                                    "threads": 1}))
    cache, _ = data.ensure_cache("mnist", "balanced", tiny_data, tiny_cache)
    dataset = data.load(cache, "mnist", "balanced", 5, torch.device("cpu"))
    recorder = Recorder(rc.config)
    rc.config = recorder
    train_teacher_stage(rc, dataset, torch.device("cpu"))
    return set(recorder.read) & {f.name for f in dataclasses.fields(ExperimentConfig)}


def test_every_setting_declares_known_roles():
    for f in dataclasses.fields(ExperimentConfig):
        assert f.metadata["roles"], f"{f.name} declares no role"
    assert set(CHANGED) == set(settings_with("teacher")), "give the new teacher setting another value here"


def test_teacher_training_reads_only_teacher_settings(teacher_reads):
    assert {"teacher_epochs", "teacher_lr", "data_bsize", "seed"} <= teacher_reads  # the recorder sees reads
    assert reads_outside_their_roles(teacher_reads) == []


def test_a_setting_read_by_teacher_training_without_the_teacher_role_is_reported(teacher_reads, monkeypatch):
    without_role(monkeypatch, "teacher_lr", "teacher")
    assert reads_outside_their_roles(teacher_reads) == ["teacher_lr"]


def test_every_teacher_setting_is_in_the_teacher_key():
    assert teacher_settings_missing_from_the_key() == []


def test_a_teacher_setting_left_out_of_the_teacher_key_is_reported(monkeypatch):
    monkeypatch.delitem(plan.TEACHER_NAMES, "teacher_epochs")
    assert teacher_settings_missing_from_the_key() == ["teacher_epochs"]


def test_student_settings_leave_the_teacher_key_alone():
    base = resolve(ExperimentConfig())
    for name, value in {"m": 3, "student_lr": 0.01, "noise_steps": 5, "noise_dist": "normal", "student_epochs": 2,
                        "eval_noise_batches": 2, "sweep_name": "x", "data_dir": "elsewhere"}.items():
        assert "teacher" not in ExperimentConfig.__dataclass_fields__[name].metadata["roles"], name
        changed = resolve(dataclasses.replace(ExperimentConfig(), **{name: value}))
        assert changed.teacher_key() == base.teacher_key(), name


# --------------------------------------------------------------------------------------------------
# The student stage reads only settings that its keys hold: the run key holds every setting of these roles
# (the teacher's through the teacher key), the trajectory key all but two, the stack key the noise's
# --------------------------------------------------------------------------------------------------

KEYED = ("teacher", "teacher_aux", "student", "evaluation", "noise")
# besides: the labels, which name the rows the stage writes (its records copy every setting into runs.csv and
# config.json, so the recorder leaves them out)
STUDENT_NOT_KEYED = ("label",)
# the trajectory key leaves out on purpose what only says how far a trajectory goes (plan.trajectory_key)
TRAJECTORY_LEAVES_OUT = ("noise_steps", "student_epochs")
ONE_VALUE = ("class_selection",)  # allows one value only
STUDENT_CHANGED = {
    **CHANGED,
    "student_type": ({}, {"student_type": "cnn"}),
    "student_hidden_dims": ({}, {"student_hidden_dims": "64,64"}),
    "student_arch_spec": ({"student_type": "cnn"}, {"student_type": "cnn", "student_arch_spec": CNN}),
    "m": ({}, {"m": 3}),
    "student_init": ({}, {"student_init": "random,A,A,A"}),
    "student_trainable": ({}, {"student_trainable": "false,true,true,true"}),
    "student_epochs": ({}, {"student_epochs": 2}),
    "noise_bsize": ({}, {"noise_bsize": 100}),
    "noise_steps": ({}, {"noise_steps": 7}),
    "student_lr": ({}, {"student_lr": 0.01}),
    "noise_dist": ({}, {"noise_dist": "normal"}),
    "perlin_res": ({}, {"perlin_res": 4}),
    "normalize_noise": ({}, {"normalize_noise": True}),
    "eval_noise_batches": ({}, {"eval_noise_batches": 2}),
    "eval_noise_bsize": ({}, {"eval_noise_bsize": 100}),
}


def keyed_settings() -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for role in KEYED for name in settings_with(role)))


def student_reads_outside_their_roles(read: set[str]) -> list[str]:
    allowed = set(keyed_settings()).union(*(settings_with(role) for role in STUDENT_NOT_KEYED))
    return sorted(read - allowed)


def keyed_settings_missing_from_their_keys() -> list[str]:
    """Each setting of a keyed role changes the run key; a student setting the trajectory key too (but those it
    leaves out on purpose); a noise setting the stack key."""
    missing = []
    for name in keyed_settings():
        if name in ONE_VALUE:
            continue
        base, changed = (resolve(config_from_flags(flags)) for flags in STUDENT_CHANGED[name])
        keys = ["run_key"]
        if name in settings_with("student") and name not in TRAJECTORY_LEAVES_OUT:
            keys.append("trajectory_key")
        if name in settings_with("noise"):
            keys.append("stack_key")
        if any(getattr(base, key)() == getattr(changed, key)() for key in keys):
            missing.append(name)
    return missing


@pytest.fixture(scope="module")
def student_reads(tiny_data, tiny_cache) -> set[str]:
    """The settings that the student stage of one tiny run reads (prepare, distil, finish), its records aside."""
    from sublearn import data, student
    from sublearn.records import base_row
    from sublearn.teacher import train_teacher_stage

    device = torch.device("cpu")
    rc = resolve(config_from_flags({
        "teacher_hidden_dims": "32,32", "student_hidden_dims": "32,32", "teacher_epochs": 1, "student_epochs": 2,
        "noise_steps": 2, "noise_bsize": 100, "eval_noise_batches": 2, "eval_noise_bsize": 100, "data_bsize": 128,
        "class_count": 5, "threads": 1,
        "perturb": ["teacher:fc1,std=0.1,timing=after_teacher_training",
                    "student:fc2,std=0.1,timing=before_student_training",
                    "student:aux_head,std=0.1,timing=after_student_training"]}))
    cache, _ = data.ensure_cache("mnist", "balanced", tiny_data, tiny_cache)
    dataset = data.load(cache, "mnist", "balanced", 5, device)
    checkpoint = train_teacher_stage(rc, dataset, device)
    config, recorder = rc.config, Recorder(rc.config)

    def unrecorded(function):
        def copy(*args, **kwargs):
            rc.config = config
            try:
                return function(*args, **kwargs)
            finally:
                rc.config = recorder
        return copy

    rc.config = recorder
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(student, "run_row", unrecorded(student.run_row))
        patch.setattr(student, "config_record", unrecorded(student.config_record))
        patch.setattr(student, "base_row", lambda _, run_id: base_row(config, run_id))
        run = student.prepare_student(rc, dataset, device, checkpoint)
        distilled = {}
        student.distill_stack([run], device, lambda _, loss, seconds: distilled.update(loss=loss, seconds=seconds))
        result = student.finish_student(run, dataset, device, distilled["loss"], distilled["seconds"])
    assert result.run_row["student_epochs"] == 2
    return set(recorder.read) & {f.name for f in dataclasses.fields(ExperimentConfig)}


def test_the_student_stage_reads_only_settings_its_keys_hold(student_reads):
    # the recorder sees the stage's reads: distillation, noise, evaluation, the teacher's key
    assert {"student_lr", "noise_steps", "noise_dist", "eval_noise_bsize", "m", "teacher_lr"} <= student_reads
    assert student_reads_outside_their_roles(student_reads) == []


def test_a_setting_read_by_the_student_stage_without_a_keyed_role_is_reported(student_reads, monkeypatch):
    without_role(monkeypatch, "student_lr", "student")
    assert student_reads_outside_their_roles(student_reads) == ["student_lr"]


def test_every_keyed_setting_is_in_its_keys():
    assert set(STUDENT_CHANGED) | set(ONE_VALUE) == set(keyed_settings()), "give the new setting another value here"
    assert keyed_settings_missing_from_their_keys() == []


def test_a_keyed_setting_left_out_of_the_run_key_is_reported(monkeypatch):
    monkeypatch.setattr(plan, "JOB_SETTINGS", (*plan.JOB_SETTINGS, "student_lr"))
    assert keyed_settings_missing_from_their_keys() == ["student_lr"]

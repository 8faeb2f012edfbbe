"""Settings declare their type (the dataclass annotation) and range (config.setting(allowed=...)): plan.resolve
checks each declared range, so a range added on the dataclass is checked without another line."""

from __future__ import annotations

import dataclasses
import types

import pytest

from sublearn.config import ExperimentConfig, Range
from sublearn.errors import UsageError
from sublearn.plan import resolve, setting_flag

# a value outside each declared range -> what the error says is allowed
BAD = {
    "dataset": ("qmnist", "allowed: mnist, emnist, fashion_mnist, kmnist"),
    "emnist_split": ("digits", "allowed: balanced, letters"),
    "class_count": (11, "allowed: 2..10 for mnist"),
    "class_selection": ("last", "allowed: first"),
    "num_workers": (-1, "must be an integer >= 0"),
    "seed": (2**40, "must be an integer in 0..2^40"),
    "device": ("gpu", "allowed: auto, cpu, cuda, cuda:N"),
    "m": (0, "must be an integer >= 1"),
    "teacher_epochs": (-1, "must be an integer >= 0"),
    "student_epochs": (-1, "must be an integer >= 0"),
    "data_bsize": (0, "must be an integer >= 1"),
    "noise_bsize": (0, "must be an integer >= 1"),
    "noise_steps": (-1, "must be an integer >= 0"),
    "teacher_lr": (float("nan"), "must be a finite number > 0"),
    "student_lr": (0.0, "must be a finite number > 0"),
    "noise_dist": ("pink", "allowed: uniform, normal, perlin"),
    "perlin_res": (0, "must be an integer >= 1"),
    "eval_noise_batches": (-1, "must be an integer >= 0"),
    "eval_noise_bsize": (0, "must be an integer >= 1"),
    "threads": (0, "must be an integer >= 1"),
}


def declared_ranges() -> dict[str, Range]:
    return {f.name: f.metadata["range"] for f in dataclasses.fields(ExperimentConfig) if f.metadata["range"]}


def with_range(monkeypatch, name: str, allowed: Range | None) -> None:
    """Declare another range on a setting, as the dataclass written with it would."""
    field = ExperimentConfig.__dataclass_fields__[name]
    monkeypatch.setattr(field, "metadata", types.MappingProxyType({**field.metadata, "range": allowed}))


def test_every_declared_range_is_checked_naming_the_flag_and_what_it_allows():
    assert set(BAD) == set(declared_ranges()), "give the new range a bad value here"
    for name, (value, allowed) in BAD.items():
        with pytest.raises(UsageError) as caught:
            resolve(ExperimentConfig(**{name: value}))
        assert str(caught.value) == f"{setting_flag(name)}: invalid value {value!r}; {allowed}"


def test_the_edges_of_a_range_pass():
    for name, value in [("seed", 2**40 - 1), ("class_count", 2), ("class_count", None), ("num_workers", 0),
                        ("m", 1), ("threads", None), ("teacher_lr", 1e-9), ("device", "cuda:1")]:
        resolve(ExperimentConfig(**{name: value}))
    resolve(ExperimentConfig(dataset="EMNIST", class_count=47))  # the range of class_count follows the dataset


def test_a_range_declared_on_the_dataclass_is_checked(monkeypatch):
    resolve(ExperimentConfig(student_epochs=0))
    with_range(monkeypatch, "student_epochs", Range(minimum=1))
    with pytest.raises(UsageError, match=r"^--student-epochs: invalid value 0; must be an integer >= 1$"):
        resolve(ExperimentConfig(student_epochs=0))


def test_a_range_taken_away_is_not_checked(monkeypatch):
    with_range(monkeypatch, "m", None)
    assert resolve(ExperimentConfig(m=-3)).config.m == -3


# --------------------------------------------------------------------------------------------------
# runs.csv: each setting's column is the one it declares (config.RUNS_COLUMNS), where the reference has it
# --------------------------------------------------------------------------------------------------

# the settings' columns in runs.csv's order (the reference's, then ours)
SETTING_COLUMNS = (
    "sweep_name", "run_label", "seed", "dataset", "emnist_split", "data_dir", "outdir", "teacher_type",
    "student_type", "teacher_hidden_dims", "student_hidden_dims", "m", "teacher_epochs", "student_epochs",
    "data_bsize", "noise_bsize", "noise_steps", "teacher_lr", "student_lr", "noise_dist", "perlin_res",
    "normalize_noise", "eval_noise_batches", "eval_noise_bsize", "teacher_init_config", "student_init_config",
    "teacher_trainable_config", "student_trainable_config", "perturb_specs", "class_count", "class_selection",
)


def run_header(tiny_args, tmp_path, name: str) -> list[str]:
    import csv

    from sublearn.cli import main

    assert main(["run", *tiny_args, "--run-dir", str(tmp_path / name)]) == 0
    with (tmp_path / name / "runs.csv").open() as handle:
        return next(csv.reader(handle))


def test_every_declared_column_is_in_runs_csv_in_the_reference_order(tiny_args, tmp_path, monkeypatch):
    from sublearn import config, records

    assert tuple(sorted(config.RUNS_COLUMNS.values())) == tuple(sorted(SETTING_COLUMNS))
    header = run_header(tiny_args, tmp_path, "a")
    assert [column for column in header if column in SETTING_COLUMNS] == list(SETTING_COLUMNS)
    # a setting that declares a column reaches the table: after our settings, with its value
    monkeypatch.setattr(records, "RUNS_COLUMNS", {**config.RUNS_COLUMNS, "num_workers": "num_workers"})
    with_more = run_header(tiny_args, tmp_path, "b")
    at = header.index("class_selection") + 1
    assert with_more == header[:at] + ["num_workers"] + header[at:]


# --------------------------------------------------------------------------------------------------
# The command line's flags and the workflow schema's flag list follow the declarations
# --------------------------------------------------------------------------------------------------

# settings a workflow config may not give (its seeds, paths, threads, device and labels are the workflow's),
# and the setting that the command line and the config spell as two flags
WORKFLOW_SETS = ("seed",)
SPELT_AS = {"perturb_specs": ("perturb", "perturb_spec")}
# a setting's type (its annotation) -> its schema in the flag list
SCHEMA_OF_TYPE = {"int": {"$ref": "#/$defs/int_or_template"}, "int | None": {"$ref": "#/$defs/int_or_template"},
                  "float": {"$ref": "#/$defs/number_or_template"}, "bool": {"type": "boolean"}}


def schema_flags() -> dict[str, dict]:
    from pathlib import Path

    import yaml

    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml").read_text())
    return schema["$defs"]["flags"]["properties"]


def workflow_flags(exclude: tuple[str, ...] = ()) -> set[str]:
    """The flags a workflow config may give, from the declarations: every setting but the job's and the labels'
    (and the workflow's own), perturb_specs as its two spellings."""
    from sublearn.config import settings_with

    names = {f.name for f in dataclasses.fields(ExperimentConfig)} - set(settings_with("job")) \
        - set(settings_with("label")) - set(WORKFLOW_SETS) - set(exclude)
    return {flag for name in names for flag in SPELT_AS.get(name, (name,))}


def schema_mismatch() -> tuple[list[str], list[str]]:
    """(declared settings' flags the schema lacks, schema flags no setting declares)."""
    schema, declared = set(schema_flags()), workflow_flags()
    return sorted(declared - schema), sorted(schema - declared)


def test_the_schema_lists_the_flag_of_every_declared_setting_and_no_other():
    assert schema_mismatch() == ([], [])


def test_the_schema_gives_each_number_and_switch_its_declared_type():
    flags = schema_flags()
    for f in dataclasses.fields(ExperimentConfig):
        if f.name in flags and str(f.type) in SCHEMA_OF_TYPE:
            assert flags[f.name] == SCHEMA_OF_TYPE[str(f.type)], f.name


def with_roles(monkeypatch, name: str, *roles: str) -> None:
    field = ExperimentConfig.__dataclass_fields__[name]
    monkeypatch.setattr(field, "metadata", types.MappingProxyType({**field.metadata, "roles": frozenset(roles)}))


def test_a_setting_the_schema_lacks_or_a_flag_no_setting_declares_is_reported(monkeypatch):
    with_roles(monkeypatch, "num_workers", "student")  # a setting a config may give, which the schema lacks
    with_roles(monkeypatch, "m", "job")  # a schema flag of no setting a config may give
    assert schema_mismatch() == (["num_workers"], ["m"])


def test_every_setting_has_a_flag_in_the_run_command_with_its_declared_type_and_default():
    import argparse

    from sublearn.cli import DEFAULTS, build_parser

    parser = build_parser()
    run = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["run"]
    actions = {a.dest: a for a in run._actions}
    for f in dataclasses.fields(ExperimentConfig):
        for flag in SPELT_AS.get(f.name, (f.name,)):
            assert setting_flag(flag) in actions[flag].option_strings, flag
        if f.name in SPELT_AS:
            continue
        action, default = actions[f.name], getattr(DEFAULTS, f.name)
        if str(f.type) == "bool":
            assert isinstance(action, argparse._StoreTrueAction) and default is False, f.name
        elif f.name != "cache_dir":  # its default: $SUBLEARN_CACHE or ~/.cache/sublearn
            text = ",".join(map(str, default)) if isinstance(default, list) else default
            assert action.default == text, f.name
        if f.metadata["range"] is not None and f.metadata["range"].choices is not None:
            assert tuple(action.choices) == f.metadata["range"].options(), f.name
    assert actions["teacher_lr"].type("0.5") == 0.5 and actions["m"].type("3") == 3
    assert actions["dataset"].type("EMNIST") == "emnist"

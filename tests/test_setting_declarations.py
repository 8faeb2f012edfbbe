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


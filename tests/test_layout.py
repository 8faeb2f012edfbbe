"""The runner's layout keeps its promises: one list of noise settings behind every noise key, defaults written
once, no import cycle, torch-free planning modules, and a dataset as one catalog entry (Fashion-MNIST and
KMNIST through `sublearn run` and through a figure's grid)."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sublearn.catalog import CATALOG
from sublearn.cli import _shared_parser, config_from_args, main
from sublearn.config import NOISE_SETTINGS, ExperimentConfig, config_from_flags
from sublearn.plan import resolve

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "sublearn"

# another valid value of each noise setting
OTHER_VALUE = {"noise_dist": "perlin", "perlin_res": 4, "normalize_noise": True}


def test_every_noise_setting_is_in_the_stack_key_and_the_eval_noise_key():
    """Runs that differ in any noise setting must not share a noise stream (stack key) nor a cached
    evaluation (eval-noise key): both keys come from the one list, NOISE_SETTINGS, of the settings marked
    as noise in the dataclass. A new noise setting without a value here fails the test."""
    assert set(NOISE_SETTINGS) == set(OTHER_VALUE), "give the new noise setting another valid value here"
    base = resolve(ExperimentConfig(noise_dist="uniform"))
    for name, value in OTHER_VALUE.items():
        changed = resolve(dataclasses.replace(ExperimentConfig(noise_dist="uniform"), **{name: value}))
        assert changed.stack_key() != base.stack_key(), name
        assert changed.eval_noise_key("student_final") != base.eval_noise_key("student_final"), name
        assert changed.noise_settings()[name] == value


class Recorder:
    """A config that records which settings are read."""

    def __init__(self, config):
        self.config, self.read = config, set()

    def __getattr__(self, name):
        self.read.add(name)
        return getattr(self.config, name)


@pytest.mark.parametrize("normalize", [False, True])
def test_noise_distributions_read_only_noise_settings(normalize):
    """What a distribution reads is a noise setting, so the keys derived from NOISE_SETTINGS cover it."""
    import torch

    from sublearn.noise import DISTRIBUTIONS, sample_noise

    for name in DISTRIBUTIONS:
        config = Recorder(ExperimentConfig(noise_dist=name, normalize_noise=normalize))
        x = sample_noise(3, config, torch.device("cpu"), torch.Generator().manual_seed(0))
        assert tuple(x.shape) == (3, 1, 28, 28) and x.dtype == torch.float32
        assert config.read <= set(NOISE_SETTINGS), (name, config.read - set(NOISE_SETTINGS))


def test_defaults_are_written_once():
    """The command line's defaults come from the dataclass; the workflow's `defaults` (config.yaml) are
    checked against it."""
    parsed = config_from_args(_shared_parser().parse_args(["run"]))
    assert dataclasses.replace(parsed, cache_dir=None) == ExperimentConfig()  # cache_dir: $SUBLEARN_CACHE
    defaults = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["defaults"]
    for name, value in defaults.items():
        assert config_from_flags({name: value}) == ExperimentConfig(), f"config.yaml's default {name}: {value!r}"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
    return names


def test_no_module_imports_one_that_imports_it():
    modules = {p.stem: _imports(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    graph = {m: {d for d in deps if d in modules and d != m} for m, deps in modules.items()}

    def reaches(start, target, seen=()):
        return any(d == target or (d not in seen and reaches(d, target, (*seen, d))) for d in graph[start])

    cycles = sorted(m for m in graph if reaches(m, m))
    assert not cycles, f"import cycle through {cycles}"
    assert max(len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py")) <= 450


def test_planning_modules_import_no_torch():
    """The workflow plans thousands of runs with these; torch would cost seconds per planning."""
    code = ("import sys; import sublearn.sheets, sublearn.grouping, sublearn.cost, sublearn.plan, "
            "sublearn.dataid, sublearn.outputs, sublearn.noise, sublearn.status; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.fixture(scope="module")
def new_datasets(tmp_path_factory) -> Path:
    from sublearn.idx import write_synthetic_dataset

    root = tmp_path_factory.mktemp("new-datasets")
    for seed, dataset in enumerate(("fashion_mnist", "kmnist")):
        write_synthetic_dataset(root, dataset, n_train=600, n_test=200, seed=seed)
    return root


@pytest.mark.parametrize("dataset", ["fashion_mnist", "kmnist"])
def test_a_new_dataset_runs_through_sublearn_run(dataset, new_datasets, tmp_path, capsys):
    info = CATALOG[dataset]
    assert all((new_datasets / info.folder / name).is_file() for name in info.files)  # torchvision's layout
    code = main(["run", "--dataset", dataset, "--data-dir", str(new_datasets), "--cache-dir", str(tmp_path / "c"),
                 "--run-dir", str(tmp_path / "r"), "--device", "cpu", "--threads", "1",
                 "--teacher-hidden-dims", "32,32", "--student-hidden-dims", "32,32", "--teacher-epochs", "2",
                 "--data-bsize", "64", "--student-epochs", "1", "--noise-steps", "3", "--noise-bsize", "100",
                 "--eval-noise-batches", "1", "--eval-noise-bsize", "100"])
    assert code == 0, capsys.readouterr().err
    row = pd.read_csv(tmp_path / "r" / "runs.csv").iloc[0]
    assert row["dataset"] == dataset and row["num_classes"] == 10 and row["test_size"] == 200
    assert row["teacher_final_acc"] > 0.5  # learnable templates: far above chance (0.1)


def test_a_new_dataset_is_refused_with_the_allowed_ones(capsys):
    with pytest.raises(SystemExit) as exit_code:
        main(["run", "--dataset", "notmnist"])
    assert exit_code.value.code == 2
    err = capsys.readouterr().err
    assert all(d in err for d in ("mnist", "emnist", "fashion_mnist", "kmnist"))


def test_a_figure_grid_runs_on_fashion_mnist(new_datasets, tmp_path):
    from test_workflow import base_config, fig2_block, ok, smk, write_config

    workdir = tmp_path / "wf"
    block = fig2_block(m=(3,))
    block["panels"][0]["flags"]["dataset"] = "fashion_mnist"
    cfg = base_config(new_datasets, {"fig2": block}, seeds=(0,))
    write_config(workdir, cfg)
    ok(smk(workdir, "fig2"))
    table = pd.read_csv(workdir / "results" / "tables" / "fig2.csv")
    assert set(table["dataset"]) == {"fashion_mnist"} and len(table) == 2
    assert (workdir / "results" / "figures" / "fig2.png").is_file()
    cache = list((workdir / "resources" / "cache").glob("fashion_mnist-*.pt"))
    assert len(cache) == 1


def test_the_module_table_lists_every_module():
    """docs/internals.md's table of the runner's modules names each module of src/sublearn."""
    import re

    table = (REPO / "docs" / "internals.md").read_text()
    listed = set(re.findall(r"`([a-z_]+\.py)`", table))
    modules = {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    assert modules <= listed, sorted(modules - listed)

"""The Snakemake workflow: config validation, planning, incremental reruns, kill -9 recovery, outputs.

Each test runs Snakemake on the repository's Snakefile in its own working directory (`--directory`),
with a small config written there as config/config.yaml, so tests never share results. The repository's
workflow profile is switched off (`--workflow-profile none`) so that the tests see Snakemake's defaults.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or shutil.which("snakemake")

pytestmark = pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake is not installed")

SMALL = {"mem_mb": 1000, "runtime": 5}
INIT_LABELS = {"same": "A,A,A,A", "rand_hidden": "random,random,A,A"}


def base_config(data_dir: Path, figures: dict, seeds=(0, 1)) -> dict:
    """A complete config with tiny models and few noise batches (seconds per run)."""
    return {
        "results_dir": "results",
        "logs_dir": "logs",
        "data_dir": str(data_dir),
        "cache_dir": "resources/cache",
        "synthetic_emnist": True,
        "synthetic": {"dir": "resources/synthetic", "n_train": 940, "n_test": 235, "seed": 0},
        "device": "cpu",
        "torch_env": "cpu",
        "threads": {"teacher": 1, "student": 1},
        "resources": {k: dict(SMALL) for k in ("data", "teacher", "student", "merge", "plot")},
        "seeds": list(seeds),
        "defaults": {
            "dataset": "mnist", "teacher_hidden_dims": "32,32", "student_hidden_dims": "32,32", "m": 10,
            "teacher_epochs": 1, "student_epochs": 1, "data_bsize": 1024, "noise_bsize": 200,
            "noise_steps": 5, "eval_noise_batches": 1, "eval_noise_bsize": 200,
        },
        "bootstrap": {"resamples": 200, "ci": 0.95, "seed": 0},
        "figures": figures,
    }


def fig2_block(m=(3, 10)) -> dict:
    return {"title": "test figure 2", "panels": [{
        "name": "init", "flags": {"teacher_init": "A,A,A,A"},
        "grid": {"m": list(m), "student_init": {"labels": dict(INIT_LABELS)}},
        "plot": {"x": "m", "hue": "student_init", "cosine": True},
    }]}


def write_config(workdir: Path, cfg: dict) -> None:
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def smk(workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--workflow-profile", "none", "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> str:
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    return out


def planned(workdir: Path, *targets: str) -> dict[str, int]:
    """Jobs a dry run would execute, per rule (empty when nothing is to be done); the batch jobs and the
    teacher jobs (one rule each) are counted together as "batch" and "teachers", with their sheets; "runs"
    and "trained" are the numbers of runs to compute and of teachers to train."""
    return job_counts(ok(smk(workdir, "--dry-run", "--quiet", "rules", *(targets or ("all",)))))


def job_counts(out: str) -> dict[str, int]:
    if "Nothing to be done" in out:
        return {}
    stats = out.split("Job stats:", 1)[1].split("\ntotal", 1)[0]  # Snakemake may print the table twice
    counts: dict[str, int] = {}
    for rule, n in re.findall(r"^(\w+)\s+(\d+)\s*$", stats, flags=re.M):
        if rule != "total":
            key = "batch" if rule.startswith("batch_") else "teachers" if rule.startswith("teachers_") else rule
            counts[key] = counts.get(key, 0) + int(n)
    plan = re.search(r"plan: (\d+) requested runs, (\d+) distinct, (\d+) to compute in (\d+) batch jobs", out)
    if plan:
        counts["runs"] = int(plan.group(3))
        assert counts.get("batch") == int(plan.group(4))
        teachers = re.search(r"plan: (\d+) teachers to train in (\d+) teacher jobs", out)
        if int(teachers.group(1)):
            counts["trained"] = int(teachers.group(1))
        assert counts.get("teachers", 0) <= int(teachers.group(2))  # a job only an unplanned target needs: none
        # a sheet of an interrupted job may be there
        assert counts.pop("sheet", 0) <= counts["batch"] + counts.get("teachers", 0)
    return counts


def plan_line(out: str) -> tuple[int, int, int, int]:
    found = re.search(r"plan: (\d+) requested runs, (\d+) distinct, (\d+) to compute in (\d+) batch jobs", out)
    assert found, out[-3000:]
    return tuple(int(x) for x in found.groups())


def run_dir_of(workdir: Path, figure: str, point: str, seed: int) -> Path:
    tidy = pd.read_csv(workdir / "results" / "tables" / f"{figure}.csv")
    row = tidy[(tidy["point"] == point) & (tidy["seed"] == seed)].iloc[0]
    return workdir / "results" / "runs" / row["run_key"]


@pytest.fixture
def workdir(tmp_path) -> Path:
    path = tmp_path / "wf"
    path.mkdir()
    return path


# --------------------------------------------------------------------------------------------------
# Planning and validation (no runs)
# --------------------------------------------------------------------------------------------------


def test_lint_is_clean():
    result = subprocess.run([SNAKEMAKE, "--lint", "--workflow-profile", "none"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "Lints for" not in out, out[-4000:]


def test_paper_dag_plans_every_run_quickly(workdir):
    """The full paper config: ~16,000 students, one teacher per distinct teacher key (its time is printed:
    timings on a shared machine are noise, so it is not asserted)."""
    (workdir / "config").mkdir()
    shutil.copy(REPO / "config" / "config.yaml", workdir / "config" / "config.yaml")
    started = time.time()
    out = ok(smk(workdir, "--dry-run", "--quiet", "rules", "all"))
    elapsed = time.time() - started
    jobs = job_counts(out)
    # fig2 720 + fig3 (920 + 760 + 80 + 40) + fig4 (8000 + 520 + 520) + fig5 1600 + fig6 3100 requested runs;
    # overlapping panels (fig4's sweeps cross its grid, fig3's and fig6's base points are fig2's) run once
    requested, distinct, to_compute, batches = plan_line(out)
    assert requested == 16260 and distinct == to_compute == jobs["runs"] < requested
    assert batches == jobs["batch"] < 1000
    # fig2/fig4/fig5 and fig3's MLP-student panels share one teacher per seed; fig3's EMNIST panel has one
    # per class count, the CNN panel its own, fig6 one per (D, dataset, class-head trainability)
    # fig3's depth panel trains its teacher with random hidden layers (as the paper's scripts): one more
    assert jobs["trained"] == 20 * (1 + 46 + 1 + 1 + 31 * 3 - 1)  # fig6 mnist D=256 is the shared teacher
    assert jobs["teachers"] < jobs["trained"] / 2  # teacher jobs of several teachers (batch.teacher_max_tflop)
    assert jobs["merge_runs"] == 5 and all(jobs[f"plot_fig{i}"] == 1 for i in range(2, 7))
    print(f"planning the paper took {elapsed:.1f} s")  # speed is measured in bench/, never asserted in a test


def test_longest_batch_jobs_start_first(workdir):
    """Teachers first, then batch jobs longest first (priority: estimated minutes), so that the short jobs
    fill the cores at the end."""
    (workdir / "config").mkdir()
    shutil.copy(REPO / "config" / "config.yaml", workdir / "config" / "config.yaml")
    out = ok(smk(workdir, "--dry-run", "fig2"))
    jobs = re.findall(r"rule batch_\w+:.*?priority: (\d+).*?runtime=(\d+)", out, re.S)
    assert len(jobs) == len(re.findall(r"rule batch_", out)) > 2
    by_runtime = sorted((int(runtime), int(priority)) for priority, runtime in jobs)
    assert [p for _, p in by_runtime] == sorted(p for _, p in by_runtime) and by_runtime[0][1] < by_runtime[-1][1]
    teacher_jobs = re.findall(r"rule teachers_\w+:.*?priority: (\d+)", out, re.S)
    # fig2's 20 teachers (0.37 TFLOP each) in jobs of at most batch.teacher_max_tflop (2): 5 each
    outputs = re.findall(r"rule teachers_\w+:\n\s+input: .*\n\s+output: (.*)", out)
    assert len(teacher_jobs) == 4 and [o.count(".pt") for o in outputs] == [5] * 4
    assert set(teacher_jobs) == {teacher_jobs[0]} and int(teacher_jobs[0]) > by_runtime[-1][1]  # they unblock batches
    # stacked layers: auto by default (the runner decides by device); batch.stack_layers off (YAML: false)
    out = ok(smk(workdir, "--dry-run", "--printshellcmds", "fig2"))
    assert out.count("--stack-layers auto") == len(jobs) + len(teacher_jobs)
    out = ok(smk(workdir, "--dry-run", "--printshellcmds", "fig2", "--config", "batch={stack_layers: off}"))
    assert out.count("--stack-layers off") == len(jobs) + len(teacher_jobs)


def test_a_stack_that_fits_in_a_job_is_never_split(real_mnist, workdir):
    """Batch jobs hold whole stacks (here each seed's 4 runs) while one fits in batch.max_tflop, so no job
    repeats another's noise draws and teacher passes and equal seeds make equal jobs; a stack larger than
    the budget is cut."""
    from sublearn import cost, sheets
    from sublearn.config import config_from_flags
    from sublearn.plan import resolve

    cfg = base_config(real_mnist, {"fig2": fig2_block()}, seeds=(0, 1, 2))
    runs = []
    for m in (3, 10):
        for init in INIT_LABELS.values():
            rc = resolve(config_from_flags({**cfg["defaults"], "teacher_init": "A,A,A,A", "m": m,
                                            "student_init": init, "seed": 0}))
            runs.append(sheets.SheetRun(rc.run_key(), Path(f"{m}{init}"), rc))
    stack = cost.stack_flops(runs, "mnist")
    # 1.5 stacks per job: 3 jobs of one seed (cutting by FLOPs alone makes jobs of 5, 5 and 2 runs); 2.5:
    # two seeds and one; 0.6: each seed's stack cut in two
    for budget, sizes in ((1.5, [4, 4, 4]), (2.5, [4, 8]), (3.2, [12]), (0.6, [2, 2, 2, 2, 2, 2])):
        cfg["batch"] = {"max_tflop": budget * stack / 1e12}
        write_config(workdir, cfg)
        out = ok(smk(workdir, "--dry-run", "all"))
        outputs = re.findall(r"rule batch_\w+:.*?output: ([^\n]*)", out, re.S)
        assert sorted(line.count("runs.csv") for line in outputs) == sizes, budget


def test_quick_preset_replaces_the_paper_grids(workdir):
    """--configfile config/quick.yaml over config/config.yaml: every figure, small grids, 2 seeds; without
    MNIST in data_dir (a fresh clone offline) it plans synthetic MNIST too, and downloads nothing."""
    (workdir / "config").mkdir()
    for name in ("config.yaml", "quick.yaml"):
        shutil.copy(REPO / "config" / name, workdir / "config" / name)
    out = ok(smk(workdir, "--dry-run", "--quiet", "rules", "all", "--configfile", "config/quick.yaml"))
    counts = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", out.split("Job stats:", 1)[1], flags=re.M))
    assert plan_line(out)[0] == 2 * (12 + 9 + 15 + 8 + 15)
    assert all(int(counts[f"plot_fig{i}"]) == 1 for i in range(2, 7))
    assert int(counts["synthetic_emnist_balanced"]) == 1  # synthetic EMNIST, never a download
    assert int(counts["synthetic_mnist"]) == 1 and "prepare_data" not in counts  # no MNIST here: synthetic
    assert "SYNTHETIC MNIST" in out


def test_quick_preset_uses_real_mnist_when_data_dir_has_it(real_mnist, workdir):
    (workdir / "config").mkdir()
    for name in ("config.yaml", "quick.yaml"):
        shutil.copy(REPO / "config" / name, workdir / "config" / name)
    out = ok(smk(workdir, "--dry-run", "--quiet", "rules", "all", "--configfile", "config/quick.yaml",
                 "--config", f"data_dir={real_mnist}"))
    counts = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", out.split("Job stats:", 1)[1], flags=re.M))
    assert "synthetic_mnist" not in counts and int(counts["prepare_data"]) == 1
    assert "SYNTHETIC MNIST" not in out


def sheet_records(workdir: Path, pattern: str = "[!t]*.jsonl") -> list[dict]:
    """The records of the run sheets written (by default; teacher sheets are named teachers-*)."""
    return [json.loads(line) for sheet in (workdir / "results").rglob(f"sheets/{pattern}")
            for line in sheet.read_text().splitlines()]


@pytest.mark.parametrize("config", ["config.yaml", "quick.yaml"])
def test_fig3_depth_teachers_have_random_hidden_layers_and_shared_heads(workdir, config):
    """The paper's student_{minus,plus}_one_layer scripts: teacher all:random,class_head:A,aux_head:A."""
    from sublearn.config import config_from_settings
    from sublearn.plan import resolve

    fig3 = yaml.safe_load((REPO / "config" / config).read_text())["figures"]["fig3"]
    fig3["panels"] = [p for p in fig3["panels"] if p["name"] == "depth"]
    write_config(workdir, base_config(Path("nowhere"), {"fig3": fig3}, seeds=(0,)))
    ok(smk(workdir, "all", "--until", "sheet"))
    records = sheet_records(workdir)
    # the sheet carries no coordinates (the merge's points are their one channel): the depths by their settings
    assert {tuple(r["settings"]["student_hidden_dims"]) for r in records} == {(256,), (256, 256, 256)}
    teachers = sheet_records(workdir, "teachers-*.jsonl")
    assert len(teachers) == 1  # the runs of both depths share their teacher
    rc = resolve(config_from_settings(teachers[0]["settings"], "teacher sheet"))
    assert rc.teacher.init == {"fc1": "random", "fc2": "random", "class_head": "A", "aux_head": "A"}
    for record in records:
        rc = resolve(config_from_settings(record["settings"], "sheet"))
        assert rc.teacher.init == {"fc1": "random", "fc2": "random", "class_head": "A", "aux_head": "A"}
        assert set(rc.student.init.values()) == {"random", "A"}
        assert rc.student.init["class_head"] == rc.student.init["aux_head"] == "A"


def test_fig5_passes_the_stds_as_the_papers_shell_printed_them(workdir):
    """linspace(0, 0.2, 40) with decimals: 8 reaches the runner as the 8-decimal values (run sheets)."""
    paper = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["figures"]["fig5"]
    assert all(p["grid"]["std"] == {"linspace": [0.0, 0.2, 40], "decimals": 8} for p in paper["panels"])
    cfg = base_config(Path("nowhere"), {"fig5": paper}, seeds=(0,))
    write_config(workdir, cfg)
    ok(smk(workdir, "all", "--until", "sheet"))
    records = sheet_records(workdir)
    assert len(records) == 80
    printed = {float(f"{v:.8f}") for v in np.linspace(0, 0.2, 40)}
    stds = {float(v) for r in records for v in re.findall(r"std=([0-9.e-]+)", json.dumps(r["settings"]))}
    stds |= {float(p["std"]) for r in records for p in r["settings"].get("perturb_specs") or []}
    assert stds == printed
    assert max(abs(a - b) for a, b in zip(sorted(printed), np.linspace(0, 0.2, 40), strict=True)) > 1e-9


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(colour="red"), "colour"),
    (lambda c: c["threads"].update(student="one"), "one"),
    (lambda c: c["figures"]["fig2"]["panels"][0]["flags"].update(learning_rate=0.1), "learning_rate"),
    (lambda c: c["figures"]["fig2"]["panels"][0]["flags"].update(teacher_init="A,A,A"),
     "figure fig2, panel init, point m-3_student_init-same: --teacher-init"),
    (lambda c: c["figures"]["fig2"]["panels"][0]["grid"].update(m=["ten"]), "figure fig2, panel init"),
    (lambda c: c["figures"]["fig2"]["panels"][0]["grid"].update(width=[1, 2]), "width are neither runner flags"),
    (lambda c: c["figures"]["fig2"]["panels"][0]["flags"].update(student_hidden_dims="{d1},32"),
     "{d1} is not a grid coordinate"),
    (lambda c: c["figures"]["fig2"]["panels"][0]["grid"].update(m={"range": [1, 5, 0]}),
     "figure fig2, panel init, grid m: range [1, 5, 0]: the step must be an integer >= 1"),
    (lambda c: c["figures"]["fig2"]["panels"][0]["grid"].update(m={"linspace": [1, 5, 3], "decimals": -1}),
     "config.figures.fig2.panels[0].grid.m"),
    (lambda c: c.update(synthetic_mnist="sometimes"), "config.synthetic_mnist"),
    (lambda c: c.setdefault("batch", {}).update(stack_layers="yes"), "config.batch.stack_layers"),
    (lambda c: c["figures"]["fig2"]["panels"][0]["plot"].update(x="width"),
     "figure fig2, panel init: plot x 'width' is neither a grid coordinate"),
])
def test_bad_config_is_refused_before_anything_runs(workdir, change, message):
    cfg = base_config(Path("data"), {"fig2": fig2_block()})
    change(cfg)
    write_config(workdir, cfg)
    result = smk(workdir, "--dry-run", "all")
    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-3000:]
    assert message in out, out[-3000:]
    assert not (workdir / "results").exists() and not (workdir / "resources").exists()


def test_zero_cores_stop_with_one_line_instead_of_waiting_forever(workdir):
    write_config(workdir, base_config(Path("data"), {"fig2": fig2_block()}))
    result = smk(workdir, "all", "--cores", "0", timeout=120)  # the last --cores wins
    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-3000:]
    assert "--cores 0: no job can start without a core; give --cores N with N >= 1" in out, out[-3000:]
    assert not (workdir / "results").exists()


def test_missing_data_stops_with_the_runners_message(workdir):
    cfg = base_config(workdir / "nowhere", {"fig2": fig2_block(m=(3,))}, seeds=(0,))
    write_config(workdir, cfg)
    from sublearn.dataid import cache_file

    result = smk(workdir, str(cache_file("resources/cache", "mnist", "balanced", workdir / "nowhere")))
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "MNIST/raw" in out and "train-images-idx3-ubyte" in out and "data_dir" in out, out[-3000:]


# --------------------------------------------------------------------------------------------------
# Building on real MNIST
# --------------------------------------------------------------------------------------------------


def test_build_is_incremental(real_mnist, workdir):
    cfg = base_config(real_mnist, {"fig2": fig2_block()})
    write_config(workdir, cfg)
    assert planned(workdir) == {"prepare_data": 1, "teachers": 1, "trained": 2, "batch": 1, "runs": 8,
                                "merge_runs": 1, "plot_fig2": 1, "evaluate_claims": 1, "all": 1}
    ok(smk(workdir, "all"))

    results = workdir / "results"
    for ext in ("png", "pdf"):
        assert (results / "figures" / f"fig2.{ext}").stat().st_size > 1000
    tidy = pd.read_csv(results / "tables" / "fig2.csv")
    assert len(tidy) == 8
    assert list(tidy.columns[:6]) == ["figure", "panel", "point", "m", "student_init", "seed"]
    assert sorted(tidy["student_init"].unique()) == ["rand_hidden", "same"]
    assert {json.loads(v)["fc1"] for v in tidy["student_init_config"]} == {"A", "random"}
    assert tidy["student_final_acc"].between(0, 1).all() and tidy["teacher_final_acc"].gt(0.5).all()
    assert tidy.groupby("seed")["teacher_final_acc"].nunique().eq(1).all()  # one teacher per seed
    assert len(pd.read_csv(results / "tables" / "fig2" / "runs_all_seeds.csv")) == 8
    layers = pd.read_csv(results / "tables" / "fig2" / "layer_metrics_all_seeds.csv")
    assert layers["run_id"].nunique() == 8
    assert len(list((results / "teachers").glob("*.pt"))) == 2

    # a finished target: nothing to do
    assert "Nothing to be done" in ok(smk(workdir, "all"))

    # one more seed: only its runs (and its teacher), then the merge and the plot
    cfg["seeds"] = [0, 1, 2]
    write_config(workdir, cfg)
    assert planned(workdir) == {"teachers": 1, "trained": 1, "batch": 1, "runs": 4, "merge_runs": 1,
                                "plot_fig2": 1, "evaluate_claims": 1, "all": 1}
    # one more grid value: only its runs; the teachers do not depend on m
    cfg["figures"]["fig2"]["panels"][0]["grid"]["m"].append(25)
    write_config(workdir, cfg)
    assert planned(workdir) == {"teachers": 1, "trained": 1, "batch": 1, "runs": 10, "merge_runs": 1,
                                "plot_fig2": 1, "evaluate_claims": 1, "all": 1}

    # back to the built config, then a student setting: every student reruns, no teacher
    cfg = base_config(real_mnist, {"fig2": fig2_block()})
    write_config(workdir, cfg)
    assert planned(workdir) == {}
    changed = copy.deepcopy(cfg)
    changed["defaults"]["noise_steps"] = 6
    write_config(workdir, changed)
    assert planned(workdir) == {"batch": 1, "runs": 8, "merge_runs": 1, "plot_fig2": 1, "evaluate_claims": 1, "all": 1}
    # a teacher setting: new teacher keys, so new teachers and all their students
    changed = copy.deepcopy(cfg)
    changed["defaults"]["teacher_epochs"] = 2
    write_config(workdir, changed)
    assert planned(workdir) == {"teachers": 1, "trained": 2, "batch": 1, "runs": 8, "merge_runs": 1,
                                "plot_fig2": 1, "evaluate_claims": 1, "all": 1}
    # a setting of one panel point only
    changed = copy.deepcopy(cfg)
    changed["figures"]["fig2"]["panels"][0]["grid"]["student_init"]["labels"]["rand_hidden"] = "random,A,A,A"
    write_config(workdir, changed)
    assert planned(workdir) == {"batch": 1, "runs": 4, "merge_runs": 1, "plot_fig2": 1, "evaluate_claims": 1, "all": 1}

    # a deleted run is recomputed alone
    write_config(workdir, cfg)
    run = run_dir_of(workdir, "fig2", "m-3_student_init-same", 1)
    (run / "runs.csv").unlink()
    assert planned(workdir) == {"batch": 1, "runs": 1, "merge_runs": 1, "plot_fig2": 1, "evaluate_claims": 1, "all": 1}
    # ... and with its teacher unfinished (a killed teacher job leaves no .json summary), that teacher too
    key = pd.read_csv(results / "tables" / "fig2.csv").query("seed == 1")["teacher_key"].iloc[0]
    teacher = results / "teachers" / f"{key}.json"
    summary = teacher.read_text()
    teacher.unlink()
    assert planned(workdir) == {"teachers": 1, "trained": 1, "batch": 1, "runs": 1, "merge_runs": 1,
                                "plot_fig2": 1, "evaluate_claims": 1, "all": 1}
    ok(smk(workdir, "all"))
    assert json.loads(teacher.read_text())["metrics"] == json.loads(summary)["metrics"]  # the same teacher

    # the HTML report holds the figure, its caption (rendered: the seed count) and its summary table
    ok(smk(workdir, "--report", "report.html"))
    report = workdir / "report.html"
    assert report.stat().st_size > 10_000
    text = report.read_text()
    assert "fig2_summary.html" in text and "fig2_summary.csv" in text and "mean over 2 seeds" in text


def test_changed_data_recomputes_everything_made_from_it(workdir):
    """New raw files (same names and sizes, other images): the cache, the teachers and every finished run
    are computed again, so no figure mixes old and new data; an unchanged folder reruns nothing."""
    from sublearn.dataid import content_identity, raw_paths
    from sublearn.idx import write_synthetic_dataset

    data = workdir / "data"
    write_synthetic_dataset(data, "mnist", n_train=300, n_test=100, seed=11)
    cfg = base_config(data, {"fig2": fig2_block(m=(3,))}, seeds=(0,))
    cfg["figures"]["fig2"]["panels"][0]["grid"]["student_init"]["labels"] = {"same": "A,A,A,A"}
    write_config(workdir, cfg)
    ok(smk(workdir, "all"))
    tidy = workdir / "results" / "tables" / "fig2.csv"
    old = content_identity(raw_paths(data, "mnist", "balanced"))
    assert set(pd.read_csv(tidy)["data_identity"]) == {old}
    assert planned(workdir) == {}

    time.sleep(0.01)
    write_synthetic_dataset(data, "mnist", n_train=300, n_test=100, seed=12)
    new = content_identity(raw_paths(data, "mnist", "balanced"))
    assert new != old
    assert planned(workdir) == {"prepare_data": 1, "teachers": 1, "trained": 1, "batch": 1, "runs": 1,
                                "merge_runs": 1, "plot_fig2": 1, "evaluate_claims": 1, "all": 1}
    # the figure of the old data is replaced: planning says so, naming it, the old data and the way out
    warning = [line for line in ok(smk(workdir, "--dry-run", "all")).splitlines() if "data changed" in line]
    assert len(warning) == 1 and f"fig2 in results/figures (and their tables and claims) were made from other " \
        f"data ({old})" in warning[0] and "own results_dir" in warning[0], warning
    ok(smk(workdir, "all"))
    assert set(pd.read_csv(tidy)["data_identity"]) == {new}
    assert planned(workdir) == {}
    assert "data changed" not in ok(smk(workdir, "--dry-run", "all"))


def test_merge_refuses_runs_of_different_data():
    """The merge's last line of defence: runs of one dataset from two data identities are refused (or,
    allowed, marked); mixed devices or thread counts are named in a warning."""
    import importlib.util

    sys.path.insert(0, str(REPO / "workflow" / "scripts"))
    spec = importlib.util.spec_from_file_location("merge", REPO / "workflow" / "scripts" / "merge.py")
    merge = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(merge)

    def runs(identities, devices=("cpu",) * 3):
        return pd.DataFrame({"dataset": ["mnist", "mnist", "emnist"], "emnist_split": ["balanced"] * 3,
                             "data_identity": identities, "device": list(devices), "threads": [1, 1, 1],
                             "torch_version": ["2"] * 3, "outdir": ["results/runs/a", "results/runs/b",
                                                                     "results/runs/c"]})

    merge.check_provenance(runs(["sha256:1", "sha256:1", "sha256:2"]), "fig9", False)  # two datasets: fine
    with pytest.raises(SystemExit) as refused:
        merge.check_provenance(runs(["sha256:1", "sha256:3", "sha256:2"]), "fig9", False)
    assert "fig9" in str(refused.value) and "results/runs/b" in str(refused.value)
    assert "sha256:1" in str(refused.value) and "sha256:3" in str(refused.value)
    allowed = runs(["sha256:1", "sha256:3", "sha256:2"], devices=("cpu", "cuda:0", "cpu"))
    merge.check_provenance(allowed, "fig9", True)
    assert list(allowed["mixed_data"]) == [True, True, False]


def test_one_snakemake_at_a_time_per_results_dir(workdir):
    """A second checkout (or a second Snakemake) sharing results_dir stops at once, naming the first."""
    import fcntl

    write_config(workdir, base_config(workdir / "nowhere", {"fig2": fig2_block(m=(3,))}, seeds=(0,)))
    lock = workdir / "results" / ".sublearn.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 1 on elsewhere, working directory /other/checkout\n")
        held.flush()
        result = smk(workdir, "all")
        assert result.returncode != 0
        assert "in use by another Snakemake (pid 1 on elsewhere" in result.stdout + result.stderr
        assert not (workdir / "resources").exists()  # nothing ran
        assert "plan:" in ok(smk(workdir, "-n", "all"))  # a dry run writes nothing: allowed


def test_a_failed_batch_keeps_the_runs_it_finished(workdir):
    """One run of a batch diverges: the job fails, naming it, and (with the repository's profile, which
    keeps the outputs of failed jobs: each runs.csv is written whole and last) the batch's finished run
    stays; the next invocation plans only the failed run."""
    from sublearn.idx import write_synthetic_dataset

    data = workdir / "data"
    write_synthetic_dataset(data, "mnist", n_train=300, n_test=100, seed=11)
    cfg = base_config(data, {"fig2": {"title": "t", "panels": [{
        "name": "lr", "grid": {"student_lr": [0.001, 1e9]}, "plot": {"x": "student_lr"}}]}}, seeds=(0,))
    write_config(workdir, cfg)
    assert planned(workdir)["batch"] == 1
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--workflow-profile", str(REPO / "profiles" / "default"), "--cores", "2", "all"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    logs = "".join(p.read_text() for p in (workdir / "logs" / "batches").glob("*.log"))
    assert "1 of 2 runs diverged" in logs, logs[-2000:]
    kept = list((workdir / "results" / "runs").glob("*/runs.csv"))
    assert len(kept) == 1 and pd.read_csv(kept[0])["student_lr"].iloc[0] == 0.001
    assert planned(workdir)["runs"] == 1


def _children_running(workdir: Path, needle: str) -> list[int]:
    """PIDs of processes whose working directory is `workdir` and whose command line holds `needle`
    (all of them started by this test's Snakemake)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.readlink(proc / "cwd") != str(workdir):
                continue
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if needle in cmdline and "bash" not in cmdline.split(" ", 1)[0]:
            found.append(int(proc.name))
    return found


def _start_and_wait_for_student(workdir: Path) -> tuple[subprocess.Popen, int]:
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--workflow-profile", "none", "--cores", "1", "all"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        pids = _children_running(workdir, "sublearn.cli batch")
        if pids:
            time.sleep(2)  # let it get going
            return proc, pids[0]
        assert proc.poll() is None, "snakemake ended before a student started"
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("no student started within 240 s")


def test_killed_runs_are_recomputed(real_mnist, workdir):
    """kill -9 of a student, then of the whole Snakemake process group: nothing left is taken for a
    result, and the next run computes the run again. (Had the kill come after runs.csv was written but
    before Snakemake recorded the job as done, Snakemake would refuse the file as incomplete until run
    with --rerun-incomplete.)"""
    cfg = base_config(real_mnist, {"fig2": fig2_block(m=(3,))}, seeds=(0,))
    cfg["figures"]["fig2"]["panels"][0]["grid"]["student_init"]["labels"] = {"same": "A,A,A,A"}
    cfg["defaults"].update(noise_steps=3000)  # a student of ~10 s
    write_config(workdir, cfg)
    runs = workdir / "results" / "runs"

    # 1. the student process dies: Snakemake records the failure and removes the incomplete output
    proc, student = _start_and_wait_for_student(workdir)
    os.kill(student, signal.SIGKILL)
    assert proc.wait(timeout=120) != 0
    assert not list(runs.glob("*/runs.csv"))
    assert planned(workdir).get("runs") == 1

    # 2. Snakemake and its job die together (e.g. the machine goes down): the runner writes runs.csv
    #    last and atomically, so the half-done run left no runs.csv, and the next run redoes it
    proc, student = _start_and_wait_for_student(workdir)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    for _ in range(100):  # the student is in the same process group; wait until it is gone
        if not _children_running(workdir, "sublearn.cli batch"):
            break
        time.sleep(0.1)
    assert not list(runs.glob("*/runs.csv"))
    locked = smk(workdir, "all")  # Snakemake's own lock outlived it: it asks for --unlock first
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    ok(smk(workdir, "--unlock"))
    ok(smk(workdir, "all"))
    assert [len(pd.read_csv(f)) for f in runs.glob("*/runs.csv")] == [1]
    assert "Nothing to be done" in ok(smk(workdir, "all"))


def test_every_figure_builds(real_mnist, workdir):
    """All five figures end to end on a minimal grid (1 seed, synthetic EMNIST)."""
    depth = {"labels": {"minus_one": "32", "plus_one": "32,32,32"}}
    cnn = [{"name": "conv1", "type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1,
            "activation": "relu", "pool": {"type": "max", "kernel_size": 4}},
           {"name": "fc1", "type": "linear", "out_features": 16, "activation": "relu"}]
    dims = {"teacher_hidden_dims": "32,{d}", "student_hidden_dims": "32,{d}"}
    perturb = "student:{head},std={std},timing=before_student_training"
    figures = {
        "fig2": fig2_block(m=(3, 10)),
        "fig3": {"panels": [
            {"name": "emnist_classes", "flags": {"dataset": "emnist", "m": 20}, "grid": {"class_count": [2, 47]}},
            {"name": "first_width", "flags": {"student_hidden_dims": "{d1},32"}, "grid": {"d1": [8, 64]}},
            {"name": "depth", "flags": {"student_hidden_dims": "{depth}",
                                        "student_init": "all:random,class_head:A,aux_head:A"},
             "grid": {"depth": depth, "m": [10]}},
            {"name": "cnn_student", "flags": {"student_type": "cnn", "student_arch_spec": cnn,
                                              "noise_dist": "perlin", "student_init": "all:random,class_head:A"},
             "grid": {"m": [10]}},
        ]},
        "fig4": {"panels": [
            {"name": "m_by_N", "grid": {"m": {"sqrt2_steps": [0, 2]}, "noise_steps": [1, 4]},
             "plot": {"kind": "heatmap", "x": "noise_steps", "y": "m"}},
            {"name": "m1", "flags": {"m": 1}, "grid": {"noise_steps": [1, 4]}},
        ]},
        "fig5": {"panels": [{"name": "heads", "flags": {"perturb": perturb},
                             "grid": {"head": {"labels": {"aux": "aux_head", "class": "class_head"}},
                                      "std": {"linspace": [0.0, 0.2, 2]}},
                             "plot": {"x": "std", "hue": "head", "cosine": True}}]},
        "fig6": {"panels": [
            {"name": "mnist", "flags": dims, "grid": {"d": [1, 16]}},
            {"name": "frozen_both", "flags": {**dims, "teacher_trainable": "class_head:false,aux_head:false",
                                              "student_trainable": "class_head:false,aux_head:false"},
             "grid": {"d": [1, 16]}, "plot": {"cosine": True}},
        ]},
    }
    cfg = base_config(real_mnist, figures, seeds=(0,))
    write_config(workdir, cfg)
    ok(smk(workdir, "all"))
    expected_rows = {"fig2": 4, "fig3": 7, "fig4": 6, "fig5": 4, "fig6": 4}
    for figure, rows in expected_rows.items():
        assert len(pd.read_csv(workdir / "results" / "tables" / f"{figure}.csv")) == rows, figure
        assert (workdir / "results" / "figures" / f"{figure}.png").stat().st_size > 1000
        summary = pd.read_csv(workdir / "results" / "figures" / f"{figure}_summary.csv")
        assert list(summary.columns[:6]) == ["figure", "axis", "panel", "metric", "condition", "hue_name"]
        assert {"x", "mean", "ci_low", "ci_high", "n_seeds", "teacher_acc"} <= set(summary.columns)
        assert (summary["figure"] == figure).all() and (summary["n_seeds"] == 1).all()
    fig3 = pd.read_csv(workdir / "results" / "tables" / "fig3.csv")
    emnist = fig3[fig3["panel"] == "emnist_classes"]
    assert sorted(emnist["num_classes"]) == [2, 47] and (emnist["m"] == 20).all()
    fig5 = pd.read_csv(workdir / "results" / "tables" / "fig5" / "perturbations_all_seeds.csv")
    assert len(fig5) > 0


def test_offline_synthetic_mnist_builds_end_to_end(workdir):
    """No MNIST anywhere in data_dir and synthetic_mnist auto: generated MNIST, the runs kept apart in
    results/synthetic/, and the figure's summary says that the data are synthetic."""
    cfg = base_config(workdir / "nowhere", {"fig2": fig2_block(m=(3,))}, seeds=(0, 1))
    cfg["synthetic_mnist"] = "auto"
    write_config(workdir, cfg)
    out = ok(smk(workdir, "all"))
    assert "SYNTHETIC MNIST" in out and not (workdir / "nowhere").exists()
    results = workdir / "results"
    assert len(list((results / "synthetic" / "runs").glob("*/runs.csv"))) == 4
    assert list((results / "synthetic" / "teachers").glob("*.pt")) and not (results / "runs").exists()
    summary = pd.read_csv(results / "figures" / "fig2_summary.csv")
    assert len(summary) == 2 * 3 and (summary["n_seeds"] == 2).all()  # 2 inits x (accuracy + 2 cosines)
    assert "SYNTHETIC MNIST" in (results / "figures" / "fig2_summary.html").read_text()
    assert set(pd.read_csv(results / "tables" / "fig2.csv")["data"]) == {"synthetic MNIST"}  # the table's rows too
    assert (results / "figures" / "fig2.pdf").stat().st_size > 1000
    # the end of the build says where everything is (and what the claims say)
    end = out[out.index("Done. Results in results/:"):]
    assert "figures   results/figures/fig2.png" in end and "claims    results/claims.html" in end, end
    assert "snakemake --report results/report.html" in end, end
    # progress: each teacher and batch job says when it starts what it computes and where its progress is
    assert re.search(r"\[start\] batch_[0-9a-f]{16}: \d+ runs of fig2, ~.* by the cost model; progress in "
                     r"logs/batches/[0-9a-f]{16}\.log \(or: sublearn status results\)", out), out[-3000:]
    assert re.search(r"\[start\] teachers_[0-9a-f]{16}: 2 teachers of fig2", out), out[-3000:]
    # each batch job's log counts its runs; `sublearn status` reads the results folder alone
    from sublearn.status import status_text

    for log in (workdir / "logs" / "batches").glob("*.log"):
        assert re.search(r"\[progress\] (\d+)/\1 runs done, .* elapsed \(finished\)", log.read_text()), log
    fig2 = next(line for line in status_text(results).splitlines() if line.startswith("fig2"))
    assert fig2.split()[1:] == ["4/4", "2/2", "done"], fig2


def test_a_failing_script_leaves_its_traceback_in_the_rule_log(tmp_path):
    """The scripts' logs keep the error that ended them (not an empty file)."""
    script = tmp_path / "failing.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO / 'workflow' / 'scripts')!r})\n"
        "from logged import logged\n"
        f"with logged({str(tmp_path / 'job.log')!r}):\n"
        "    print('reading the tables')\n"
        "    {}['missing column']\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    log = (tmp_path / "job.log").read_text()
    assert result.returncode == 1
    assert "reading the tables" in log and "KeyError: 'missing column'" in log and "Traceback" in log
    assert "KeyError: 'missing column'" in result.stderr  # and Snakemake's report shows it too
    script.write_text(script.read_text().replace("{}['missing column']", "raise SystemExit('fig9: no runs')"))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert result.returncode == 1 and "fig9: no runs" in (tmp_path / "job.log").read_text()

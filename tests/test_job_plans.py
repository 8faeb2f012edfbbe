"""How runs become jobs: a local run's cut that keeps every core busy, and the GPU plan (a handful of long
jobs, the longest trajectories together, its lockstep steps printed)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from test_workflow import REPO, SNAKEMAKE, base_config, fig2_block, write_config

from sublearn import cost, grouping, sheets
from sublearn.config import config_from_flags
from sublearn.device import STACK_LAYERS, planned_device, training_path
from sublearn.plan import resolve


def fig2_runs(seeds):
    cfg = base_config(Path("nowhere"), {})
    runs = []
    for seed in seeds:
        for m in (3, 10):
            for init in ("A,A,A,A", "random,random,A,A", "A,A,random,A"):
                rc = resolve(config_from_flags({**cfg["defaults"], "teacher_init": "A,A,A,A", "m": m,
                                                "student_init": init, "seed": seed}))
                runs.append(grouping.PlannedRun(rc.run_key(), rc, "mnist", group="fig2"))
    return runs


def job_flops(job):
    return sum(cost.stack_flops(stack, "mnist") for stack in grouping.stacks(job))


@pytest.mark.parametrize("cores", [2, 3, 4])
def test_a_local_cut_gives_a_multiple_of_the_cores_in_jobs_of_near_equal_cost(cores):
    runs = fig2_runs(range(5))
    stack = job_flops(runs[:6])
    # today's cut: whole stacks up to 2 per job -> 3 jobs for 5 stacks, the last alone on one core
    assert [len(job) for job in grouping.cut_into_jobs(runs, 2.2 * stack, 400)] == [12, 12, 6]
    jobs = grouping.cut_into_jobs(runs, 2.2 * stack, 400, cores=cores)
    assert len(jobs) % cores == 0 and len(jobs) >= 3
    assert sorted(r.id for job in jobs for r in job) == sorted(r.id for r in runs)
    flops = [job_flops(job) for job in jobs]
    assert max(flops) / min(flops) < 1.35, flops  # near-equal (a split stack repeats its teacher passes)
    assert max(flops) <= 2.2 * stack


@pytest.mark.parametrize(("budget", "cores"), [(1.1, 2), (0.45, 5)])
def test_a_local_cut_gives_a_multiple_of_the_cores_where_the_budget_search_jumps_past_it(budget, cores):
    """7 seeds of fig2: the smallest budget search alone gives 7 or 21 jobs here; the costliest job is then
    halved until the count is a multiple of the cores (only jobs of one run cannot be)."""
    runs = fig2_runs(range(7))
    jobs = grouping.cut_into_jobs(runs, budget * job_flops(runs[:6]), 400, cores=cores)
    assert len(jobs) % cores == 0, len(jobs)
    assert sorted(r.id for job in jobs for r in job) == sorted(r.id for r in runs)
    assert max(job_flops(job) for job in jobs) <= budget * job_flops(runs[:6])


def test_longest_first_puts_the_longest_trajectories_in_one_lockstep_set():
    """Eight stacks of one run (their noise batch sizes differ), short (5 steps) and long (400) in turn,
    two stacks to a lockstep set: in the default order each set holds a long one; longest first, two sets
    hold them all."""
    cfg = base_config(Path("nowhere"), {})
    runs = []
    for index in range(8):
        steps = 400 if index % 2 else 5
        rc = resolve(config_from_flags({**cfg["defaults"], "noise_steps": steps, "noise_bsize": 200 + index}))
        runs.append(grouping.PlannedRun(rc.run_key(), rc, "mnist", group="g"))
    budget = 2.01 * max(cost.memory_mb(r.rc) for r in runs)
    for longest_first, steps in ((False, 4 * 400), (True, 2 * 400 + 2 * 5)):
        (job,) = grouping.cut_into_jobs(runs, 1e18, 1000, longest_first=longest_first)
        sets = grouping.lockstep_sets(grouping.plan_stacks(job, budget), budget)
        assert [len(s) for s in sets] == [2, 2, 2, 2]
        assert grouping.lockstep_steps(sets) == steps, longest_first


def write_own_claims(workdir):
    """A claim that the test's fig2 grid has (the paper's name grid points it lacks): the workflow reads a
    working directory's config/claims.yaml before its own."""
    (workdir / "config" / "claims.yaml").write_text(
        "claims:\n  - {id: t1, source: test, statement: test, figure: fig2, panel: init,\n"
        "     condition: {student_init: rand_hidden}, x: m, test: above_chance, require: any}\n")


def test_the_gpu_profile_plans_few_long_jobs_and_prints_its_lockstep_steps(tmp_path):
    workdir = tmp_path / "wf"
    write_config(workdir, base_config(Path("nowhere"), {"fig2": fig2_block(m=(3, 10, 25))}, seeds=(0, 1, 2, 3)))
    write_own_claims(workdir)
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--workflow-profile",
           str(REPO / "profiles" / "gpu"), "--dry-run", "all", "--quiet", "host"]  # the job blocks shown
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert re.search(r"to compute in 1 batch jobs", text) and "1 teacher jobs" in text
    steps = int(re.search(r"lockstep steps: (\d+)", text).group(1))
    assert steps == 5  # the 24 runs of 4 seeds in one lockstep set, whose trajectories take N 5 x E 1 steps
    assert "--stack-layers auto" in text and "--device cuda" not in text  # the device reaches jobs by the env


def test_a_one_figure_plan_counts_only_that_figures_runs_and_time(tmp_path):
    """`snakemake fig2` headlines fig2's runs, jobs and time, not every figure's: the same numbers as a
    config that holds fig2 alone."""
    from test_workflow import plan_line, smk

    fig5 = {**fig2_block(m=(25, 50)), "title": "test figure 5"}
    both, alone = tmp_path / "both", tmp_path / "alone"
    write_config(both, base_config(Path("nowhere"), {"fig2": fig2_block(), "fig5": fig5}))
    write_config(alone, base_config(Path("nowhere"), {"fig2": fig2_block()}))
    outputs = {}
    for name, workdir, target in (("fig2", both, "fig2"), ("all", both, "all"), ("alone", alone, "fig2")):
        result = smk(workdir, "--dry-run", target)
        outputs[name] = result.stdout + result.stderr
        assert result.returncode == 0, outputs[name][-3000:]
    assert plan_line(outputs["fig2"]) == plan_line(outputs["alone"]) != plan_line(outputs["all"])
    assert "plan for fig2 (only this target" in outputs["fig2"] and "plan for" not in outputs["all"]
    by_figure = re.search(r"plan by figure: (.*)", outputs["fig2"]).group(1)
    assert by_figure.startswith("fig2 ") and "fig5" not in by_figure
    times = [re.search(r"~([\d.]+ (?:s|min|h)) of job time", outputs[name]).group(1) for name in ("fig2", "alone")]
    assert times[0] == times[1]


def test_the_gpu_profile_survives_a_command_line_config_or_says_what_to_add(tmp_path):
    """`--config` adds to the GPU profile's settings (a config file, profiles/gpu/gpu.yaml); a `--configfile`
    replaces the profile's, and then the workflow stops before planning, naming the profile, the settings
    it lost and what to add; named last, the profile's file gives the GPU plan again."""
    workdir = tmp_path / "wf"
    write_config(workdir, base_config(Path("nowhere"), {"fig2": fig2_block()}, seeds=(0, 1, 2)))
    write_own_claims(workdir)
    mine = tmp_path / "mine.yaml"
    mine.write_text("batch: {max_tflop: 5, memory_mb: 4000}\n")

    def plan(*args):
        cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--workflow-profile",
               str(REPO / "profiles" / "gpu"), "--dry-run", "fig2", *args]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        return out.returncode, out.stdout + out.stderr

    def gpu_plan(text):  # the profile's budgets, one job, its runs in one lockstep set of N 5 x E 1 steps
        return ("at 20000 GFLOP/s" in text and "to compute in 1 batch jobs" in text and "lockstep steps: 5 " in text)

    code, text = plan("--config", "seeds=[0,1]")
    assert code == 0 and gpu_plan(text) and "8 distinct" in text, text[-3000:]  # 2 seeds x 2 m x 2 inits
    code, text = plan("--configfile", str(workdir / "config" / "config.yaml"), str(mine))
    assert code != 0 and not gpu_plan(text)
    assert "GPU profile (profiles/gpu)" in text and "profiles/gpu/gpu.yaml" in text, text[-3000:]
    assert "device: 'cpu' (the profile: 'cuda')" in text and "batch.memory_mb: 4000 (the profile: 60000)" in text
    code, text = plan("--configfile", str(mine), str(REPO / "profiles" / "gpu" / "gpu.yaml"))
    assert code == 0 and gpu_plan(text), text[-3000:]


def test_the_planner_and_the_runner_take_one_training_path_and_the_merge_names_a_mix(capsys):
    """jobs.py plans with the runner's own rule (device.training_path) on the device it expects; device auto
    is the GPU under a GPU plan; a figure's table that mixes paths is named in a warning."""
    import importlib.util
    import sys

    import pandas as pd
    import torch

    sys.path.insert(0, str(REPO / "workflow" / "scripts"))
    import jobs

    for setting in (*STACK_LAYERS, True, False):
        for device in ("cpu", "cuda", "cuda:1"):
            cfg = {"device": device, "batch": {"stack_layers": setting, "plan": "cpu"}}
            assert jobs.job_training_path(cfg) == (training_path(setting, torch.device(device)), device[:4]), cfg
    assert [training_path("auto", d) for d in ("cpu", "cuda")] == ["alone", "fused"]
    assert [training_path(s, "cuda") for s in ("on", True, "off", False, "fused")] == \
        ["stacked", "stacked", "alone", "alone", "fused"]
    assert planned_device("auto", gpu_plan=True) == "cuda"
    assert jobs.job_training_path({"device": "auto", "batch": {"plan": "gpu"}}) == ("fused", "cuda")
    spec = importlib.util.spec_from_file_location("merge", REPO / "workflow" / "scripts" / "merge.py")
    merge = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(merge)
    runs = pd.DataFrame({"dataset": ["mnist"] * 3, "emnist_split": ["balanced"] * 3, "data_identity": ["sha256:1"] * 3,
                         "device": ["cuda"] * 3, "threads": [1] * 3, "torch_version": ["2"] * 3,
                         "training_path": ["fused", "fused", "stacked"], "outdir": ["r/a", "r/b", "r/c"]})
    merge.check_provenance(runs, "fig9", False)
    out = capsys.readouterr().out
    assert "fig9: runs mix training_path values" in out and "stacked (1 runs, e.g. r/c)" in out
    assert "device" not in out.replace("training_path", "")


def test_the_papers_gpu_plan_trains_fig4s_tail_in_one_lockstep_set():
    """The paper (config/config.yaml) under the GPU profile's settings, planned as the workflow plans it:
    fig4's m = 1 trajectories (8192 noise batches x 5 epochs) of all 20 seeds share one job and one
    lockstep set, so the tail is 40,960 steps once; the whole plan keeps to the issue's targets (<= 20
    teacher and batch jobs, <= 50,000 lockstep steps; 166,840 before the tail was one set)."""
    import sys

    import yaml

    sys.path.insert(0, str(REPO / "workflow" / "scripts"))
    import jobs
    import runs_table

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for key, value in yaml.safe_load((REPO / "profiles" / "gpu" / "gpu.yaml").read_text()).items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    runs = runs_table.unique_runs(runs_table.runs_table(cfg, lambda dataset: f"results/{dataset}"))
    identities = dict.fromkeys({r["dataset"] for r in runs})
    batches = jobs.plan_batches(runs, cfg, identities, lambda dataset, key: f"teachers/{key}")
    teachers = jobs.plan_teacher_sets(runs, batches, cfg, identities, lambda dataset, key: f"teachers/{key}")
    tail = [r for r in runs if r["rc"].config.m == 1 and r["rc"].config.noise_steps == 8192]
    assert len(tail) == 20 and {r["rc"].config.student_epochs for r in tail} == {5}
    tail_keys = {r["run_key"] for r in tail}
    (job,) = [b for b in batches.values() if tail_keys & {r["run_key"] for r in b["runs"]}]
    budget = cfg["batch"]["memory_mb"]
    sheet_runs = [sheets.SheetRun(r["run_key"], Path(r["run_dir"]), r["rc"]) for r in job["runs"]]
    sets = grouping.lockstep_sets(grouping.plan_stacks(sheet_runs, budget), budget)  # as the job's runner forms them
    long_sets = [s for s in sets if {r.id for stack in s for r in stack} & tail_keys]
    assert len(long_sets) == 1 and tail_keys <= {r.id for stack in long_sets[0] for r in stack}
    assert job["lockstep_steps"] - 40960 < 40960  # the tail once
    assert len(batches) + len(teachers) <= 20
    assert sum(b["lockstep_steps"] for b in batches.values()) <= 50_000
    # its job times allow each run a GPU's host work, not a CPU core's (which made the plan ~2.3 h of batch jobs)
    for job in [*batches.values(), *teachers.values()]:
        count = len(job["runs"] if "runs" in job else job["teachers"])
        assert job["seconds"] == pytest.approx(cost.JOB_START_SECONDS + job["flops"] / (cfg["batch"]["gflops"] * 1e9)
                                               + count * cost.SECONDS_PER_RUN["cuda"])
    assert sum(job["seconds"] for job in [*batches.values(), *teachers.values()]) < 3600


def test_a_stack_plans_time_allows_each_run_the_host_work_of_its_device(capsys):
    """`sublearn batch --plan` estimates its job as the process's start, its FLOPs at the rate and each run's
    host work on the device the job computes on: half a second on a CPU core, milliseconds on a GPU."""
    runs = fig2_runs([0, 1])
    stacks = grouping.stacks(runs)
    totals = {}
    for device_type in ("cpu", "cuda"):
        grouping.print_plan(stacks, 1000.0, device_type)
        totals[device_type] = float(re.search(r"\[plan\] total .* ~(\d+) s at 1000 GFLOP/s",
                                              capsys.readouterr().out).group(1))
    flops = sum(cost.stack_flops(stack, "mnist") for stack in stacks)
    for device_type, total in totals.items():
        assert total == pytest.approx(cost.JOB_START_SECONDS + flops / 1e12 + len(runs)
                                      * cost.SECONDS_PER_RUN[device_type], abs=1)
    assert cost.SECONDS_PER_RUN["cuda"] < cost.SECONDS_PER_RUN["cpu"]


@pytest.mark.parametrize("cores", [2, 3])
def test_a_local_cut_gives_each_teacher_group_a_multiple_of_the_cores_in_jobs(cores):
    """With fill_cores (config.yaml), the teachers of each group (figures and dataset) are cut into a multiple
    of --cores jobs (at most one per teacher) of near-equal cost, every teacher in exactly one job; without it,
    or on a GPU plan, the plain cut by teacher_max_tflop."""
    import sys

    import yaml

    sys.path.insert(0, str(REPO / "workflow" / "scripts"))
    import jobs
    import runs_table

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["seeds"] = [0, 1, 2, 3, 4]
    runs = runs_table.unique_runs(runs_table.runs_table(cfg, lambda dataset: f"results/{dataset}"))
    identities = dict.fromkeys({r["dataset"] for r in runs})
    path = lambda dataset, key: f"teachers/{key}"  # noqa: E731
    batches = jobs.plan_batches(runs, cfg, identities, path, cores)
    plain = jobs.plan_teacher_sets(runs, batches, cfg, identities, path)
    filled = jobs.plan_teacher_sets(runs, batches, cfg, identities, path, cores)
    keys = sorted(t["key"] for job in plain.values() for t in job["teachers"])
    assert sorted(t["key"] for job in filled.values() for t in job["teachers"]) == keys
    groups = {}
    for job in filled.values():
        group = (tuple(sorted(job["teachers"][0]["figures"])), job["dataset"])
        assert all((tuple(sorted(t["figures"])), t["dataset"]) == group for t in job["teachers"])
        groups.setdefault(group, []).append(job)
    for group, group_jobs in groups.items():
        teachers = sum(len(job["teachers"]) for job in group_jobs)
        assert len(group_jobs) % cores == 0 or len(group_jobs) == teachers, (group, len(group_jobs), teachers)
    # the five seeds' MNIST teachers that every figure shares were one job on one core before the batch jobs
    shared = [job for job in plain.values() if len(job["teachers"][0]["figures"]) == 5]
    assert len(shared) == 1 and len(shared[0]["teachers"]) == 5
    recut = groups[(("fig2", "fig3", "fig4", "fig5", "fig6"), shared[0]["dataset"])]
    sizes = sorted(len(job["teachers"]) for job in recut)
    assert len(recut) == cores and sizes == ([2, 3] if cores == 2 else [1, 2, 2])
    cfg["batch"]["fill_cores"] = False
    assert jobs.plan_teacher_sets(runs, batches, cfg, identities, path, cores).keys() == plain.keys()

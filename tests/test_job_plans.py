"""How runs become jobs: a local run's cut that keeps every core busy, and the GPU plan (a handful of long
jobs, the longest trajectories together, its lockstep steps printed)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from test_workflow import REPO, SNAKEMAKE, base_config, fig2_block, write_config

from sublearn import cost, grouping
from sublearn.config import config_from_flags
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


def test_the_gpu_profile_plans_few_long_jobs_and_prints_its_lockstep_steps(tmp_path):
    workdir = tmp_path / "wf"
    write_config(workdir, base_config(Path("nowhere"), {"fig2": fig2_block(m=(3, 10, 25))}, seeds=(0, 1, 2, 3)))
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--workflow-profile",
           str(REPO / "profiles" / "gpu"), "--dry-run", "all"]
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
    hours = [re.search(r"~([\d.]+) h of job time", outputs[name]).group(1) for name in ("fig2", "alone")]
    assert hours[0] == hours[1]

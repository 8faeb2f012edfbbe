"""bench/gpu.py, the script for a GPU machine, proven on the CPU in its tiny mode: it runs with neither
Snakemake nor jsonschema importable (the GPU machine has neither) and writes every line of OUT/gpu.log,
the paper's estimate last."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# the GPU machine's Python: torch, numpy, pandas, pyyaml, matplotlib; importing these fails
WITHOUT = "import sys; sys.modules.update(snakemake=None, jsonschema=None); import runpy; sys.argv = sys.argv[1:]; " \
          "runpy.run_path(sys.argv[0], run_name='__main__')"


def test_the_gpu_script_runs_tiny_on_a_cpu_and_writes_every_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OUT": str(tmp_path / "out")}
    result = subprocess.run([sys.executable, "-c", WITHOUT, str(REPO / "bench" / "gpu.py"), "--device", "cpu",
                             "--tiny", "--threads", "1"], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=1200)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    lines = (tmp_path / "out" / "gpu.log").read_text().splitlines()
    keys = [" ".join(line.split()[:2]) if line.startswith("step_ms") else line.split()[0] for line in lines]
    assert keys == ["device", "teacher_set_step_ms", "step_ms fig4_tail", "step_ms fig2_set", "step_ms fig4_mxN_set",
                    "prepare_ms_per_run", "finish_ms_per_run", "student_model", "determinism", "fig2_5seeds_s",
                    "paper_estimate_min"], lines
    assert lines[8].startswith("determinism identical")
    assert re.search(r"for 10 runs and \d+ lockstep steps", lines[9])  # the planner's sheets, both CLI jobs run
    estimate = float(lines[-1].split()[1])
    assert math.isfinite(estimate) and estimate > 0
    assert len(list((tmp_path / "out" / "work" / "fig2" / "results").rglob("runs.csv"))) == 10


def test_the_gpu_script_stops_the_cli_run_at_its_budget_and_still_writes_the_estimate(tmp_path):
    """--budget-s: a CLI job still running at the deadline is stopped, its line says so, the estimate comes last."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OUT": str(tmp_path / "out")}
    result = subprocess.run([sys.executable, "-c", WITHOUT, str(REPO / "bench" / "gpu.py"), "--device", "cpu",
                             "--tiny", "--threads", "1", "--budget-s", "1"], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=1200)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    lines = (tmp_path / "out" / "gpu.log").read_text().splitlines()
    assert re.match(r"fig2_5seeds_s stopped at [\d.]+ s \(the --budget-s deadline\) in a teachers job", lines[-2])
    assert lines[-1].startswith("paper_estimate_min ")
    assert not list((tmp_path / "out" / "work" / "fig2").rglob("runs.csv"))


def test_the_gpu_script_refuses_a_budget_that_is_not_positive(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--out", str(tmp_path), "--budget-s", "0"],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")},
                            timeout=300)
    assert result.returncode == 2
    assert "--budget-s must be a positive number of seconds, not 0" in result.stderr
    assert not (tmp_path / "gpu.log").exists()


def test_the_gpu_model_sums_the_plans_sets_runs_and_teachers():
    """bench/gpu_model.py on one figure and seed: a line per lockstep set of the GPU plan (each its FLOPs or its
    counted launches, whichever is longer), and a total that is the sum of its parts."""
    result = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_model.py"), "--seeds", "1", "--figures", "fig2",
                             "--steps", "8"], capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    lines = result.stdout.splitlines()
    planned = re.match(r"plan: (\d+) batch jobs, (\d+) lockstep sets, (\d+) runs; \d+ teacher jobs, (\d+) teachers",
                       lines[0])
    assert planned and int(planned[3]) == 36 and int(planned[4]) == 1, lines[0]
    sets = [line for line in lines if line.startswith("set ")]
    assert len(sets) == int(planned[2]) > 0
    seconds = []
    for line in sets:
        flop_s, launches, launch_s = re.search(r"TFLOP \(([\d.]+) s\), (\d+) launches \(([\d.]+) s", line).groups()
        assert int(launches) > 0
        seconds.append(max(float(flop_s), float(launch_s)))
    total = re.match(r"paper_model_min ([\d.]+) \(sets ([\d.]+) min.*= ([\d.]+) min; teachers .* = ([\d.]+) min",
                     lines[-1])
    assert total, lines[-1]
    assert float(total[2]) == pytest.approx(sum(seconds) / 60, abs=0.02)
    assert float(total[1]) == pytest.approx(sum(float(x) for x in total.groups()[1:]), abs=0.02)
    bad = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_model.py"), "--figures", "fig9"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--figures: unknown fig9; allowed: fig2" in bad.stderr

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

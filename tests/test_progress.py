"""What a user sees of a build's progress and of its end: the end-of-build summary (where the figures,
tables, scorecard and report are)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))

import build_summary  # noqa: E402


def test_the_end_summary_names_what_the_build_left_and_the_claims_verdicts(tmp_path):
    root = tmp_path / "results"
    (root / "figures").mkdir(parents=True)
    (root / "tables").mkdir()
    for figure in ("fig2", "fig5"):
        (root / "figures" / f"{figure}.png").write_bytes(b"png")
        (root / "tables" / f"{figure}.csv").write_text("run_key\n")
    (root / "claims.html").write_text("<html></html>")
    (root / "claims.csv").write_text("claim,verdict\n1a,holds\n1b,holds\n2,fails\n3,not enough seeds\n")
    text = build_summary.end_summary(str(root), ["fig2", "fig3", "fig5"], ["config/quick.yaml"])
    lines = text.splitlines()
    assert lines[0] == f"Done. Results in {root}/:"
    assert f"{root}/figures/{{fig2,fig5}}.png" in text and "fig3" not in text  # only what is there
    assert f"{root}/claims.html (the scorecard; claims.csv): 2 hold, 1 fails, 1 not enough seeds" in text
    assert f"snakemake --report {root}/report.html --configfile config/quick.yaml" in text
    assert len(lines) == 5


def test_the_end_summary_of_a_partial_build_names_only_what_is_there(tmp_path):
    text = build_summary.end_summary(str(tmp_path), ["fig2"])
    assert "figures" not in text and "claims" not in text and "snakemake --report" in text


# --------------------------------------------------------------------------------------------------
# A job's progress and `sublearn status`
# --------------------------------------------------------------------------------------------------


def test_progress_counts_runs_and_estimates_the_time_left_from_the_measured_rate(tmp_path):
    from sublearn.progress import Progress, duration

    lines = []
    status = tmp_path / "job.progress.json"
    progress = Progress("runs", 4, 400e9, status, gflops=10, interval=0, out=lambda text, flush: lines.append(text))
    with progress:
        progress.started = progress.last_done = 1000.0  # the clock, set: the arithmetic, not the timing
        assert progress.seconds_left(now=1010.0) == 30.0  # before any run: 400 GFLOP at 10 GFLOP/s, 10 s spent
        progress.advance(100e9)  # one run of 100 GFLOP
        progress.started, progress.last_done = 1000.0, 1020.0  # one run of 100 GFLOP took 20 s
        assert progress.seconds_left(now=1020.0) == 60.0  # 300 GFLOP at 5 GFLOP/s
        assert progress.seconds_left(now=1050.0) == 30.0  # counting down until the next run is done
        assert progress.seconds_left(now=2000.0) == 0.0
    assert lines[0].startswith("[progress] 0/4 runs done") and lines[1].startswith("[progress] 1/4 runs done")
    assert lines[-1].endswith("elapsed (finished)")
    record = json.loads(status.read_text())
    assert (record["done"], record["total"], record["state"]) == (1, 4, "finished")
    assert [duration(s) for s in (5, 600, 7200, None)] == ["5 s", "10 min", "2.0 h", "unknown"]


def test_progress_says_when_a_job_failed(tmp_path):
    from sublearn.progress import Progress

    lines = []
    with pytest.raises(RuntimeError), Progress("teachers", 2, 1e9, tmp_path / "p.json", interval=0,
                                               out=lambda text, flush: lines.append(text)):
        raise RuntimeError("diverged")
    assert lines[-1].endswith("(failed)") and json.loads((tmp_path / "p.json").read_text())["state"] == "failed"


def write_progress(root, job, now, **fields):
    record = {"what": "runs", "done": 3, "total": 12, "state": "running", "elapsed_s": 120.0, "left_s": 360.0,
              "updated": now - 5, "pid": 1, "host": "h", **fields}
    (root / "sheets").mkdir(exist_ok=True)
    (root / "sheets" / f"{job}.progress.json").write_text(json.dumps(record))


def test_status_shows_each_figures_runs_and_teachers_the_running_jobs_and_the_time_left(tmp_path):
    from sublearn import status

    root = tmp_path / "results"
    runs = {f: [root / "runs" / f"{f}-{i}" for i in range(4)] for f in ("fig2", "fig5")}
    teachers = {f: [root / "teachers" / f"{f}-t.pt"] for f in runs}
    jobs = {"b2": {"kind": "batch", "rule": "batch_b2", "figures": ["fig2"], "count": 2, "seconds": 600,
                   "log": "logs/batches/b2.log"},
            "b5": {"kind": "batch", "rule": "batch_b5", "figures": ["fig5"], "count": 4, "seconds": 900,
                   "log": "logs/batches/b5.log"},
            "b6": {"kind": "batch", "rule": "batch_b6", "figures": ["fig5"], "count": 4, "seconds": 300,
                   "log": "logs/batches/b6.log"}}
    status.write_plan(str(root), {f: {"runs": runs[f], "teachers": teachers[f]} for f in runs}, jobs, 2, None)
    for run in runs["fig2"][:2] + runs["fig5"][:1]:  # finished runs: their runs.csv is there
        run.mkdir(parents=True)
        (run / "runs.csv").write_text("run_key\n")
    (root / "teachers").mkdir()
    (root / "teachers" / "fig2-t.json").write_text("{}")
    now = json.loads((root / status.PLAN).read_text())["written"] + 60
    write_progress(root, "b5", now)  # running: 6 min left
    write_progress(root, "b2", now, state="finished", done=2, total=2, left_s=0.0)
    text = status.status_text(root, now=now)
    lines = text.splitlines()
    fig2 = next(line for line in lines if line.startswith("fig2"))
    fig5 = next(line for line in lines if line.startswith("fig5"))
    assert fig2.split()[1:] == ["2/4", "1/1", "~0", "s"]
    assert fig5.split()[1:] == ["1/4", "0/1", "~11", "min"]  # 6 min left in b5, 5 min planned for b6
    running = next(line for line in lines if line.startswith("running"))
    assert "batch_b5 (fig5): 3/12 runs, 2 min elapsed, ~6 min left" in running and "b5.log" in running
    assert "jobs: 1 finished, 1 running, 1 waiting of 3; ~11 min of job time left (~6 min on 2 cores)" in text
    # a running job that stopped reporting (killed, cancelled) says so, and what to do
    text = status.status_text(root, now=now + 10 * 60)
    assert any(line.startswith("stopped  batch_b5") for line in text.splitlines())
    assert "run the same snakemake command again" in text


def test_status_without_a_plan_says_where_it_comes_from(tmp_path, capsys):
    from sublearn.cli import main

    assert main(["status", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "status/plan.json: no plan there" in err and len(err.strip().splitlines()) == 1

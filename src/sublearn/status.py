"""`sublearn status RESULTS_DIR`: how far a build is, without Snakemake, locally or on a cluster, while it
runs. Torch-free.

The workflow writes the plan when it starts executing (`RESULTS_DIR/status/plan.json`: per figure its run
folders and teacher checkpoints, per job its kind, figures, size and estimated seconds); each batch and
teacher job keeps its progress beside its sheet (``progress.Progress``). Status reads both and the
results themselves: a run is finished when its runs.csv is there (written last, whole), a teacher when
its .json summary is.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .outputs import atomic_write_text
from .progress import INTERVAL_S, duration, progress_file

PLAN = Path("status") / "plan.json"
STALE_S = 4 * INTERVAL_S  # a running job's progress older than this: the job is gone (killed, cancelled)


def write_plan(results_dir: str, figures: dict, jobs: dict, cores: int, targets: list[str] | None) -> Path:
    """The plan for `sublearn status`. figures: {figure: {"runs": [run folder], "teachers": [checkpoint
    .pt]}}; jobs: {id: {"kind": "batch" | "teachers", "figures": [...], "count": n, "seconds": s,
    "log": path}}. Paths under results_dir are stored relative to it, so a copy of the folder still reads."""
    root = Path(results_dir)

    def rel(path):
        path = Path(path)
        return str(path.relative_to(root)) if path.is_relative_to(root) else str(path.resolve())

    record = {"written": time.time(), "cores": cores, "targets": targets or ["all"],
              "figures": {f: {"runs": [rel(r) for r in v["runs"]], "teachers": [rel(t) for t in v["teachers"]]}
                          for f, v in figures.items()},
              "jobs": {i: {**job, "log": str(Path(job["log"]).resolve())} for i, job in jobs.items()}}
    path = root / PLAN
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return path


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def job_states(root: Path, plan: dict, now: float) -> dict[str, dict]:
    """{job id: {"state": waiting | running | stopped | finished | failed, "progress": record or None}}."""
    states = {}
    for job_id in plan["jobs"]:
        record = _read_json(progress_file(root / "sheets" / f"{job_id}.jsonl"))
        if record is None or record.get("updated", 0) < plan["written"] - 1:  # from an earlier build
            state = "waiting"
        elif record["state"] == "running" and now - record["updated"] > STALE_S:
            state = "stopped"
        else:
            state = record["state"]
        states[job_id] = {"state": state, "progress": record if state != "waiting" else None}
    return states


def _left(job: dict, state: dict) -> float:
    if state["state"] == "running":
        return state["progress"].get("left_s") or 0.0
    return 0.0 if state["state"] == "finished" else float(job["seconds"])


def status_text(results_dir: str | Path, now: float | None = None) -> str:
    root = Path(results_dir)
    now = time.time() if now is None else now
    plan = _read_json(root / PLAN)
    if plan is None:
        raise FileNotFoundError(f"{root / PLAN}: no plan there; it is written when Snakemake starts running jobs "
                                "for this results_dir (a dry run writes none)")
    states = job_states(root, plan, now)
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(plan["written"]))
    lines = [f"{root}: plan of {when} ({' '.join(plan['targets'])}, {plan['cores']} cores)",
             f"{'figure':<10} {'runs':>13} {'teachers':>13}  time left (job time)"]
    for figure, items in plan["figures"].items():
        runs = sum((root / r / "runs.csv").is_file() for r in items["runs"])
        teachers = sum((root / t).with_suffix(".json").is_file() for t in items["teachers"])
        jobs = [j for j, job in plan["jobs"].items() if figure in job["figures"]]
        left = sum(_left(plan["jobs"][j], states[j]) for j in jobs)
        done = runs == len(items["runs"]) and teachers == len(items["teachers"])
        runs_text, teachers_text = f"{runs}/{len(items['runs'])}", f"{teachers}/{len(items['teachers'])}"
        lines.append(f"{figure:<10} {runs_text:>13} {teachers_text:>13}  " + ("done" if done else f"~{duration(left)}"))
    for job_id, state in states.items():
        job = plan["jobs"][job_id]
        if state["state"] in ("running", "stopped", "failed"):
            p = state["progress"]
            lines.append(f"{state['state']:<8} {job['rule']} ({', '.join(job['figures'])}): {p['done']}/{p['total']} "
                         f"{p['what']}, {duration(p['elapsed_s'])} elapsed"
                         + (f", ~{duration(p['left_s'])} left" if state["state"] == "running" else "")
                         + f", updated {duration(now - p['updated'])} ago; log {job['log']}")
    waiting = [j for j, s in states.items() if s["state"] == "waiting"]
    left = sum(_left(plan["jobs"][j], states[j]) for j in plan["jobs"])
    cores = max(1, int(plan["cores"] or 1))
    lines.append(f"jobs: {sum(s['state'] == 'finished' for s in states.values())} finished, "
                 f"{sum(s['state'] == 'running' for s in states.values())} running, {len(waiting)} waiting of "
                 f"{len(states)}; ~{duration(left)} of job time left"
                 + (f" (~{duration(left / cores)} on {cores} cores)" if cores > 1 else ""))
    if any(s["state"] == "stopped" for s in states.values()):
        lines.append(f"stopped: no progress for more than {duration(STALE_S)} (the job was killed or cancelled); "
                     "run the same snakemake command again to finish")
    return "\n".join(lines)


def add_parser(sub) -> None:
    """`sublearn status RESULTS_DIR` on the command line's subparsers."""
    parser = sub.add_parser("status", help="how far a build is: runs and teachers per figure, jobs, time left",
                            description="Per figure: runs and teachers finished of those planned and the estimated "
                                        "time left; the running jobs and their progress. Reads RESULTS_DIR only "
                                        "(no Snakemake): works while a build runs, locally or on a cluster.")
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="the config's results_dir, e.g. results/quick")


def cmd_status(args) -> None:
    from .errors import UsageError

    if not Path(args.results_dir).is_dir():
        raise UsageError(f"RESULTS_DIR: {args.results_dir} is not a folder (the config's results_dir, e.g. "
                         "results or results/quick)")
    try:
        print(status_text(args.results_dir))
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None

"""Job planning: the table's unfinished runs into batch jobs (`sublearn batch`) and their untrained
teachers into teacher jobs (`sublearn teachers`), with each job's sheet, outputs and resources. How runs
are cut into jobs is the runner's (``sublearn.grouping.cut_into_jobs``, counting with ``sublearn.cost``);
this module adds what the workflow knows: figures, files, what is finished. A plain module (no Snakemake).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from sublearn import cost, grouping, sheets
from sublearn.config import sheet_settings
from sublearn.device import planned_device, stack_layers_setting, training_path
from sublearn.progress import duration


def rule_resources(cfg, resource):
    """A rule's configured `resources` (mem_mb, runtime in minutes): config `resources.<resource>`, whose
    defaults are the schema's (workflow/schemas/config.schema.yaml; Snakemake's validation fills them in)."""
    return {key: cfg["resources"][resource][key] for key in ("mem_mb", "runtime")}


def job_runtime(seconds, resource, cfg):
    """A job's wall-time request in minutes: its estimated seconds plus a minute, times batch.runtime_margin,
    at least the rule's configured `resources` runtime."""
    return max(rule_resources(cfg, resource)["runtime"],
               int(math.ceil((seconds + 60) * cfg["batch"]["runtime_margin"] / 60)))


def finished(run, identities):
    """A run is finished when its folder records its key and the identity of its data now."""
    identity = identities[run["dataset"]]
    return identity is not None and sheets.recorded_result(run["run_dir"]) == (run["run_key"], identity)


def job_training_path(cfg):
    """How the batch jobs will train (``sublearn.device.training_path``, the runner's own rule) on the device
    they are expected to compute on (``planned_device``: device auto is the GPU under batch.plan gpu or where
    this machine has usable CUDA)."""
    device = planned_device(str(cfg.get("device", "auto")), cfg["batch"].get("plan", "cpu") == "gpu")
    return training_path(cfg["batch"].get("stack_layers", "auto"), device), device


def overridden_settings(settings, config, command_line, where=""):
    """A profile's workflow settings (its config file, as a dict) that ``config`` no longer holds, except those
    the command line's --config set (``command_line``): ["key: now (the profile: value)", ...]. A profile's
    config file is dropped, or overridden key by key, by a --configfile given after it on the command line."""
    out = []
    for key, value in settings.items():
        name = f"{where}{key}"
        if key in command_line and not isinstance(value, dict):
            continue
        now = config.get(key) if isinstance(config, dict) else None
        if isinstance(value, dict):
            below = command_line.get(key, {}) if isinstance(command_line.get(key), dict) else {}
            out += overridden_settings(value, now if isinstance(now, dict) else {}, below, f"{name}.")
        elif now != value:
            out.append(f"{name}: {now!r} (the profile: {value!r})")
    return out


def batch_group(run):
    """The runs one job may hold: those requested by the same figures, of one dataset (so `snakemake fig5`
    computes no other figure's runs)."""
    return run["figures"], run["dataset"]


def plan_batches(unique_runs, cfg, identities, teacher_path, cores=1):
    """Runs -> batch jobs. A job serves one set of figures and one dataset (so `snakemake fig5` computes no
    other figure's runs). Jobs are cut over all runs, finished or not, and named by the hash of their run
    keys, so a job's name does not change while other jobs finish (a cluster job re-reads this plan when it
    starts); a job computes only its unfinished runs, and a job with none is not planned. ``stale``: its
    unfinished runs whose folder holds a runs.csv (a lost file, a row cut short, other data): the sheet
    rule's params, so that a changed list reruns the job although its outputs exist."""
    settings = cfg["batch"]
    plan = settings.get("plan", "cpu")
    planned = [grouping.PlannedRun(r["run_key"], r["rc"], r["dataset"], batch_group(r)) for r in unique_runs]
    record_of = {r["run_key"]: r for r in unique_runs}
    out = {}
    path, device = job_training_path(cfg)
    cut = grouping.cut_into_jobs(planned, settings["max_tflop"] * 1e12, settings["max_runs"],
                                 cores if plan == "cpu" and settings.get("fill_cores") else 1, plan == "gpu")
    for job in cut:
        runs = [record_of[p.id] for p in job if not finished(record_of[p.id], identities)]
        if not runs:
            continue
        batch_id = hashlib.sha256(" ".join(p.id for p in job).encode()).hexdigest()[:16]
        sheet_runs = [sheets.SheetRun(r["run_key"], Path(r["run_dir"]), r["rc"]) for r in runs]
        flops = sum(cost.stack_flops(stack, runs[0]["dataset"]) for stack in grouping.stacks(sheet_runs))
        seconds = cost.estimated_seconds(flops, settings["gflops"], len(runs), device)
        memory = sum(cost.memory_mb(r["rc"]) for r in runs)
        stacks = grouping.plan_stacks(sheet_runs, settings["memory_mb"])  # as the job's runner will
        sets = grouping.lockstep_sets(stacks, settings["memory_mb"]) if path != "alone" else [[s] for s in stacks]
        out[batch_id] = {
            "id": batch_id, "runs": runs, "flops": flops, "seconds": seconds, "dataset": runs[0]["dataset"],
            "priority": 1 + int(seconds // 60),  # estimated minutes
            "teachers": sorted({f"{teacher_path(r['dataset'], r['teacher_key'])}.pt" for r in runs}),
            "outputs": [f"{r['run_dir']}/runs.csv" for r in runs],
            "stale": [r["run_key"] for r in runs if Path(r["run_dir"], "runs.csv").exists()],
            "runtime": job_runtime(seconds, "student", cfg),
            "lockstep_steps": grouping.lockstep_steps(sets),
            "mem_mb": int(rule_resources(cfg, "student")["mem_mb"] + min(memory, settings["memory_mb"])),
            "sheet": "".join(sheets.sheet_record(r["run_key"], r["run_dir"], sheet_settings(r["rc"].config)) + "\n"
                             for r in runs),
        }
    return out


def plan_teacher_sets(unique_runs, batches, cfg, identities, teacher_path, cores=1):
    """Teachers -> teacher jobs: the teachers of one dataset requested by the same figures, those of equal
    shape side by side and by seed (a GPU job stacks their layers), cut into jobs of at most
    `batch.teacher_max_tflop` estimated FLOPs; with `batch.fill_cores` on a CPU plan, each group into a
    multiple of ``cores`` jobs (a local run's --cores; at most one job per teacher) of near-equal cost, so
    that the batch jobs, which wait for them, do not wait for one teacher job on one core. As for batches,
    jobs are cut over every teacher of the config and named by the hash of their keys, and a job trains only
    its teachers that are untrained (no summary recording its key and the data's identity now) and needed by
    an unfinished run."""
    teachers = {}
    for run in unique_runs:
        teacher = teachers.setdefault(run["teacher_key"], {"key": run["teacher_key"], "rc": run["teacher_rc"],
                                                           "dataset": run["dataset"], "figures": set()})
        teacher["figures"].update(run["figures"])
    flops_of = {key: cost.teacher_flops(t["rc"], t["dataset"]) for key, t in teachers.items()}

    def order(t):  # the first two: a job's group
        shape = json.dumps(t["rc"].teacher.arch_description(), sort_keys=True)
        return sorted(t["figures"]), t["dataset"], shape, t["rc"].config.seed, t["key"]

    chunks, current, flops = [], [], 0.0
    for teacher in sorted(teachers.values(), key=order):
        if current and (order(current[-1])[:2] != order(teacher)[:2]
                        or flops + flops_of[teacher["key"]] > cfg["batch"]["teacher_max_tflop"] * 1e12):
            chunks.append(current)
            current, flops = [], 0.0
        current.append(teacher)
        flops += flops_of[teacher["key"]]
    if current:
        chunks.append(current)
    settings = cfg["batch"]
    if cores > 1 and settings.get("plan", "cpu") == "cpu" and settings.get("fill_cores"):
        chunks = fill_cores(grouping.group_by(chunks, lambda chunk: json.dumps(order(chunk[0])[:2])), cores,
                            lambda teacher: flops_of[teacher["key"]])
    needed = {run["teacher_key"] for b in batches.values() for run in b["runs"]}
    _, device = job_training_path(cfg)  # the device type the teacher jobs compute on, as the batch jobs
    out = {}
    for chunk in chunks:
        todo = [t for t in chunk if t["key"] in needed and (identities[t["dataset"]] is None or sheets.recorded_teacher(
                f"{teacher_path(t['dataset'], t['key'])}.pt") != (t["key"], identities[t["dataset"]]))]
        if not todo:
            continue
        set_id = f"teachers-{hashlib.sha256(' '.join(t['key'] for t in chunk).encode()).hexdigest()[:16]}"
        flops = sum(flops_of[t["key"]] for t in todo)
        seconds = cost.estimated_seconds(flops, cfg["batch"]["gflops"], len(todo), device)
        paths = [teacher_path(t["dataset"], t["key"]) for t in todo]
        out[set_id] = {
            "id": set_id, "teachers": todo, "flops": flops, "seconds": seconds, "dataset": todo[0]["dataset"],
            "outputs": [f"{path}{ext}" for path in paths for ext in (".pt", ".json")],
            "runtime": job_runtime(seconds, "teacher", cfg),
            "stale": [],
            "sheet": "".join(sheets.teacher_record(t["key"], f"{path}.pt", sheet_settings(t["rc"].config)) + "\n"
                             for t, path in zip(todo, paths, strict=True)),
        }
    return out


def fill_cores(groups: list[list[list]], cores: int, cost_of) -> list[list]:
    """Each group's jobs (lists of items, in order) cut again into the next multiple of ``cores`` jobs (at
    most one per item) of near-equal cost, keeping the items' order; a group already a multiple is kept."""
    out = []
    for jobs in groups:
        items = [item for job in jobs for item in job]
        parts = min(len(items), -(-len(jobs) // cores) * cores)
        out += jobs if parts <= len(jobs) else _balanced(items, parts, cost_of)
    return out


def _balanced(items: list, parts: int, cost_of) -> list[list]:
    """``items`` in order cut into ``parts`` non-empty contiguous pieces, each close to an equal share."""
    total = sum(map(cost_of, items))
    pieces, current, tally, done = [], [], 0.0, 0.0
    for index, item in enumerate(items):
        current.append(item)
        tally += cost_of(item)
        left_parts = parts - len(pieces) - 1
        left_items = len(items) - index - 1
        share = (total - done) / (parts - len(pieces))
        if left_parts and (tally >= share or left_items == left_parts):
            pieces.append(current)
            done += tally
            current, tally = [], 0.0
    pieces.append(current)
    return pieces


def plan_summary(runs_table, unique_runs, batches, teacher_sets, figures, cfg, targets=None):
    """What planning prints: runs, batch jobs and their time, teachers and their jobs, by figure, and the
    training path. With ``targets`` (figure names: `snakemake fig2`) it counts only the work those targets
    run, and says so."""
    gflops = cfg["batch"]["gflops"]
    path, device = job_training_path(cfg)
    if targets:
        batches = {i: b for i, b in batches.items() if any(set(targets) & set(r["figures"]) for r in b["runs"])}
        teacher_sets = {i: t for i, t in teacher_sets.items()
                        if any(set(targets) & t_["figures"] for t_ in t["teachers"])}
        runs_table = runs_table[runs_table["figure"].isin(targets)]
        unique_runs = [r for r in unique_runs if set(targets) & set(r["figures"])]
        figures = [f for f in figures if f in targets]
    runs, todo = len(unique_runs), sum(len(b["runs"]) for b in batches.values())
    flops = sum(b["flops"] for b in batches.values())
    seconds = sum(b["seconds"] for b in batches.values())
    per_figure = []
    for figure in figures:
        jobs = [b for b in batches.values() if any(figure in r["figures"] for r in b["runs"])]
        count = sum(1 for b in jobs for r in b["runs"] if figure in r["figures"])
        per_figure.append(f"{figure} {count} to compute in {len(jobs)} jobs "
                          f"({sum(b['flops'] for b in jobs) / 1e12:.1f} TFLOP)")
    steps = sum(b["lockstep_steps"] for b in batches.values())
    scope = (f"plan for {', '.join(targets)} (only {'this target' if len(targets) == 1 else 'these targets'}; "
             "`snakemake all` plans every figure):\n") if targets else ""
    return (f"{scope}plan: {len(runs_table)} requested runs, {runs} distinct, {todo} to compute in {len(batches)} "
            f"batch jobs; {flops / 1e12:.1f} TFLOP of students, ~{duration(seconds)} of job time at {gflops:g} "
            f"GFLOP/s per job (config batch.gflops; `sublearn batch --plan` prints a sheet's stacks)\n"
            f"plan: {sum(len(t['teachers']) for t in teacher_sets.values())} teachers to train in "
            f"{len(teacher_sets)} teacher jobs, {sum(t['flops'] for t in teacher_sets.values()) / 1e12:.1f} TFLOP, "
            f"~{duration(sum(t['seconds'] for t in teacher_sets.values()))} of job time\n"
            f"plan by figure: {', '.join(per_figure)}\n"
            f"lockstep steps: {steps} (the batch jobs' lockstep sets one after another, each as long as its "
            f"longest trajectory; {len(batches) + len(teacher_sets)} teacher and batch jobs)\n"
            f"training path: {path} (device {cfg['device']}, planned as {device}; batch.stack_layers "
            f"{stack_layers_setting(cfg['batch'].get('stack_layers', 'auto'))}; runs.csv records each run's)")

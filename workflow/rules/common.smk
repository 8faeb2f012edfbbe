# Shared helpers: the grid language, the table of runs, and the lookups the rules use.
#
# `runs_table(config)` is the one place where the config turns into runs. Everything else (rule inputs,
# params, resources) reads plain dicts built once from it, keyed by wildcards, so planning ~16,000
# jobs stays fast.

import dataclasses
import hashlib
import inspect
import itertools
import json
import math
import os
import re
import sys
from pathlib import Path

import pandas as pd

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

REPO = Path(workflow.basedir)
SRC = REPO / "src"

# Jobs run the runner of this checkout (`python -m sublearn.cli`): src/ goes on PYTHONPATH (so a conda env
# needs only the dependencies), and without --use-conda the interpreter running Snakemake comes first on
# PATH, so `python` is the one that has torch even when its venv is not activated.
os.environ.update(PYTHONPATH=os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p))
if not any(m.name == "CONDA" for m in workflow.deployment_settings.deployment_method):
    os.environ.update(PATH=os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", ""))))

if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))
from sublearn import batch as runner_batch  # noqa: E402  (torch-free: sheets, stacks, cost model)
from sublearn import dataid  # noqa: E402  (torch-free: data identities and cache names)
from sublearn.config import (  # noqa: E402
    FLAG_SETTINGS,
    JOB_SETTINGS,
    LABEL_SETTINGS,
    UsageError,
    config_from_flags,
    dataset_key,
    raw_files,
    resolve,
    sheet_settings,
    teacher_config,
)

sys.path.append(str(REPO / "workflow" / "scripts"))  # the grid language, shared with the plot scripts
import grids  # noqa: E402  (numpy only)
from grids import expand_seeds  # noqa: E402

R = config["results_dir"].rstrip("/")
# The device of the torch jobs reaches them through the environment, not as a param: where a run computed
# is no reason to compute it again (runs.csv records the device; the merge warns when a figure mixes them).
# Cluster jobs re-read the config and set it the same way.
os.environ.update(SUBLEARN_DEVICE=str(config["device"]))
LOGS = config["logs_dir"].rstrip("/")
# conda env of the torch rules: the CPU or the CUDA build (not a rerun trigger in our profiles)
TORCH_ENV = f"../../envs/torch-{config['torch_env']}.yaml"

# Runner settings a config may set (the runner defines them). Seed, labels, paths, threads and device
# belong to the workflow.
FLAGS = tuple(n for n in FLAG_SETTINGS if n not in (*JOB_SETTINGS, *LABEL_SETTINGS, "seed"))
RESERVED_COORDS = {"figure", "panel", "point", "seed", "sweep_name", "run_label", "data_dir", "cache_dir",
                   "threads", "device", "outdir", "run_dir", "teacher_out", "teacher_checkpoint"}
LARGE_PANEL = 20_000  # runs of one panel beyond which planning says that it will take time
TEMPLATE_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(WorkflowError):
    pass


wildcard_constraints:
    figure=r"[A-Za-z][A-Za-z0-9_]*",
    panel=r"[A-Za-z0-9][A-Za-z0-9_.+-]*",
    point=r"[^/]+",
    seed=r"\d+",
    key=r"[0-9a-f]{16}",
    dskey=r"mnist|emnist-balanced|emnist-letters",
    cache=r"(mnist|emnist-balanced|emnist-letters)-[0-9a-f]{10}",
    split=r"balanced|letters",


# --------------------------------------------------------------------------------------------------
# The grid language
# --------------------------------------------------------------------------------------------------


def expand_values(spec, where):
    """A value spec -> list of (label, value) (the grid language is workflow/scripts/grids.py)."""
    try:
        return grids.expand_values(spec, where)
    except grids.GridError as exc:
        raise ConfigError(str(exc)) from None


def flag_text(value):
    """A config value as the runner's command-line text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | dict):
        if isinstance(value, list) and all(isinstance(v, int) for v in value):
            return ",".join(str(v) for v in value)
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def fill_template(text, coords, where, used):
    def sub(match):
        name = match.group(1)
        if name not in coords:
            raise ConfigError(f"config: {where}: {{{name}}} is not a grid coordinate of this panel "
                              f"(coordinates: {', '.join(coords) or 'none'})")
        used.add(name)
        return flag_text(coords[name])

    return TEMPLATE_RE.sub(sub, text)


# --------------------------------------------------------------------------------------------------
# Validation through the runner (torch-free), memoised: one resolution per distinct seedless setting
# --------------------------------------------------------------------------------------------------

_RESOLVED = {}


def resolve_flags(flags):
    """The runner's resolution of a run's settings (seed 0), memoised."""
    key = json.dumps(flags, sort_keys=True, default=str)
    if key not in _RESOLVED:
        try:
            _RESOLVED[key] = resolve(config_from_flags(flags))
        except UsageError as exc:
            _RESOLVED[key] = exc
    result = _RESOLVED[key]
    if isinstance(result, UsageError):
        raise result
    return result


def with_seed(rc, seed):
    return dataclasses.replace(rc, config=dataclasses.replace(rc.config, seed=seed))


# --------------------------------------------------------------------------------------------------
# Data locations
# --------------------------------------------------------------------------------------------------


def _candidates():
    return config["data_dir"] if isinstance(config["data_dir"], list) else [config["data_dir"]]


def _holding(dskey):
    """The first data_dir folder holding a dataset's raw files, or None."""
    folder, names = raw_files_of(dskey)
    return next((c.rstrip("/") for c in _candidates() if all((Path(c) / folder / n).is_file() for n in names)), None)


def _synthetic_keys():
    """Dataset keys replaced by generated data: EMNIST with synthetic_emnist, MNIST with synthetic_mnist
    (true, or auto when no data_dir folder holds the MNIST raw files, e.g. offline)."""
    keys = {"emnist-balanced", "emnist-letters"} if config["synthetic_emnist"] else set()
    mode = config.get("synthetic_mnist", False)
    if mode is True or (mode == "auto" and _holding("mnist") is None):
        keys.add("mnist")
    return keys


def _data_dir_for(dskey):
    if dskey in SYNTHETIC:
        return f"{config['synthetic']['dir'].rstrip('/')}/data"
    return _holding(dskey) or _candidates()[-1].rstrip("/")


def raw_files_of(dskey):
    """Folder and IDX file names torchvision reads for a dataset key."""
    dataset, _, split = dskey.partition("-")
    return raw_files(dataset, split or "balanced")


def synthetic_raw_files(dskey):
    folder, names = raw_files_of(dskey)
    return [f"{config['synthetic']['dir'].rstrip('/')}/data/{folder}/{n}" for n in names]


def dataset_and_split(dskey):
    dataset, _, split = dskey.partition("-")
    return dataset, split or "balanced"


def cache_file(dskey):
    """The runner's cache of this dataset's data folder (named by dataset and folder, see sublearn.dataid)."""
    synthetic = dskey in SYNTHETIC
    folder = f"{config['synthetic']['dir'].rstrip('/')}/cache" if synthetic else config["cache_dir"].rstrip("/")
    return str(dataid.cache_file(folder, *dataset_and_split(dskey), DATA_DIRS[dskey]))


def existing_raw_files(dskey):
    """The raw files as prepare_data's input when they are all there (so replacing them reruns it, and
    everything downstream); none when they are to be downloaded."""
    paths = dataid.raw_paths(DATA_DIRS[dskey], *dataset_and_split(dskey))
    return [str(p) for p in paths] if all(p.is_file() for p in paths) else []


def data_identity(dskey):
    """The identity of the data the dataset's runs use now (None: not there yet, to be downloaded or made)."""
    return dataid.current_identity(DATA_DIRS[dskey], *dataset_and_split(dskey), dataid.read_record(CACHE_FILES[dskey]))


def store(dskey):
    """Where a dataset's runs and teachers live: runs on synthetic data apart (R/synthetic), so that the same
    run key on the real data later is computed, not taken from the synthetic one."""
    return f"{R}/synthetic" if dskey in SYNTHETIC else R


DATASET_KEYS = ("mnist", "emnist-balanced", "emnist-letters")
SYNTHETIC = _synthetic_keys()
DATA_DIRS = {k: _data_dir_for(k) for k in DATASET_KEYS}
CACHE_FILES = {k: cache_file(k) for k in DATASET_KEYS}
DATASET_OF_CACHE = {v: k for k, v in CACHE_FILES.items()}
DATASET_OF_CACHE_NAME = {Path(v).stem: k for k, v in CACHE_FILES.items()}


# --------------------------------------------------------------------------------------------------
# The table of runs
# --------------------------------------------------------------------------------------------------


def runs_table(cfg):
    """Config -> one row per requested run: figure, panel, point, coordinates, seed, run key, teacher key.

    Validates every run with the runner's own resolution and raises ConfigError naming the figure and
    panel. Several panels may request the same run (equal run keys): it is computed once.
    """
    rows = []
    teacher_checked = {}
    for figure, fig in cfg["figures"].items():
        if fig is None:  # disabled (e.g. by an override config)
            continue
        seeds = expand_seeds(fig.get("seeds", cfg["seeds"]))
        panel_names = [p["name"] for p in fig["panels"]]
        if len(set(panel_names)) != len(panel_names):
            raise ConfigError(f"config: figure {figure}: panel names repeat ({', '.join(panel_names)})")
        for panel in fig["panels"]:
            where = f"figure {figure}, panel {panel['name']}"
            fixed = {**cfg["defaults"], **panel.get("flags", {})}
            axes = []
            for name, spec in panel["grid"].items():
                if name in RESERVED_COORDS:
                    hint = "; seeds come from `seeds`" if name == "seed" else ""
                    raise ConfigError(f"config: {where}: grid coordinate {name!r} is reserved{hint}")
                axes.append((name, expand_values(spec, f"{where}, grid {name}")))
            used = set()
            seen_points = {}
            points = math.prod(len(values) for _, values in axes)
            if points * len(seeds) > LARGE_PANEL:
                logger.warning(f"config: {where}: {points} grid points x {len(seeds)} seeds = "
                               f"{points * len(seeds)} runs; planning them takes a while")
            for combo in itertools.product(*(values for _, values in axes)):
                coords = {name: value for (name, _), (_, value) in zip(axes, combo, strict=True)}
                labels = {name: label for (name, _), (label, _) in zip(axes, combo, strict=True)}
                point = "_".join(f"{n}-{labels[n]}" for n, _ in axes) or "base"
                if point in seen_points:
                    raise ConfigError(f"config: {where}: two grid points share the name {point!r}; "
                                      "use distinct values or {labels: ...}")
                seen_points[point] = coords
                flags = {}
                for name, value in fixed.items():
                    if isinstance(value, str):
                        value = fill_template(value, coords, f"{where}, flag {name}", used)
                    elif isinstance(value, list) and name == "perturb":
                        value = [fill_template(v, coords, f"{where}, flag {name}", used) for v in value]
                    flags[name] = value
                for name, value in coords.items():
                    if name in FLAGS:
                        flags[name] = value
                        used.add(name)
                flags = {**flags, "seed": 0, "sweep_name": f"{figure}.{panel['name']}", "run_label": point}
                try:
                    rc0 = resolve_flags(flags)
                except (UsageError, TypeError) as exc:
                    raise ConfigError(f"config: {where}, point {point}: {exc}") from None
                trc0 = teacher_config(rc0)
                tkey = json.dumps(sheet_settings(trc0), sort_keys=True)
                if tkey not in teacher_checked:
                    try:
                        teacher_checked[tkey] = resolve(trc0)
                    except UsageError as exc:
                        raise ConfigError(f"config: {where}, point {point}: teacher settings: {exc}") from None
                    if teacher_checked[tkey].teacher_key() != rc0.teacher_key():
                        raise ConfigError(f"config: {where}, point {point}: internal error: the teacher "
                                          "settings would train another teacher than this run's")
                dskey = dataset_key(rc0.config.dataset, rc0.config.emnist_split)
                shown = {n: labels[n] if isinstance(spec, dict) and "labels" in spec else coords[n]
                         for n, spec in panel["grid"].items()}
                for seed in seeds:
                    rc = with_seed(rc0, seed)
                    run_key = rc.run_key()
                    rows.append({
                        "figure": figure, "panel": panel["name"], "point": point, "seed": seed,
                        "coords": shown, "run_key": run_key, "teacher_key": rc.teacher_key(),
                        "teacher_rc": with_seed(teacher_checked[tkey], seed),
                        "dataset": dskey, "num_classes": rc0.num_classes,
                        "run_dir": f"{store(dskey)}/runs/{run_key}", "rc": rc,
                    })
            unused = [n for n, _ in axes if n not in used]
            if unused:
                raise ConfigError(f"config: {where}: grid coordinate(s) {', '.join(unused)} are neither runner "
                                  "flags nor used as {name} in the panel's flags")
    return pd.DataFrame(rows)


def teacher_path(dskey, teacher_key):
    """A teacher's checkpoint without its extension (.pt; its summary .json beside it)."""
    return f"{store(dskey)}/teachers/{teacher_key}"


def job_runtime(seconds, resource, minimum, cfg):
    """A job's wall-time request in minutes: its estimated seconds plus a minute, times batch.runtime_margin,
    at least the rule's configured `resources` runtime."""
    return max(cfg["resources"][resource].get("runtime", minimum),
               int(math.ceil((seconds + 60) * cfg["batch"]["runtime_margin"] / 60)))


def plan_batches(unique_runs, cfg):
    """Runs -> batch jobs: runs of one dataset requested by the same figures, ordered so that runs sharing
    a stack (teacher and noise stream) sit together, cut into chunks of at most `batch.max_tflop` estimated
    FLOPs and `batch.max_runs` runs, a stack that fits in a chunk never split across two. Chunks are cut over all runs, finished or not, and named by the hash
    of their run keys, so a chunk's name does not change while other jobs finish (a cluster job re-reads
    this plan when it starts); a chunk's job computes only its unfinished runs, and a chunk with none has
    no job."""
    settings = cfg["batch"]

    def group(run):  # a job serves one set of figures, so `snakemake fig5` computes no other figure's runs
        return (run["figures"], run["dataset"])

    stack_of = {r["run_key"]: runner_batch.stack_key(r["rc"]) for r in unique_runs}
    trajectory_of = {r["run_key"]: r["rc"].trajectory_key() for r in unique_runs}
    cost_of = {r["run_key"]: runner_batch.run_flops(r["rc"], r["dataset"]) for r in unique_runs}
    # stacks of equal student shapes (one per seed, say) next to each other, so that a GPU job's lockstep
    # sets stack their layers; within a stack, runs of one trajectory (differing only in N and E or the
    # student's class head) together, longest first: the others take its weights along the way and cost
    # only their evaluation
    shape_of = {}
    for r in unique_runs:
        shape = json.dumps(r["rc"].student.arch_description(), sort_keys=True)
        shape_of[stack_of[r["run_key"]]] = min(shape_of.get(stack_of[r["run_key"]], shape), shape)
    ordered = sorted(unique_runs, key=lambda r: (group(r), shape_of[stack_of[r["run_key"]]], stack_of[r["run_key"]],
                                                 trajectory_of[r["run_key"]], -cost_of[r["run_key"]]["student"],
                                                 r["run_key"]))
    # a stack that fits in a job is not split: a job of whole stacks shares every noise draw and teacher
    # pass, and equal stacks (fig2's seeds) make equal jobs, which share the cores evenly to the end
    members = {}
    for run in ordered:
        members.setdefault((group(run), stack_of[run["run_key"]]), []).append(
            runner_batch.SheetRun(run["run_key"], Path(run["run_dir"]), run["rc"], {}))
    whole = {where: runner_batch.stack_flops(runs, where[0][1]) for where, runs in members.items()}
    budget = settings["max_tflop"] * 1e12
    chunks, current, flops, last_stack, last_trajectory = [], [], 0.0, None, None
    heads = {}  # (stack, teacher aux head) -> its targets' FLOPs counted in the current chunk
    for run in ordered:
        key = run["run_key"]
        cost = cost_of[key]
        head = (stack_of[key], runner_batch.teacher_head_key(run["rc"]))
        student = cost["student"] if (stack_of[key], trajectory_of[key]) != (last_stack, last_trajectory) else 0.0
        extra = student + cost["evaluation"] + (cost["teacher_body"] if stack_of[key] != last_stack else 0.0)
        extra += max(0.0, cost["teacher_head"] - heads.get(head, 0.0))
        new_stack = not current or (group(current[-1]), last_stack) != (group(run), stack_of[key])
        needed = max(extra, whole[(group(run), stack_of[key])]) if new_stack else extra
        if current and (group(current[-1]) != group(run) or len(current) >= settings["max_runs"]
                        or flops + needed > budget):
            chunks.append(current)
            current, flops, heads = [], 0.0, {}
            extra = cost["student"] + cost["evaluation"] + cost["teacher_body"] + cost["teacher_head"]
        current.append(run)
        flops += extra
        heads[head] = max(heads.get(head, 0.0), cost["teacher_head"])
        last_stack, last_trajectory = stack_of[key], trajectory_of[key]
    if current:
        chunks.append(current)
    out = {}
    identities = {d: data_identity(d) for d in {r["dataset"] for r in unique_runs}}
    for chunk in chunks:
        # finished: its runs.csv records this run's key and the identity of the data there now
        runs = [r for r in chunk if identities[r["dataset"]] is None or runner_batch.recorded_result(r["run_dir"])
                != (r["run_key"], identities[r["dataset"]])]
        if not runs:
            continue
        batch_id = hashlib.sha256(" ".join(r["run_key"] for r in chunk).encode()).hexdigest()[:16]
        sheet_runs = [runner_batch.SheetRun(r["run_key"], Path(r["run_dir"]), r["rc"], {}) for r in runs]
        flops = sum(runner_batch.stack_flops(stack, runs[0]["dataset"]) for stack in runner_batch.stacks(sheet_runs))
        seconds = runner_batch.estimated_seconds(flops, settings["gflops"], len(runs), runner_batch.SECONDS_PER_RUN)
        memory = sum(runner_batch.memory_mb(r["rc"]) for r in runs)
        out[batch_id] = {
            "id": batch_id, "runs": runs, "flops": flops, "seconds": seconds,
            "dataset": runs[0]["dataset"],
            "priority": 1 + int(seconds // 60),  # estimated minutes
            "teachers": sorted({f"{teacher_path(r['dataset'], r['teacher_key'])}.pt" for r in runs}),
            "outputs": [f"{r['run_dir']}/runs.csv" for r in runs],
            "runtime": job_runtime(seconds, "student", 15, cfg),
            "mem_mb": int(config["resources"]["student"].get("mem_mb", 4000)
                          + min(memory, settings["memory_mb"])),
        }
    return out


def plan_teacher_sets(unique_runs, batches, cfg):
    """Teachers -> teacher jobs (`sublearn teachers`): the teachers of one dataset requested by the same
    figures, those of equal shape side by side and by seed (a GPU job stacks their layers), cut into chunks
    of at most `batch.teacher_max_tflop` estimated FLOPs. As for batches, chunks are cut over every teacher
    of the config and named by the hash of their keys, and a chunk's job trains only its teachers that are
    untrained (no summary recording its key and the data's identity now) and needed by an unfinished run."""
    teachers = {}
    for run in unique_runs:
        teacher = teachers.setdefault(run["teacher_key"], {"key": run["teacher_key"], "rc": run["teacher_rc"],
                                                           "dataset": run["dataset"], "figures": set()})
        teacher["figures"].update(run["figures"])
    cost = {key: runner_batch.teacher_flops(t["rc"], t["dataset"]) for key, t in teachers.items()}

    def order(t):
        shape = json.dumps(t["rc"].teacher.arch_description(), sort_keys=True)
        return sorted(t["figures"]), t["dataset"], shape, t["rc"].config.seed, t["key"]

    chunks, current, flops = [], [], 0.0
    for teacher in sorted(teachers.values(), key=order):
        if current and (order(current[-1])[:2] != order(teacher)[:2]
                        or flops + cost[teacher["key"]] > cfg["batch"]["teacher_max_tflop"] * 1e12):
            chunks.append(current)
            current, flops = [], 0.0
        current.append(teacher)
        flops += cost[teacher["key"]]
    if current:
        chunks.append(current)
    needed = {run["teacher_key"] for b in batches.values() for run in b["runs"]}
    identities = {d: data_identity(d) for d in {t["dataset"] for t in teachers.values()}}
    out = {}
    for chunk in chunks:
        todo = [t for t in chunk if t["key"] in needed and (identities[t["dataset"]] is None or runner_batch.
                recorded_teacher(f"{teacher_path(t['dataset'], t['key'])}.pt") != (t["key"], identities[t["dataset"]]))]
        if not todo:
            continue
        set_id = f"teachers-{hashlib.sha256(' '.join(t['key'] for t in chunk).encode()).hexdigest()[:16]}"
        flops = sum(cost[t["key"]] for t in todo)
        seconds = runner_batch.estimated_seconds(flops, cfg["batch"]["gflops"], len(todo), runner_batch.SECONDS_PER_RUN)
        paths = [teacher_path(t["dataset"], t["key"]) for t in todo]
        out[set_id] = {
            "id": set_id, "teachers": todo, "flops": flops, "seconds": seconds, "dataset": todo[0]["dataset"],
            "outputs": [f"{path}{ext}" for path in paths for ext in (".pt", ".json")],
            "runtime": job_runtime(seconds, "teacher", 30, cfg),
            "sheet": "".join(runner_batch.teacher_record(t["key"], f"{path}.pt", sheet_settings(t["rc"].config)) + "\n"
                             for t, path in zip(todo, paths, strict=True)),
        }
    return out


def stack_layers_flag(value):
    """config batch.stack_layers (YAML reads on/off as booleans) -> `sublearn batch --stack-layers`."""
    return {True: "on", False: "off"}.get(value, value)


def sheet_text(batch):
    return "".join(runner_batch.sheet_record(r["run_key"], r["run_dir"], sheet_settings(r["rc"].config),
                                             r["coords"]) + "\n" for r in batch["runs"])


# --------------------------------------------------------------------------------------------------
# Lookups for the rules (plain dicts keyed by wildcards)
# --------------------------------------------------------------------------------------------------

RUNS = runs_table(config)
if config.get("synthetic_mnist") == "auto" and "mnist" in SYNTHETIC and (RUNS["dataset"] == "mnist").any():
    logger.warning(f"synthetic_mnist auto: no MNIST raw files in {', '.join(_candidates())}: the MNIST panels use "
                   f"SYNTHETIC MNIST (generated, not the real dataset; runs in {R}/synthetic/)")
FIGURES = [name for name, fig in config["figures"].items() if fig is not None]
def unique_runs(table):
    """One record per distinct run, with the sorted names of the figures that request it."""
    runs = {}
    for record in table.to_dict("records"):
        first = runs.setdefault(record["run_key"], {**record, "figures": ()})
        first["figures"] = tuple(sorted({*first["figures"], record["figure"]}))
    return list(runs.values())


UNIQUE_RUNS = unique_runs(RUNS) if len(RUNS) else []
BATCHES = plan_batches(UNIQUE_RUNS, config)
TEACHER_SETS = plan_teacher_sets(UNIQUE_RUNS, BATCHES, config)
# teachers before any batch job: they unblock batch jobs
TEACHER_PRIORITY = 1 + max((b["priority"] for b in BATCHES.values()), default=0)

FIG_RUNS = {f: [] for f in FIGURES}
FIG_REQUESTS = {f: [] for f in FIGURES}
FIG_POINTS = {f: {} for f in FIGURES}
for _r in RUNS[["figure", "panel", "point", "seed", "coords", "run_key", "dataset", "run_dir"]].itertuples(index=False):
    FIG_RUNS[_r.figure].append(f"{_r.run_dir}/runs.csv")
    FIG_REQUESTS[_r.figure].append({"panel": _r.panel, "point": _r.point, "seed": int(_r.seed),
                                    "run_key": _r.run_key})
    FIG_POINTS[_r.figure].setdefault(_r.panel, {})[_r.point] = _r.coords
del _r
FIG_RUNS = {f: list(dict.fromkeys(files)) for f, files in FIG_RUNS.items()}


def _plan_summary():
    runs, todo = len(UNIQUE_RUNS), sum(len(b["runs"]) for b in BATCHES.values())
    flops = sum(b["flops"] for b in BATCHES.values())
    seconds = sum(b["seconds"] for b in BATCHES.values())
    rate = config["batch"]["gflops"]
    per_figure = []
    for figure in FIGURES:
        jobs = [b for b in BATCHES.values() if any(figure in r["figures"] for r in b["runs"])]
        count = sum(1 for b in jobs for r in b["runs"] if figure in r["figures"])
        per_figure.append(f"{figure} {count} to compute in {len(jobs)} jobs "
                          f"({sum(b['flops'] for b in jobs) / 1e12:.1f} TFLOP)")
    return (f"plan: {len(RUNS)} requested runs, {runs} distinct, {todo} to compute in {len(BATCHES)} batch jobs; "
            f"{flops / 1e12:.1f} TFLOP of students, ~{seconds / 3600:.2f} h of job time at {rate:g} GFLOP/s per "
            f"job (config batch.gflops; `sublearn batch --plan` prints a sheet's stacks)\n"
            f"plan: {sum(len(t['teachers']) for t in TEACHER_SETS.values())} teachers to train in "
            f"{len(TEACHER_SETS)} teacher jobs, {sum(t['flops'] for t in TEACHER_SETS.values()) / 1e12:.1f} TFLOP, "
            f"~{sum(t['seconds'] for t in TEACHER_SETS.values()) / 3600:.2f} h of job time\n"
            f"plan by figure: {', '.join(per_figure)}")


if BATCHES:
    logger.info(_plan_summary())

# torch_env gpu (the GPU profile): every teacher and batch job asks for one GPU (sbatch --gpus=1)
TORCH_CLUSTER_RESOURCES = {"gpu": 1} if config["torch_env"] == "gpu" else {}
if config["batch"].get("slurm_partition"):
    TORCH_CLUSTER_RESOURCES["slurm_partition"] = config["batch"]["slurm_partition"]


RESULTS_LOCK = []  # the open lock file, held for the life of this Snakemake process


def hold_results_lock():
    """One executing Snakemake per results_dir. Snakemake locks only its own working directory, so two
    checkouts sharing a results_dir would run every job twice, both writing the same files; the second
    stops here, naming the first (flock: released when the holder exits, however it ends)."""
    import fcntl
    import socket
    import time

    path = Path(R) / ".sublearn.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise WorkflowError(f"results_dir {R} is in use by another Snakemake ({holder}); wait for it to "
                            "finish, or give this run its own results_dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, working directory {os.getcwd()}, "
                 f"since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    RESULTS_LOCK.append(handle)


def _precomputed_signature(func):
    """Snakemake inspects the signature of every input/params/resources function once per job; caching
    it on the function keeps planning fast."""
    func.__signature__ = inspect.signature(func)
    return func


@_precomputed_signature
def sheet_text_of(w):
    """A sheet's text: a batch's runs or a teacher set's teachers."""
    return TEACHER_SETS[w.sheet]["sheet"] if w.sheet in TEACHER_SETS else sheet_text(BATCHES[w.sheet])


@_precomputed_signature
def data_dir_of_input(w, input):
    """The dataset folder of a job's cache input (derived from the input: not a rerun trigger)."""
    return DATA_DIRS[DATASET_OF_CACHE[input.cache]]


DATASET_NAMES = {"mnist": "MNIST", "emnist-balanced": "EMNIST", "emnist-letters": "EMNIST"}


def figure_spec(figure):
    """What a plot script needs to know about its figure (titles, grids, plot hints, synthetic data)."""

    def synthetic_of(panel):
        datasets = set(RUNS.loc[(RUNS.figure == figure) & (RUNS.panel == panel), "dataset"])
        return {DATASET_NAMES[d] for d in datasets & SYNTHETIC}

    try:
        return grids.figure_spec(config, figure, synthetic_of)
    except grids.GridError as exc:
        raise ConfigError(str(exc)) from None


def caption_for(figure):
    specific = REPO / "workflow" / "report" / f"{figure}.rst"
    return f"../report/{figure}.rst" if specific.is_file() else "../report/figure.rst"

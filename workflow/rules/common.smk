# Shared by the rules: paths, wildcards, the lookups built once from the table of runs and the job plan,
# input functions and the results lock. The logic lives in plain modules: workflow/scripts/runs_table.py
# (the config into runs), workflow/scripts/jobs.py (runs into jobs) and the runner (sublearn).

import inspect
import os
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

REPO = Path(workflow.basedir)
SRC = REPO / "src"
for _path in (SRC, REPO / "workflow" / "scripts"):  # the runner (torch-free parts) and the plain modules
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import build_summary  # noqa: E402
import grids  # noqa: E402  (numpy only)
import jobs  # noqa: E402
import runs_table as table  # noqa: E402
from sublearn import status as build_status  # noqa: E402  (torch-free)
from sublearn.catalog import CATALOG, DATASET_KEYS  # noqa: E402
from sublearn.progress import duration  # noqa: E402
from sublearn.device import stack_layers_setting  # noqa: E402

# profiles/gpu keeps its workflow settings in a config file (so that `--config` adds to them); a
# --configfile on the command line replaces it: then stop before planning, saying what to add.
GPU_SETTINGS = REPO / "profiles" / "gpu" / "gpu.yaml"
if workflow.is_main_process and ("gpu" in workflow.resource_settings.resources
                                 or GPU_SETTINGS in map(Path, workflow.config_settings.configfiles)):
    import yaml

    _lost = jobs.overridden_settings(yaml.safe_load(GPU_SETTINGS.read_text()), config,
                                     dict(workflow.config_settings.config))
    if _lost:
        raise WorkflowError(
            f"the GPU profile (profiles/gpu) is in use but its settings ({GPU_SETTINGS.relative_to(REPO)}) are "
            f"not: {'; '.join(_lost)}. A --configfile on the command line replaces the profile's config file: "
            f"name it last (--configfile YOUR.yaml {GPU_SETTINGS.relative_to(REPO)}), or set these with --config")

R = config["results_dir"].rstrip("/")
LOGS = config["logs_dir"].rstrip("/")
# conda env of the torch rules: the CPU or the CUDA build (not a rerun trigger in our profiles)
TORCH_ENV = f"../../envs/torch-{config['torch_env']}.yaml"

# Every job runs the runner of this checkout (`python -m sublearn.cli`, src/ on PYTHONPATH, so a conda env
# needs only the dependencies); without --use-conda the interpreter running Snakemake comes first on PATH,
# so `python` is the one that has torch even when its venv is not activated. The device reaches the torch
# jobs here, not as a param: where a run computed is no reason to compute it again (runs.csv records the
# device; the merge warns when a figure mixes them). Cluster jobs read the config and set it the same way.
_ENV = {"PYTHONPATH": (SRC, "${{PYTHONPATH:+:$PYTHONPATH}}"), "SUBLEARN_DEVICE": (config["device"], "")}
if not any(m.name == "CONDA" for m in workflow.deployment_settings.deployment_method):
    _ENV["PATH"] = (Path(sys.executable).parent, ":$PATH")
# braces doubled: Snakemake formats the prefix with each job's wildcards
shell.prefix("".join(f"export {k}={shlex.quote(str(v)).replace('{', '{{').replace('}', '}}')}{rest}; "
                     for k, (v, rest) in _ENV.items()))


class ConfigError(WorkflowError):
    pass


# `--cores 0` (or `--jobs 0` run locally) leaves Snakemake's scheduler waiting forever for a free core
if workflow.local_exec and workflow.is_main_process and workflow.resource_settings.cores == 0:
    raise WorkflowError("--cores 0: no job can start without a core; give --cores N with N >= 1, "
                        "or --cores all (every core of this machine)")


wildcard_constraints:
    figure=r"[A-Za-z][A-Za-z0-9_]*",
    panel=r"[A-Za-z0-9][A-Za-z0-9_.+-]*",
    point=r"[^/]+",
    seed=r"\d+",
    key=r"[0-9a-f]{16}",
    dskey="|".join(DATASET_KEYS),
    cache=rf"({'|'.join(DATASET_KEYS)})-[0-9a-f]{{10}}",


include: "data.smk"


def teacher_path(dskey, teacher_key):
    """A teacher's checkpoint without its extension (.pt; its summary .json beside it)."""
    return f"{store(dskey)}/teachers/{teacher_key}"


# --------------------------------------------------------------------------------------------------
# Lookups for the rules (plain dicts keyed by wildcards), built once
# --------------------------------------------------------------------------------------------------

try:
    RUNS = table.runs_table(config, store, logger.warning)
except table.ConfigError as exc:
    raise ConfigError(str(exc)) from None
for _key in sorted(SYNTHETIC):
    if DATA.synthetic_mode(_key) == "auto" and (RUNS["dataset"] == _key).any():
        _name = CATALOG[_key].display
        logger.warning(f"{CATALOG[_key].synthetic_setting} auto: no {_name} raw files in "
                       f"{', '.join(DATA.candidates())}: the {_name} panels use SYNTHETIC {_name} (generated, not "
                       f"the real dataset; runs in {R}/synthetic/)")
FIGURES = [name for name, fig in config["figures"].items() if fig is not None]
UNIQUE_RUNS = table.unique_runs(RUNS) if len(RUNS) else []
_IDENTITIES = {d: data_identity(d) for d in {r["dataset"] for r in UNIQUE_RUNS}}
_OTHER_DATA = data_locations.tables_of_other_data(R, FIGURES, _IDENTITIES)
if _OTHER_DATA:
    _ids = sorted({i for ids in _OTHER_DATA.values() for i in ids})
    logger.warning(f"data changed: {', '.join(_OTHER_DATA)} in {R}/figures (and their tables and claims) were made "
                   f"from other data ({', '.join(_ids)}) than data_dir holds now; this build replaces them. To keep "
                   f"both, give each data its own results_dir (--config results_dir={R}-other)")
# a local run knows its cores (--cores): with batch.fill_cores, each target's work is cut to keep them busy
_CORES = workflow.resource_settings.cores if workflow.local_exec and workflow.is_main_process else 1
BATCHES = jobs.plan_batches(UNIQUE_RUNS, config, _IDENTITIES, teacher_path, _CORES or 1)
TEACHER_SETS = jobs.plan_teacher_sets(UNIQUE_RUNS, BATCHES, config, _IDENTITIES, teacher_path, _CORES or 1)
SHEETS = {**BATCHES, **TEACHER_SETS}
# teachers before any batch job: they unblock batch jobs
TEACHER_PRIORITY = 1 + max((b["priority"] for b in BATCHES.values()), default=0)

FIG_RUNS = {f: [] for f in FIGURES}
FIG_REQUESTS = {f: [] for f in FIGURES}
FIG_POINTS = {f: {} for f in FIGURES}
for _r in RUNS[["figure", "panel", "point", "seed", "coords", "run_key", "run_dir"]].itertuples(index=False):
    FIG_RUNS[_r.figure].append(f"{_r.run_dir}/runs.csv")
    FIG_REQUESTS[_r.figure].append({"panel": _r.panel, "point": _r.point, "seed": int(_r.seed),
                                    "run_key": _r.run_key})
    FIG_POINTS[_r.figure].setdefault(_r.panel, {})[_r.point] = _r.coords
FIG_RUNS = {f: list(dict.fromkeys(files)) for f, files in FIG_RUNS.items()}



def requested_targets():
    """The targets on Snakemake's command line ([] for none, None when unknown: not Snakemake's command
    line, or one it cannot read). Snakemake hands its targets to the workflow only after reading it."""
    from snakemake.cli import get_argument_parser

    program = Path(sys.argv[0])
    if not workflow.is_main_process or "snakemake" not in (program.name, program.parent.name):
        return None
    try:
        args, _ = get_argument_parser().parse_known_args(sys.argv[1:])
    except (SystemExit, Exception):  # argparse exits on what it cannot read: Snakemake itself says what
        return None
    return list(args.targets or ())


def requested_figures():
    """The figures that the targets name when they name figures only (`snakemake fig2`), else None (`all`,
    `claims`, a file, no target: every figure)."""
    targets = set(requested_targets() or ())
    return [f for f in FIGURES if f in targets] if targets and targets <= set(FIGURES) else None


def check_targets():
    """A target that names no rule and no path (a typo, e.g. `fgi2`) stops with the valid targets and the
    closest one; Snakemake alone says only "No rule to produce fgi2". Called once the rules are defined."""
    import difflib

    names = [rule.name for rule in workflow.rules]
    shown = ["all", "claims", *FIGURES]
    for target in requested_targets() or ():
        if target in names or Path(target).name != target or "." in target:  # a file
            continue
        close = difflib.get_close_matches(target, shown, n=1) or difflib.get_close_matches(target, names, n=1)
        raise WorkflowError(f"unknown target {target!r}" + (f" (did you mean {close[0]}?)" if close else "")
                            + f"; targets: {', '.join(shown)}, or a file under {R}/")


def write_status_plan():
    """The plan that `sublearn status RESULTS_DIR` reads: per figure its runs and teachers, per job its
    figures, size, estimated seconds and log (written when jobs start: onstart). With figure targets
    (`snakemake fig2`), only theirs."""
    targets = requested_figures()
    shown = targets or FIGURES
    figures = {f: {"runs": [os.path.dirname(r) for r in FIG_RUNS[f]],
                   "teachers": sorted({f"{teacher_path(r.dataset, r.teacher_key)}.pt"
                                       for r in RUNS[RUNS.figure == f].itertuples()})} for f in shown}
    planned = [("batch", "batches", b, b["runs"]) for b in BATCHES.values()]
    planned += [("teachers", "teachers", t, t["teachers"]) for t in TEACHER_SETS.values()]
    jobs = {}
    for kind, folder, job, items in planned:
        served = sorted({f for item in items for f in item["figures"]} & set(shown))
        if served:
            jobs[job["id"]] = {"kind": kind, "rule": f"batch_{job['id']}" if kind == "batch" else job["id"].replace("-", "_"),
                               "figures": served, "count": len(items), "seconds": job["seconds"],
                               "log": f"{LOGS}/{folder}/{job['id']}.log"}
    build_status.write_plan(R, figures, jobs, _CORES, targets)


def log_plan():
    """What the targets will compute: runs, jobs, time (read from the Snakefile's end, after the targets
    are checked)."""
    if BATCHES:
        logger.info(jobs.plan_summary(RUNS, UNIQUE_RUNS, BATCHES, TEACHER_SETS, FIGURES, config,
                                      requested_figures()))

# torch_env gpu (the GPU profile): every teacher and batch job asks for one GPU (sbatch --gpus=1)
TORCH_CLUSTER_RESOURCES = {"gpu": 1} if config["torch_env"] == "gpu" else {}
if config["batch"].get("slurm_partition"):
    TORCH_CLUSTER_RESOURCES["slurm_partition"] = config["batch"]["slurm_partition"]


def job_start_line(rule, items, what, seconds, log):
    """The line a teacher or batch job prints when it starts (the terminal shows no rule blocks by
    default): what it computes, for which figures, how long the cost model says, where its progress is."""
    figures = sorted({f for item in items for f in item["figures"]})
    return (f"[start] {rule}: {len(items)} {what} of {', '.join(figures)}, ~{duration(seconds)} by the cost model; "
            f"progress in {log} (or: sublearn status {R})")


# --------------------------------------------------------------------------------------------------
# Input functions
# --------------------------------------------------------------------------------------------------


def _precomputed_signature(func):
    """Snakemake inspects the signature of every input/params/resources function once per job; caching
    it on the function keeps planning fast."""
    func.__signature__ = inspect.signature(func)
    return func


@_precomputed_signature
def sheet_text_of(w):
    """A sheet's text: a batch's runs or a teacher set's teachers."""
    return SHEETS[w.sheet]["sheet"]


@_precomputed_signature
def stale_runs_of(w):
    """A batch's runs whose folder has a runs.csv but no finished result: a change reruns the batch."""
    return SHEETS[w.sheet]["stale"]


def figure_spec(figure):
    """What a plot script needs to know about its figure (titles, grids, plot hints, synthetic data)."""

    def synthetic_of(panel):
        datasets = set(RUNS.loc[(RUNS.figure == figure) & (RUNS.panel == panel), "dataset"])
        return {CATALOG[d].display for d in datasets & SYNTHETIC}

    try:
        return grids.figure_spec(config, figure, synthetic_of)
    except grids.GridError as exc:
        raise ConfigError(str(exc)) from None


def caption_for(figure):
    specific = REPO / "workflow" / "report" / f"{figure}.rst"
    return f"../report/{figure}.rst" if specific.is_file() else "../report/figure.rst"


# --------------------------------------------------------------------------------------------------
# The results lock
# --------------------------------------------------------------------------------------------------

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

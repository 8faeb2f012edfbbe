"""``sublearn`` command line: run, teacher, student, batch, prepare-data.

Parsing and validation import no torch, so bad input is refused in a fraction of a second, before any
data is read or any file is written.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

from . import progress, status
from .architecture import MODEL_TYPES
from .catalog import dataset_key
from .config import CASE_INSENSITIVE_SETTINGS, FLAG_SETTINGS, ExperimentConfig, config_from_flags, lower_text
from .device import STACK_LAYERS, peak_memory, planned_device, select_device
from .errors import Fault, UsageError, bad_value
from .outputs import check_writable
from .plan import resolve, setting_flag

DEFAULTS = ExperimentConfig()  # the one place the defaults are written
DEFAULT_CACHE = os.environ.get("SUBLEARN_CACHE", str(Path.home() / ".cache" / "sublearn"))


CACHE_ONLY_HELP = ("never (re)build the dataset cache: use the one `prepare-data` wrote from --data-dir, and "
                   "stop when it is missing or holds other data than --data-dir now (the workflow's jobs)")


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports an error as a single line (exit status 2)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}; expected an integer") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}; expected a number") from None


def setting_argument(name: str, **given) -> dict:
    """add_argument's arguments for a setting's flag, from its declaration on ExperimentConfig: its type (the
    annotation: an integer, a number, a switch for a bool, text lower-cased where it is case-insensitive),
    its default (widths as their text) and its choices (a declared range of fixed values); ``given``: the
    help and any argument of the flag's own."""
    declared = ExperimentConfig.__dataclass_fields__[name]
    kind = str(declared.type).split("|")[0].strip()
    if kind == "bool":
        return {"action": "store_true", **given}
    default = getattr(DEFAULTS, name)
    arguments = {"default": ",".join(map(str, default)) if kind == "list[int]" else default}
    types = {"int": _integer, "float": _number, "str": lower_text if name in CASE_INSENSITIVE_SETTINGS else None}
    if types.get(kind):
        arguments["type"] = types[kind]
    if declared.metadata["range"] is not None and declared.metadata["range"].choices is not None:
        arguments["choices"] = declared.metadata["range"].options()
    return {**arguments, **given}


def add_setting(group, name: str, **given) -> None:
    """The flag of a setting (plan.setting_flag), as its declaration says (setting_argument)."""
    group.add_argument(setting_flag(name), **setting_argument(name, **given))


def add_experiment_flags(p: argparse.ArgumentParser) -> None:
    """The flags of every setting (perturb_specs: --perturb and --perturb-spec), in the help's groups."""
    io = p.add_argument_group("I/O and reproducibility")
    add_setting(io, "outdir", help="root of the per-seed output folders seed_XXXXXX/ (default: %(default)s)")
    add_setting(io, "data_dir", help="torchvision dataset folder (MNIST/raw, EMNIST/raw); downloaded there when absent "
                                     "(default: %(default)s)")
    add_setting(io, "cache_dir", default=DEFAULT_CACHE,
                help="where prepared dataset tensors are cached (default: $SUBLEARN_CACHE or %(default)s)")
    io.add_argument("--cache-only", action="store_true", help=CACHE_ONLY_HELP)
    add_setting(io, "seed", help="base seed of every derived stream (default: %(default)s)")
    add_setting(io, "num_workers", help="accepted for compatibility; data are batched in memory, so it has no effect")
    add_setting(io, "device", help="auto, cpu, cuda or cuda:N (default: %(default)s; auto = cuda if present)")
    add_setting(io, "threads", help="torch intra-op CPU threads (default: torch's choice, usually the core count)")
    add_setting(io, "sweep_name", help="free label written to every output row")
    add_setting(io, "run_label", help="second free label written to every output row")
    add_setting(io, "append_global", help="also append to OUTDIR/{runs,layer_metrics,perturbations}_all_seeds.csv")

    ds = p.add_argument_group("dataset")
    add_setting(ds, "dataset", help="default: %(default)s")
    add_setting(ds, "emnist_split", help="EMNIST split (balanced: 47 classes, letters: 26); ignored for MNIST")
    add_setting(ds, "class_count", help="keep only labels 0..K-1 in both splits (2 <= K <= classes)")
    add_setting(ds, "class_selection", help="which classes --class-count keeps (only: first)")

    arch = p.add_argument_group("architecture")
    for role in ("teacher", "student"):
        add_setting(arch, f"{role}_type", choices=MODEL_TYPES, help=f"{role} feature extractor (default: %(default)s)")
        add_setting(arch, f"{role}_hidden_dims",
                    help="comma-separated MLP widths; for the default CNN the last one is the fc1 width")
        add_setting(arch, f"{role}_arch_spec",
                    help="CNN feature layers: a JSON list or the path of a JSON file (conv2d/linear; "
                         "activations relu/gelu/tanh/sigmoid/none; pools max/avg/adaptive_avg)")
    add_setting(arch, "m", help="aux head width (default: %(default)s)")

    layers = p.add_argument_group("per-layer initialisation and trainability",
                                  "positional (A,A,random,A) or named (fc1:A,all:random) entries")
    for role in ("teacher", "student"):
        add_setting(layers, f"{role}_init", help="sources A, B or random for each layer (default: all A)")
    for role in ("teacher", "student"):
        add_setting(layers, f"{role}_trainable", help="true/false for each layer (default: all true)")

    train = p.add_argument_group("training")
    add_setting(train, "teacher_epochs", help="default: %(default)s")
    add_setting(train, "student_epochs", help="default: %(default)s")
    add_setting(train, "data_bsize", help="labelled batch size (default: %(default)s)")
    add_setting(train, "noise_bsize", help="noise batch size (default: %(default)s)")
    add_setting(train, "noise_steps", help="noise batches per student epoch (default: %(default)s)")
    add_setting(train, "teacher_lr", help="Adam learning rate (default: %(default)s)")
    add_setting(train, "student_lr", help="Adam learning rate (default: %(default)s)")

    noise = p.add_argument_group("noise")
    add_setting(noise, "noise_dist", help="uniform in [-1,1], standard normal, or Perlin (default: %(default)s)")
    add_setting(noise, "perlin_res", help="Perlin grid resolution (default: %(default)s)")
    add_setting(noise, "normalize_noise", help="apply the MNIST normalisation to noise")
    add_setting(noise, "eval_noise_batches", help="noise batches of the aux-MSE evaluation (default: %(default)s)")
    add_setting(noise, "eval_noise_bsize", help="batch size of the aux-MSE evaluation (default: %(default)s)")

    pert = p.add_argument_group("perturbations", "additive Gaussian noise on layer weights/biases")
    pert.add_argument("--perturb", action="append", default=[],
                      help="repeatable: target:layers[,std=S][,timing=T][,include_weight=B][,include_bias=B]; "
                           "layers: a name, a+b, or all; timings: before/after_teacher/student_training")
    pert.add_argument("--perturb-spec", default=None,
                      help="JSON object or list (or a file) with target, layers, std, timing, include_weight, "
                           "include_bias, distribution; applied before the --perturb entries")


def add_job_flags(p: argparse.ArgumentParser) -> None:
    """Where a sheet's job finds its data and what it runs on."""
    add_setting(p, "data_dir", help="torchvision dataset folder (default: %(default)s)")
    add_setting(p, "cache_dir", default=DEFAULT_CACHE, help="prepared dataset tensors (default: %(default)s)")
    p.add_argument("--cache-only", action="store_true", help=CACHE_ONLY_HELP)
    add_setting(p, "device", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    add_setting(p, "threads", help="torch intra-op CPU threads")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="sublearn", description="Subliminal-learning teacher/student experiments.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    run = sub.add_parser("run", help="train a teacher and distil a student (one full experiment)",
                         description="One experiment: teacher training, then student distillation on noise.")
    add_experiment_flags(run)
    run.add_argument("--run-dir", default=None,
                     help="write this run's own runs.csv, layer_metrics.csv, perturbations.csv, config.json "
                          "here instead of appending under --outdir")
    teacher = sub.add_parser("teacher", help="train a teacher and save it",
                             description="Train the teacher of an experiment and save its checkpoint.")
    add_experiment_flags(teacher)
    teacher.add_argument("--teacher-out", required=True,
                         help="checkpoint file to write (.pt); a .json summary is written beside it")
    student = sub.add_parser("student", help="distil a student from a saved teacher",
                             description="Distil one student from a teacher saved by `sublearn teacher`; "
                                         "gives exactly what `sublearn run` gives.")
    add_experiment_flags(student)
    student.add_argument("--teacher-checkpoint", required=True, help="a checkpoint written by `sublearn teacher`")
    student.add_argument("--run-dir", default=None, help="as for `sublearn run`")
    batch = sub.add_parser("batch", help="compute the runs of a run sheet, students of one stack in lockstep",
                           description="Compute every unfinished run of a run sheet (JSON Lines: id, run_dir, "
                                       "settings, coords). Runs that share a teacher and a noise stream distil "
                                       "side by side; each run's folder is written as soon as it is done, "
                                       "exactly as `sublearn student --run-dir` writes it.")
    batch.add_argument("--sheet", required=True, help="the run sheet (.jsonl)")
    batch.add_argument("--teacher-dir", required=True, help="folder of teacher checkpoints named TEACHER_KEY.pt")
    add_job_flags(batch)
    batch.add_argument("--max-memory-mb", type=_number, default=None,
                       help="split stacks (and, with stacked layers, group stacks in lockstep) so that the "
                            "students distilled side by side fit this estimate")
    batch.add_argument("--stack-layers", default="auto", choices=STACK_LAYERS,
                       help="train stacks in lockstep, MLP students of equal shape (any seed) in batched matmuls (on: "
                            "bit for bit where they are; fused: teachers, heads, losses, Adam too, float tolerance; "
                            "auto: fused on CUDA, off on a CPU: per-run arithmetic) (default: %(default)s)")
    batch.add_argument("--plan", action="store_true", help="print the stacks and their estimated cost; compute nothing")
    batch.add_argument("--gflops", type=_number, default=100.0,
                       help="sustained GFLOP/s for --plan and the time left before a run is done (%(default)s)")
    teachers = sub.add_parser("teachers", help="train the teachers of a teacher sheet in lockstep",
                              description="Train every untrained teacher of a teacher sheet (JSON Lines: id = "
                                          "teacher key, out = checkpoint .pt, settings) in one process, side by "
                                          "side, each on its own data order; each is written as soon as it is "
                                          "done, exactly as `sublearn teacher --teacher-out` writes it.")
    teachers.add_argument("--sheet", required=True, help="the teacher sheet (.jsonl)")
    add_job_flags(teachers)
    teachers.add_argument("--gflops", type=_number, default=100.0, help="GFLOP/s for the time left (%(default)s)")
    teachers.add_argument("--stack-layers", default="auto", choices=STACK_LAYERS,
                          help="train MLP teachers of equal shape, learning rate, batch size, epochs (any seed) in "
                               "batched matmuls, one per layer and step (auto: on CUDA; fused: as on; default auto)")
    status.add_parser(sub)
    prep = sub.add_parser("prepare-data", help="download/parse a dataset once and cache its tensors",
                          description="Read a dataset with torchvision (downloading it when absent) and cache it.")
    for name in ("dataset", "emnist_split", "data_dir"):
        add_setting(prep, name)
    add_setting(prep, "cache_dir", default=DEFAULT_CACHE)
    return parser


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    flags = {name: getattr(args, name) for name in FLAG_SETTINGS if hasattr(args, name)}
    flags["perturb"] = list(args.perturb)
    return config_from_flags(flags)


@functools.cache
def _shared_parser() -> argparse.ArgumentParser:
    return build_parser()


def resolve_argv(argv: list[str], command: str = "run"):
    """Parse and validate experiment flags without running anything (used by the workflow, thousands of
    times: the parser is built once)."""
    args = _shared_parser().parse_args([command, *argv])
    return resolve(config_from_args(args))


def _prepare_data(rc, device, cache_only: bool, with_train: bool = True):
    from . import data

    c = rc.config
    check_writable(c.cache_dir, "--cache-dir")
    cache, _ = data.ensure_cache(c.dataset, c.emnist_split, c.data_dir, c.cache_dir, build=not cache_only)
    return data.load(cache, c.dataset, c.emnist_split, c.class_count, device, with_train)


def _setup(args):
    rc = resolve(config_from_args(args))
    if getattr(args, "teacher_out", None):
        check_writable(args.teacher_out, "--teacher-out", is_file=True)
    elif getattr(args, "run_dir", None):
        check_writable(args.run_dir, "--run-dir")
    else:
        check_writable(rc.config.outdir, "--outdir")
    if getattr(args, "teacher_checkpoint", None) and not Path(args.teacher_checkpoint).is_file():
        raise bad_value("--teacher-checkpoint", args.teacher_checkpoint, "no such file")
    import torch

    if rc.config.threads:
        torch.set_num_threads(rc.config.threads)
    device = select_device(rc.config.device)
    return rc, device


def _write_result(args, rc, result) -> None:
    from .outputs import write_reference_layout, write_run_dir

    if args.run_dir:
        where = write_run_dir(Path(args.run_dir), result)
    else:
        where = write_reference_layout(Path(rc.config.outdir), result, rc.config.append_global)
    row = result.run_row
    print(f"[summary] teacher acc {row['teacher_init_acc']:.4f}->{row['teacher_final_acc']:.4f} | "
          f"student acc {row['student_init_acc']:.4f}->{row['student_final_acc']:.4f} | "
          f"aux MSE {row['student_init_aux_loss']:.6g}->{row['student_final_aux_loss']:.6g} | {where}", flush=True)


def cmd_run(args) -> None:
    from .student import student_stage
    from .teacher import train_teacher_stage

    rc, device = _setup(args)
    data = _prepare_data(rc, device, args.cache_only)
    checkpoint = train_teacher_stage(rc, data, device)
    _write_result(args, rc, student_stage(rc, data, device, checkpoint, teacher_in_process=True))


def cmd_teacher(args) -> None:
    from .outputs import write_teacher
    from .teacher import train_teacher_stage

    rc, device = _setup(args)
    data = _prepare_data(rc, device, args.cache_only)
    checkpoint = train_teacher_stage(rc, data, device)
    write_teacher(checkpoint, rc.config.to_dict(), Path(args.teacher_out))
    print(f"[teacher] {args.teacher_out} (key {checkpoint['teacher_key']})", flush=True)


def cmd_student(args) -> None:
    from .student import student_stage
    from .teacher import check_checkpoint, load_checkpoint

    rc, device = _setup(args)
    checkpoint = load_checkpoint(args.teacher_checkpoint, "--teacher-checkpoint")
    check_checkpoint(rc, checkpoint)
    data = _prepare_data(rc, device, args.cache_only, with_train=False)
    _write_result(args, rc, student_stage(rc, data, device, checkpoint))


def cmd_prepare_data(args) -> None:
    from .data import ensure_cache

    check_writable(args.cache_dir, "--cache-dir")
    path, identity = ensure_cache(args.dataset, args.emnist_split, args.data_dir, args.cache_dir)
    print(f"[data] {dataset_key(args.dataset, args.emnist_split)} of {args.data_dir} (identity {identity}) "
          f"cached in {path}", flush=True)


def cmd_batch(args) -> None:
    from . import cost, dataid, grouping, sheets

    runs = sheets.read_sheet(args.sheet)
    _require_positive(args.threads, "--threads")
    _require_positive(args.max_memory_mb, "--max-memory-mb")
    _require_positive(args.gflops, "--gflops")
    budget = args.max_memory_mb or physical_memory_mb()
    for run in runs:  # a run that cannot fit would fail in the allocator, after the others' work
        why = cost.memory_refusal(run.rc, budget)
        if why:
            raise UsageError(f"--sheet {args.sheet}, run {run.id}: {why}")
    teachers = {}
    for run in runs:
        key = run.rc.teacher_key()
        path = Path(args.teacher_dir) / f"{key}.pt"
        if key not in teachers and not args.plan and not path.is_file():
            raise bad_value("--teacher-dir", args.teacher_dir, f"run {run.id} needs the teacher {path.name}, "
                            "which is not there; train it with `sublearn teacher`")
        teachers[key] = path
        if not args.plan:
            check_writable(run.run_dir, f"run {run.id}: run_dir")
    datasets = list(dict.fromkeys((r.rc.config.dataset, r.rc.config.emnist_split) for r in runs))
    if args.plan:  # what is there now, without reading or writing any cache
        identities = {k: dataid.current_identity(args.data_dir, *k, dataid.read_record(
            dataid.cache_file(args.cache_dir, *k, args.data_dir))) for k in datasets}
    else:
        from . import data

        check_writable(args.cache_dir, "--cache-dir")
        caches = {k: data.ensure_cache(*k, args.data_dir, args.cache_dir, build=not args.cache_only)
                  for k in datasets}
        identities = {k: identity for k, (_, identity) in caches.items()}
    todo = [r for r in runs if sheets.recorded_result(r.run_dir)
            != (r.id, identities[(r.rc.config.dataset, r.rc.config.emnist_split)])]
    plan = grouping.plan_stacks(todo, args.max_memory_mb)
    print(f"[batch] {len(runs)} runs, {len(runs) - len(todo)} already finished, {len(todo)} to compute in "
          f"{len(plan)} stacks", flush=True)
    if args.plan:
        grouping.print_plan(plan, args.gflops, planned_device(args.device))
        return
    if not todo:
        return
    import torch

    from . import batch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    with progress.of_runs(plan, args.sheet, args.gflops) as watch:
        sets = batch.run_stacks(plan, teachers, device, caches, args.data_dir, args.cache_dir, args.stack_layers,
                                args.max_memory_mb, advance=watch.advance)
    largest = max(grouping.set_memory_mb(lockstep) for lockstep in sets)
    print(f"[batch] {peak_memory(device)}; largest lockstep set estimated at {largest:.0f} MB of students",
          flush=True)


def cmd_teachers(args) -> None:
    from . import sheets

    teachers = sheets.read_teacher_sheet(args.sheet)
    _require_positive(args.threads, "--threads")
    for teacher in teachers:
        check_writable(teacher.out, f"teacher {teacher.id}: out", is_file=True)
    from . import data

    check_writable(args.cache_dir, "--cache-dir")
    datasets = dict.fromkeys((t.rc.config.dataset, t.rc.config.emnist_split) for t in teachers)
    caches = {k: data.ensure_cache(*k, args.data_dir, args.cache_dir, build=not args.cache_only) for k in datasets}
    todo = [t for t in teachers if sheets.recorded_teacher(t.out) != (t.id, caches[(t.rc.config.dataset,
                                                                               t.rc.config.emnist_split)][1])]
    print(f"[teachers] {len(teachers)} teachers, {len(teachers) - len(todo)} already trained, {len(todo)} to train",
          flush=True)
    from .cost import teacher_memory_mb

    for teacher in todo:
        need = teacher_memory_mb(teacher.rc)
        if need > physical_memory_mb():
            raise UsageError(f"--sheet {args.sheet}, teacher {teacher.id}: training it needs about {need:,.0f} MB, "
                             f"more than this machine's {physical_memory_mb():,.0f} MB "
                             f"({teacher.rc.teacher.arch_description()}, data_bsize {teacher.rc.config.data_bsize})")
    if not todo:
        return
    import torch

    from . import batch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    with progress.of_teachers(todo, args.sheet, args.gflops) as watch:
        batch.train_teacher_sheet(todo, device, caches, args.data_dir, args.cache_dir, args.stack_layers,
                                  watch.advance)
    print(f"[teachers] {peak_memory(device)}", flush=True)


def physical_memory_mb() -> float:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20


def _require_positive(value, flag: str) -> None:
    if value is not None and not value > 0:
        raise bad_value(flag, value, "must be a number > 0")


COMMANDS = {"run": cmd_run, "batch": cmd_batch, "teacher": cmd_teacher, "teachers": cmd_teachers,
            "student": cmd_student, "status": status.cmd_status,
            "prepare-data": cmd_prepare_data}


def main(argv: list[str] | None = None) -> int:
    started = time.time()
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"sublearn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Fault as exc:
        print(f"sublearn {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. a full disk while writing results: nothing half-written is left
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"sublearn {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    if args.command != "status":  # its output is the status alone
        print(f"[time] {args.command} {time.time() - started:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

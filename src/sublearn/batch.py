"""Many runs in one process: a run sheet, stacks of students distilled in lockstep, and a cost model.

A run sheet is the contract between the workflow and the runner: a JSON Lines file, one run per line,
``{"id": ..., "run_dir": ..., "settings": {...}, "coords": {...}}``, where ``settings`` holds typed
experiment settings (``sublearn.config.RUN_SETTINGS``) and ``coords`` the run's grid coordinates (kept
for the record). ``id`` is the run's identity (``ResolvedConfig.run_key``); a finished run's folder
carries it in ``runs.csv``, so a run whose folder already holds its result is never computed again.

Lockstep: every run of one seed with the same noise settings consumes the same noise stream (its seed
depends on the base seed only), and a run with N steps per epoch and E epochs consumes its first N x E
batches. Runs that also share a trained teacher body (same teacher key, no teacher-body perturbation
after training) therefore distil side by side: one noise draw and one teacher-body forward per step,
then each member's own aux heads, loss, backward and Adam step, with exactly the arithmetic of a lone
run. A member leaves the stack when its steps are done and its folder is written at once.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import (
    IMAGE_SHAPE,
    Diverged,
    ModelPlan,
    ResolvedConfig,
    UsageError,
    config_from_settings,
    conv_output_hw,
    dataset_key,
    distillation_perturbation,
    resolve,
)

TEST_SPLIT_SIZE = {"mnist": 10_000, "emnist-balanced": 18_800, "emnist-letters": 20_800}
TRAIN_SPLIT_SIZE = {"mnist": 60_000, "emnist-balanced": 112_800, "emnist-letters": 124_800}


@dataclass
class SheetRun:
    id: str
    run_dir: Path
    rc: ResolvedConfig
    coords: dict[str, Any]


# --------------------------------------------------------------------------------------------------
# Sheets
# --------------------------------------------------------------------------------------------------


def sheet_record(run_id: str, run_dir: str, settings: dict[str, Any], coords: dict[str, Any]) -> str:
    return json.dumps({"id": run_id, "run_dir": run_dir, "settings": settings, "coords": coords}, sort_keys=True)


def _sheet_records(path: str | Path, fields: set[str], optional: set[str], what: str):
    """(where, record, id) of every line of a sheet; a line that is not an object of ``fields`` (and maybe
    ``optional``) or repeats an id stops everything."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise UsageError(f"--sheet: invalid value {str(path)!r}; cannot read it ({exc.strerror})") from None
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"--sheet {path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where}: not a JSON object ({exc.msg})") from None
        if not isinstance(record, dict) or set(record) - fields - optional or not fields <= set(record):
            extra = f" and optional {', '.join(sorted(optional))}" if optional else ""
            raise UsageError(f"{where}: expected an object with {', '.join(sorted(fields))}{extra}")
        record_id = str(record["id"])
        where = f"{where}, {what} {record_id}"
        if record_id in seen:
            raise UsageError(f"{where}: the {what} id appears twice")
        seen.add(record_id)
        yield where, record, record_id
    if not seen:
        raise UsageError(f"--sheet: invalid value {str(path)!r}; it holds no {what}s")


def read_sheet(path: str | Path) -> list[SheetRun]:
    """Parse and validate every run of a sheet; the first bad run stops everything, before any training."""
    runs: list[SheetRun] = []
    for where, record, run_id in _sheet_records(path, {"id", "run_dir", "settings"}, {"coords"}, "run"):
        rc = resolve_in(config_from_settings(record["settings"], where), where)
        if rc.run_key() != run_id:
            raise UsageError(f"{where}: the id does not match the settings (their run key is {rc.run_key()})")
        runs.append(SheetRun(run_id, Path(record["run_dir"]), rc, record.get("coords") or {}))
    return runs


@dataclass
class SheetTeacher:
    id: str  # its teacher key
    out: Path  # its checkpoint (.pt); the .json summary goes beside it
    rc: ResolvedConfig


def teacher_record(teacher_key: str, out: str, settings: dict[str, Any]) -> str:
    return json.dumps({"id": teacher_key, "out": out, "settings": settings}, sort_keys=True)


def read_teacher_sheet(path: str | Path) -> list[SheetTeacher]:
    """A teacher sheet (JSON Lines: id = teacher key, out = checkpoint path, settings), validated whole
    before any training."""
    teachers: list[SheetTeacher] = []
    for where, record, key in _sheet_records(path, {"id", "out", "settings"}, set(), "teacher"):
        rc = resolve_in(config_from_settings(record["settings"], where), where)
        if rc.teacher_key() != key:
            raise UsageError(f"{where}: the id does not match the settings (their teacher key is "
                             f"{rc.teacher_key()})")
        if not str(record["out"]).endswith(".pt"):
            raise UsageError(f"{where}: out: invalid value {record['out']!r}; expected a checkpoint path ending in .pt")
        teachers.append(SheetTeacher(key, Path(record["out"]), rc))
    return teachers


def train_teacher_sheet(teachers: list[SheetTeacher], device, caches: dict[tuple, tuple[Path, str]], data_dir: str,
                        cache_dir: str, stack_layers: bool | None = None) -> None:
    """Train teachers in lockstep (``experiment.train_teachers``), each written as soon as it is done, exactly
    as `sublearn teacher --teacher-out` writes it. caches: (dataset, split) -> (prepared cache, identity)."""
    from . import data as datasets
    from .experiment import finish_teacher, prepare_teacher, train_teachers
    from .outputs import write_teacher

    loaded: dict[tuple, Any] = {}
    runs, out_of = [], {}
    for teacher in teachers:
        c = teacher.rc.config
        c.data_dir, c.cache_dir = str(data_dir), str(cache_dir)
        data_key = (c.dataset, c.emnist_split, c.class_count)
        if data_key not in loaded:
            loaded[data_key] = datasets.load(caches[(c.dataset, c.emnist_split)][0], *data_key, device)
        run = prepare_teacher(teacher.rc, loaded[data_key], device)
        out_of[id(run)] = teacher.out
        runs.append(run)
    failures: list[str] = []

    def done(run) -> None:
        out = out_of[id(run)]
        checkpoint = finish_teacher(run, device)
        write_teacher(checkpoint, run.rc.config.to_dict(), out)
        print(f"[done] teacher {checkpoint['teacher_key']} seed {run.rc.config.seed} acc {run.init_acc:.4f}->"
              f"{checkpoint['metrics']['teacher_final_acc']:.4f} -> {out}", flush=True)
        run.model = None  # free its weights now

    def failed(run, error: Diverged) -> None:  # the others go on; the job fails at the end, naming it
        print(f"[failed] teacher {run.rc.teacher_key()}: {error}", flush=True)
        failures.append(f"teacher {run.rc.teacher_key()}: {error}")

    train_teachers(runs, device, done, failed, stack_layers)
    if failures:
        raise Diverged(f"{len(failures)} of {len(runs)} teachers diverged and were not written: " + "; ".join(failures))


def resolve_in(config, where: str) -> ResolvedConfig:
    try:
        return resolve(config)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None


def recorded_result(run_dir: str | Path) -> tuple[str | None, str | None] | None:
    """(run key, data identity) recorded in a finished run folder (runs.csv is written last), or None.
    A run is finished when both equal the run's own key and its data's identity now."""
    try:
        with open(Path(run_dir) / "runs.csv", newline="") as handle:
            row = next(csv.DictReader(handle), None)
    except OSError:
        return None
    return (row.get("run_key"), row.get("data_identity")) if row else None


def recorded_teacher(out: str | Path) -> tuple[str | None, str | None] | None:
    """(teacher key, data identity) of a finished teacher (its .pt, then its .json summary, written last),
    or None. A teacher is finished when both equal its own key and its data's identity now."""
    out = Path(out)
    try:
        summary = json.loads(out.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    if not out.is_file() or not isinstance(summary, dict):
        return None
    return summary.get("teacher_key"), summary.get("data_identity")


# --------------------------------------------------------------------------------------------------
# Stacks
# --------------------------------------------------------------------------------------------------


def _teacher_body_perturbations(rc: ResolvedConfig) -> list:
    """Perturbations that change the trained teacher body before or during distillation."""
    return [{**p, "layers": [n for n in p["layers"] if n != "aux_head"]} for p in rc.perturbations
            if p["target"] == "teacher" and p["timing"] in ("after_teacher_training", "before_student_training")
            and any(n != "aux_head" for n in p["layers"])]


def stack_key(rc: ResolvedConfig) -> str:
    """Runs with equal stack keys share every noise batch and every teacher-body forward pass."""
    c = rc.config
    return json.dumps({
        "teacher": rc.teacher_key(), "noise": [c.noise_dist, c.perlin_res, c.normalize_noise, c.noise_bsize],
        "teacher_body": _teacher_body_perturbations(rc)
    }, sort_keys=True)


def stacks(runs: list[SheetRun]) -> list[list[SheetRun]]:
    """Runs grouped by stack key; within a stack, the runs of one trajectory (equal trajectory keys) side by
    side, so that a split stack keeps them together where it can."""
    groups: dict[str, list[SheetRun]] = {}
    for run in runs:
        groups.setdefault(stack_key(run.rc), []).append(run)
    first = {}
    for index, run in enumerate(runs):
        first.setdefault(run.rc.trajectory_key(), index)
    return [sorted(group, key=lambda r: first[r.rc.trajectory_key()]) for group in groups.values()]


def plan_stacks(runs: list[SheetRun], max_memory_mb: float | None = None) -> list[list[SheetRun]]:
    """Stacks, each split (in order) so that its members' estimated memory fits the budget."""
    out = []
    for stack in stacks(runs):
        part, used = [], 0.0
        for run in stack:
            need = memory_mb(run.rc)
            if part and max_memory_mb is not None and used + need > max_memory_mb:
                out.append(part)
                part, used = [], 0.0
            part.append(run)
            used += need
        out.append(part)
    return out


def dataset_key_of(rc: ResolvedConfig) -> str:
    return dataset_key(rc.config.dataset, rc.config.emnist_split)


def print_plan(plan: list[list[SheetRun]], gflops: float) -> None:
    total_flops = total_seconds = 0.0
    for index, stack in enumerate(plan):
        flops = stack_flops(stack, dataset_key_of(stack[0].rc))
        seconds = estimated_seconds(flops, gflops, len(stack), SECONDS_PER_RUN)
        total_flops, total_seconds = total_flops + flops, total_seconds + seconds
        c = stack[0].rc.config
        print(f"[plan] stack {index}: {len(stack)} runs, seed {c.seed}, teacher {stack[0].rc.teacher_key()}, "
              f"noise {c.noise_dist} x {c.noise_bsize}, {flops / 1e12:.3f} TFLOP, "
              f"{max(memory_mb(r.rc) for r in stack) * len(stack):.0f} MB at most, ~{seconds:.0f} s", flush=True)
    print(f"[plan] total {sum(map(len, plan))} runs, {len(plan)} stacks, {total_flops / 1e12:.3f} TFLOP, "
          f"~{total_seconds:.0f} s at {gflops:g} GFLOP/s", flush=True)


def lockstep_sets(plan: list[list[SheetRun]], max_memory_mb: float | None = None) -> list[list[list[SheetRun]]]:
    """Consecutive stacks distilled together while their students' estimated memory fits the budget (all
    of them without one): with stacked layers, students of equal shape from several stacks (seeds, say)
    share one batched matmul per layer and step."""
    sets: list[list[list[SheetRun]]] = []
    used = 0.0
    for stack in plan:
        need = sum(memory_mb(r.rc) for r in stack)
        if not sets or (max_memory_mb is not None and used + need > max_memory_mb):
            sets.append([])
            used = 0.0
        sets[-1].append(stack)
        used += need
    return sets


def run_stacks(plan: list[list[SheetRun]], teachers: dict[str, Path], device, caches: dict[tuple, tuple[Path, str]],
               data_dir: str, cache_dir: str, stack_layers: bool | None = None,
               max_memory_mb: float | None = None) -> list[list[list[SheetRun]]]:
    """Train every stack; write each run's folder as soon as the run is done. caches: (dataset, split) ->
    (prepared cache, data identity); stack_layers (default: on CUDA): see ``experiment.distill_stack``;
    with it, stacks train together in lockstep sets within max_memory_mb, else one after another.
    Returns the lockstep sets."""
    import torch

    from . import data as datasets
    from .experiment import SharedEvaluations, check_checkpoint, uses_stacked_layers

    for key in dict.fromkeys(stack[0].rc.teacher_key() for stack in plan):  # every teacher, before any training
        rc = next(stack[0].rc for stack in plan if stack[0].rc.teacher_key() == key)
        identity = caches[(rc.config.dataset, rc.config.emnist_split)][1]
        check_checkpoint(rc, load_checkpoint(teachers[key], mmap=True), f"--teacher-dir: {teachers[key]}", identity)
    sets = lockstep_sets(plan, max_memory_mb) if uses_stacked_layers(stack_layers, device) else [[s] for s in plan]
    loaded: dict[tuple, Any] = {}
    failures: list[str] = []
    batch_started = time.time()
    done_stacks = 0
    shared = SharedEvaluations()
    for lockstep in sets:
        data_of = {}
        for stack in lockstep:
            c0 = stack[0].rc.config
            data_key = (c0.dataset, c0.emnist_split, c0.class_count)
            if data_key not in loaded:
                cache = caches[(c0.dataset, c0.emnist_split)][0]
                loaded[data_key] = datasets.load(cache, *data_key, device, with_train=False)
            data_of[id(stack)] = loaded[data_key]
        checkpoints = {key: load_checkpoint(teachers[key])
                       for key in dict.fromkeys(stack[0].rc.teacher_key() for stack in lockstep)}
        which = f"stack {done_stacks + 1}" if len(lockstep) == 1 else \
            f"stacks {done_stacks + 1}-{done_stacks + len(lockstep)}"
        print(f"[batch] {which}/{len(plan)}: {sum(map(len, lockstep))} students in lockstep", flush=True)
        run_lockstep(lockstep, checkpoints, data_of, device, data_dir, cache_dir, batch_started, failures,
                     stack_layers, shared)
        done_stacks += len(lockstep)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if failures:
        raise Diverged(f"{len(failures)} of {sum(map(len, plan))} runs diverged and were not written: "
                       + "; ".join(failures))
    return sets


def run_lockstep(lockstep: list[list[SheetRun]], checkpoints: dict[str, dict], data_of: dict[int, Any], device,
                 data_dir: str, cache_dir: str, batch_started: float, failures: list[str],
                 stack_layers: bool | None = None, shared=None) -> None:
    """Prepare, distil (in lockstep) and finish the runs of some stacks; data_of: id(stack) -> its data;
    shared: the job's ``experiment.SharedEvaluations``."""
    from .experiment import distill_stack, finish_student, prepare_student
    from .outputs import write_run_dir

    run_of, stack_size, members = {}, {}, []
    for stack in lockstep:
        for run in stack:
            run.rc.config.data_dir, run.rc.config.cache_dir = str(data_dir), str(cache_dir)
            run.rc.config.outdir = str(run.run_dir)
            member = prepare_student(run.rc, data_of[id(stack)], device, checkpoints[run.rc.teacher_key()],
                                     shared=shared)
            run_of[id(member)] = (run, data_of[id(stack)])
            stack_size[id(member)] = len(stack)
            members.append(member)

    def done(member, last_loss: float, seconds: float) -> None:
        run, data = run_of[id(member)]
        extra = {"batch_stack_size": stack_size[id(member)], "batch_elapsed_seconds": time.time() - batch_started}
        try:
            result = finish_student(member, data, device, last_loss, seconds, extra, shared)
        except Diverged as exc:  # the other members go on; the job fails at the end, naming this run
            print(f"[failed] {run.id}: {exc}", flush=True)
            failures.append(f"run {run.id}: {exc}")
            member.student = member.teacher = None
            return
        write_run_dir(run.run_dir, result)
        row = result.run_row
        print(f"[done] {run.id} m {row['m']} N {row['noise_steps']} student acc "
              f"{row['student_init_acc']:.4f}->{row['student_final_acc']:.4f} -> {run.run_dir}", flush=True)
        member.student = member.teacher = None  # free its weights now (a stream keeps its body)

    distill_stack(members, device, done, stack_layers)


def load_checkpoint(path: Path, mmap: bool = False) -> dict:
    """A teacher checkpoint; memory-mapped when only its settings are read (its weights stay on disk)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise UsageError(f"--teacher-dir: {path} is not a readable teacher checkpoint ({type(exc).__name__})") \
            from None


SECONDS_PER_RUN = 0.5  # an allowance for per-run work outside the matmuls (models, snapshots, metrics, files)


# --------------------------------------------------------------------------------------------------
# Cost model (FLOPs of float32 matmuls and convolutions)
# --------------------------------------------------------------------------------------------------


def layer_shapes(plan: ModelPlan, m: int, num_classes: int) -> list[tuple[str, int, int, int]]:
    """(name, multiply-accumulates, parameters, output values) per image of every layer, in forward order
    (heads last)."""
    out: list[tuple[str, int, int, int]] = []
    if plan.model_type == "mlp":
        width = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]
        for i, hidden in enumerate(plan.hidden_dims, start=1):
            out.append((f"fc{i}", width * hidden, (width + 1) * hidden, hidden))
            width = hidden
    else:
        channels, hw, width = IMAGE_SHAPE[0], IMAGE_SHAPE[1:], None
        for entry in plan.feature_spec:
            if entry["type"] == "conv2d":
                kernel = entry.get("kernel_size", 3)
                k = kernel * kernel if isinstance(kernel, int) else kernel[0] * kernel[1]
                conv_hw = conv_output_hw({**entry, "pool": None}, hw, "--arch-spec")
                cells = conv_hw[0] * conv_hw[1]
                out.append((entry["name"], channels * entry["out_channels"] * k * cells,
                            (channels * k + 1) * entry["out_channels"], entry["out_channels"] * cells))
                channels, hw = entry["out_channels"], conv_output_hw(entry, hw, "--arch-spec")
            else:
                in_width = width if width is not None else channels * hw[0] * hw[1]
                out.append((entry["name"], in_width * entry["out_features"], (in_width + 1) * entry["out_features"],
                            entry["out_features"]))
                width = entry["out_features"]
        width = width if width is not None else channels * hw[0] * hw[1]
    return out + [("class_head", width * num_classes, (width + 1) * num_classes, num_classes),
                  ("aux_head", width * m, (width + 1) * m, m)]


def layer_macs(plan: ModelPlan, m: int, num_classes: int) -> list[tuple[str, int]]:
    return [(name, macs) for name, macs, _, _ in layer_shapes(plan, m, num_classes)]


def _train_step_flops(plan: ModelPlan, macs: list[tuple[str, int]], head: str) -> int:
    """Forward, weight gradients of trainable layers and input gradients above the first trainable layer,
    along the body and one head, per image."""
    path = [(n, v) for n, v in macs if n not in ("class_head", "aux_head") or n == head]
    flops, below_trainable = 0, False
    for name, value in path:
        flops += 2 * value
        if plan.trainable[name]:
            flops += 2 * value
        if below_trainable:
            flops += 2 * value
        below_trainable = below_trainable or plan.trainable[name]
    return flops


def run_flops(rc: ResolvedConfig, dataset_key: str) -> dict[str, float]:
    """Estimated FLOPs of one student run: distillation, the teacher's forward passes that give its targets
    in distillation and on the eval noise (body and aux head, which a stack shares), and the student's
    evaluation."""
    c = rc.config
    s_macs = layer_macs(rc.student, c.m, rc.num_classes)
    t_macs = layer_macs(rc.teacher, c.m, rc.num_classes)
    s_fwd = 2 * sum(v for n, v in s_macs if n != "class_head")
    t_body = 2 * sum(v for n, v in t_macs if n not in ("class_head", "aux_head"))
    t_aux = 2 * dict(t_macs)["aux_head"]
    images = c.noise_steps * c.student_epochs * c.noise_bsize
    eval_images = 2 * c.eval_noise_batches * c.eval_noise_bsize  # before and after distillation
    test = TEST_SPLIT_SIZE.get(dataset_key, 10_000)
    if c.class_count:
        test = test * c.class_count // rc.num_classes if c.class_count < rc.num_classes else test
    s_class = 2 * sum(v for n, v in s_macs if n != "aux_head")
    return {
        "student": images * _train_step_flops(rc.student, s_macs, "aux_head"),
        "teacher_head": (images + eval_images) * t_aux,
        "teacher_body": (images + eval_images) * t_body,
        "evaluation": 2 * test * s_class + eval_images * s_fwd,
    }


def teacher_flops(rc: ResolvedConfig, dataset_key: str) -> float:
    c = rc.config
    macs = layer_macs(rc.teacher, c.m, rc.num_classes)
    train = TRAIN_SPLIT_SIZE.get(dataset_key, 60_000)
    test = TEST_SPLIT_SIZE.get(dataset_key, 10_000)
    forward = 2 * sum(v for n, v in macs if n != "aux_head")
    return c.teacher_epochs * train * _train_step_flops(rc.teacher, macs, "class_head") + 2 * test * forward


def stack_flops(runs: list[SheetRun], dataset_key: str) -> float:
    """FLOPs of a stack: every member's evaluation, the distillation of each trajectory once (its longest
    run: runs of equal trajectory keys share it), each distinct teacher aux head's targets and one
    teacher-body forward for as many steps as the longest run using them."""
    costs = {r.id: run_flops(r.rc, dataset_key) for r in runs}
    trajectories: dict[str, float] = {}
    heads: dict[str, float] = {}
    for r in runs:
        key, head = r.rc.trajectory_key(), teacher_head_key(r.rc)
        trajectories[key] = max(trajectories.get(key, 0.0), costs[r.id]["student"])
        heads[head] = max(heads.get(head, 0.0), costs[r.id]["teacher_head"])
    return (sum(trajectories.values()) + sum(heads.values()) + sum(c["evaluation"] for c in costs.values())
            + max(c["teacher_body"] for c in costs.values()))


def teacher_head_key(rc: ResolvedConfig) -> str:
    """Runs of one stack with equal keys have equal teacher aux heads: same m and the same perturbations of
    it before distillation (the stack shares the teacher's key, so its initialisation)."""
    perturbations = [{**p, "layers": ["aux_head"]} for p in map(distillation_perturbation, rc.perturbations)
                     if p and p["target"] == "teacher" and "aux_head" in p["layers"]]
    return json.dumps([rc.config.m, perturbations], sort_keys=True)


def estimated_seconds(flops: float, gflops_per_s: float, runs: int, seconds_per_run: float) -> float:
    return flops / (gflops_per_s * 1e9) + runs * seconds_per_run


def memory_mb(rc: ResolvedConfig) -> float:
    """Estimated memory of one member while it distils (float32): teacher weights, student weights with
    gradients and Adam's two moments, and three copies (value, gradient, saved input) of every student
    activation of one noise batch plus the teacher's."""
    c = rc.config
    student = layer_shapes(rc.student, c.m, rc.num_classes)
    teacher = layer_shapes(rc.teacher, c.m, rc.num_classes)
    weights = 4 * sum(p for _, _, p, _ in student) + sum(p for _, _, p, _ in teacher)
    activations = c.noise_bsize * (3 * sum(o for _, _, _, o in student) + sum(o for _, _, _, o in teacher))
    return 4 * (weights + activations) / 2**20

"""The student stage: build and perturb a run's teacher and student from a trained teacher, distil students
in lockstep (distill.py's engine; one run alone being the smallest case), and finish each run: evaluations
and records."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import torch

from .data import Dataset
from .distill import distill_stack
from .errors import Diverged, UsageError
from .evaluation import (
    SharedEvaluations,
    aux_mse_on_noise,
    evaluate_class,
    evaluate_stacked,
    majority_rate,
    stacking_key,
)
from .model import SplitHeadModel, build_model
from .perturb import apply_perturbations
from .plan import ResolvedConfig
from .records import (
    RunResult,
    base_row,
    comparisons,
    config_record,
    environment,
    layer_metrics,
    run_row,
    snapshot,
    stacked_pair_values,
)
from .seeding import derived_seed, set_seed
from .teacher import body_state, check_checkpoint


def check_student_finite(rc: ResolvedConfig, train_aux: float, final_aux: float) -> None:
    c = rc.config
    values = {"training aux MSE": train_aux} if c.student_epochs and c.noise_steps else {}
    if c.eval_noise_batches:
        values["final aux MSE"] = final_aux
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        raise Diverged(f"student distillation diverged: {', '.join(f'{k} {v}' for k, v in bad.items())} "
                       f"(student_lr {c.student_lr:g}); no result was written")


@dataclass
class StudentRun:
    """A student between its stages: built, perturbed and evaluated, ready to distil (alone or in a batch)."""

    rc: ResolvedConfig
    checkpoint: dict[str, Any]
    teacher: SplitHeadModel
    student: SplitHeadModel
    run_id: str
    timestamp: str
    started: float
    metrics: dict[str, float]
    snaps: dict[str, dict]
    perturb_rows: list[dict[str, Any]]
    init_acc: float
    init_loss: float
    init_aux: float
    teacher_in_process: bool = False
    training_path: str = "alone"  # how it was distilled (device.TRAINING_PATHS), set by distill_stack
    settled: bool = False  # after-training perturbations applied and the final student snapshotted
    final_evaluation: tuple[float, float, float] | None = None  # (acc, class loss, aux MSE), if evaluated in a set


def prepare_student(rc: ResolvedConfig, data: Dataset, device: torch.device, checkpoint: dict[str, Any],
                    teacher_in_process: bool = False, shared: SharedEvaluations | None = None,
                    evaluate: bool = True) -> StudentRun:
    """Everything of a student run before distillation (steps 1-8 of the reference order); ``shared``:
    evaluations that the runs of a batch have in common; ``evaluate=False``: the initial student's evaluation
    is left to evaluate_prepared (its values NaN until then)."""
    c = rc.config
    started = time.time()
    run_id = uuid.uuid4().hex[:12]
    timestamp = datetime.now().isoformat(timespec="seconds")
    check_checkpoint(rc, checkpoint, data_identity=data.identity)
    set_seed(derived_seed(c.seed, "experiment_start"))
    inits = shared.inits if shared is not None else None
    known = shared.snapshots if shared is not None else None
    # a teacher no perturbation touches is the same model in every run of a job with its checkpoint, m and
    # plan: built, loaded, checked and snapshotted once
    share_key = None
    if shared is not None and not any(p["target"] == "teacher" for p in rc.perturbations):
        shared.trained_identities(checkpoint["trained_body"])  # holds the body: its id names it
        share_key = (id(checkpoint["trained_body"]),
                     repr(rc.teacher), c.m, rc.num_classes, c.seed, str(device))
    teacher = shared.teachers.get(share_key) if share_key is not None else None
    built = teacher is None
    if built:
        teacher = build_model(rc.teacher, c.m, rc.num_classes, c.seed, device, inits)
    student = build_model(rc.student, c.m, rc.num_classes, c.seed, device, inits)
    models = {"teacher": teacher, "student": student}

    perturb_rows = apply_perturbations("before_teacher_training", rc, models, device, run_id)
    if built:
        snaps = {"teacher_initial": snapshot(teacher, known)}
        initial_body = body_state(teacher.state_dict())
        if any(not torch.equal(initial_body[k], checkpoint["initial_body"][k]) for k in initial_body):
            raise UsageError("--teacher-checkpoint: its initial weights differ from this run's teacher; "
                             "it was trained by another version or with other settings")
        teacher.load_state_dict({k: v.to(device) for k, v in checkpoint["trained_body"].items()}, strict=False)
        if shared is not None:
            teacher.stamp(shared.trained_identities(checkpoint["trained_body"]))
    else:
        snaps = dict(shared.teacher_snaps[teacher])
    metrics = dict(checkpoint["metrics"])

    perturb_rows += apply_perturbations("after_teacher_training", rc, models, device, run_id)
    if built:
        snaps["teacher_final"] = snapshot(teacher, known)
        if share_key is not None:
            shared.teachers[share_key] = teacher
            shared.teacher_snaps[teacher] = dict(snaps)
    if any(p["target"] == "teacher" and p["timing"] == "after_teacher_training" for p in rc.perturbations):
        metrics["teacher_final_acc"], metrics["teacher_final_class_loss"] = evaluate_class(
            teacher, data.test_x, data.test_y, c.data_bsize)

    perturb_rows += apply_perturbations("before_student_training", rc, models, device, run_id)
    snaps["student_initial"] = snapshot(student, known)
    nan = float("nan")
    run = StudentRun(rc, checkpoint, teacher, student, run_id, timestamp, started, metrics, snaps, perturb_rows,
                     nan, nan, nan, teacher_in_process)
    if evaluate:
        set_initial_evaluation(run, evaluate_alone(run, data, device, "student_initial", shared))
    return run


def evaluate_alone(run: StudentRun, data: Dataset, device: torch.device, moment: str,
                   shared: SharedEvaluations | None) -> tuple[float, float, float]:
    """A run's student as it is now: (accuracy and class loss on the test split, aux MSE on ``moment``'s noise)."""
    return (*evaluate_class(run.student, data.test_x, data.test_y, run.rc.config.data_bsize, shared),
            aux_mse_on_noise(run.student, run.teacher, run.rc, device, moment, shared))


def set_initial_evaluation(run: StudentRun, evaluated: tuple[float, float, float]) -> None:
    run.init_acc, run.init_loss, run.init_aux = evaluated
    print(f"[eval] student initial acc {run.init_acc:.6f} class CE {run.init_loss:.6f} aux MSE "
          f"{run.init_aux:.8f}", flush=True)


def evaluate_prepared(runs: list[StudentRun], test_of: Callable[[StudentRun], Dataset], device: torch.device,
                      shared: SharedEvaluations) -> None:
    """The initial evaluations of runs prepared with ``evaluate=False`` (a fused job's, float tolerance):
    those of one shape and evaluation sizes together (evaluation.evaluate_stacked), the others each alone."""
    for group, test in stackable_groups(runs, test_of):
        if len(group) > 1:
            values = evaluate_group(group, test, device, "student_initial", shared)
        else:
            values = [evaluate_alone(group[0], test, device, "student_initial", shared)]
        for run, evaluated in zip(group, values, strict=True):
            set_initial_evaluation(run, evaluated)


def evaluate_group(group: list[StudentRun], test: Dataset, device: torch.device, moment: str,
                   shared: SharedEvaluations) -> list[tuple[float, float, float]]:
    """One stackable group's students as they are now, together (evaluation.evaluate_stacked)."""
    return evaluate_stacked([r.student for r in group], [r.teacher for r in group], [r.rc for r in group],
                            test.test_x, test.test_y, device, moment, shared)


def stackable_groups(runs: list[StudentRun], test_of: Callable[[StudentRun], Dataset]) \
        -> list[tuple[list[StudentRun], Dataset]]:
    """Runs in groups that one evaluate_stacked serves (students of one stacking_key, evaluated on one split
    with equal sizes), each with its data; a run whose student cannot stack (a CNN) is a group alone."""
    groups: dict[tuple, tuple[list[StudentRun], Dataset]] = {}
    for run in runs:
        c, test, key = run.rc.config, test_of(run), stacking_key(run.student)
        group_key = (key, id(test.test_x), c.data_bsize, c.eval_noise_batches, c.eval_noise_bsize) \
            if key is not None else ("alone", id(run))
        groups.setdefault(group_key, ([], test))[0].append(run)
    return list(groups.values())


def student_stage(rc: ResolvedConfig, data: Dataset, device: torch.device,
                  checkpoint: dict[str, Any], teacher_in_process: bool = False) -> RunResult:
    """Distil one student from a trained teacher (in memory or loaded from a checkpoint file)."""
    run = prepare_student(rc, data, device, checkpoint, teacher_in_process)
    distilled = {}
    distill_stack([run], device, lambda _, loss, seconds: distilled.update(loss=loss, seconds=seconds))
    return finish_student(run, data, device, distilled["loss"], distilled["seconds"])


def settle_student(run: StudentRun, device: torch.device) -> None:
    """A distilled run's after-training perturbations and final snapshot (step 10), once."""
    if not run.settled:
        models = {"teacher": run.teacher, "student": run.student}
        run.perturb_rows = run.perturb_rows + apply_perturbations("after_student_training", run.rc, models, device,
                                                                  run.run_id)
        run.snaps["student_final"] = snapshot(run.student)
        run.settled = True


def evaluate_finished(runs: list[StudentRun], test_of: Callable[[StudentRun], Dataset], device: torch.device,
                      shared: SharedEvaluations) -> None:
    """Before finish_student, for the runs that a distillation reports at one step: its fused runs (float
    tolerance already) settled and evaluated together, one batched forward per layer and batch for those of
    one shape and evaluation sizes, one host copy for all (evaluation.evaluate_stacked), and their layer
    comparisons computed together (records.stacked_pair_values); others untouched.
    ``test_of(run)``: the data whose test split the run is evaluated on."""
    fused = [run for run in runs if run.training_path == "fused" and run.final_evaluation is None]
    for group, test in stackable_groups(fused, test_of):
        if len(group) < 2:
            continue
        for run in group:
            settle_student(run, device)
        for run, evaluated in zip(group, evaluate_group(group, test, device, "student_final", shared), strict=True):
            run.final_evaluation = evaluated
        # their layer comparisons likewise: finish_student's layer_metrics then finds every keyed pair known
        stacked_pair_values([pair for run in group for pair in comparisons(
            run.teacher.layer_names, run.student.layer_names, run.snaps, {})[1]], shared.comparisons)


def finish_student(run: StudentRun, data: Dataset, device: torch.device, train_aux: float,
                   distill_seconds: float, extra: dict[str, Any] | None = None,
                   shared: SharedEvaluations | None = None) -> RunResult:
    """Everything after distillation (steps 10-11): perturbations, evaluations, metrics and records."""
    rc, teacher, student, snaps = run.rc, run.teacher, run.student, run.snaps
    c = rc.config
    settle_student(run, device)
    perturb_rows = run.perturb_rows
    final_acc, final_loss, final_aux = run.final_evaluation or evaluate_alone(run, data, device, "student_final",
                                                                              shared)
    print(f"[eval] student final acc {final_acc:.6f} class CE {final_loss:.6f} aux MSE {final_aux:.8f}", flush=True)
    check_student_finite(rc, train_aux, final_aux)

    layer_rows = layer_metrics(teacher.layer_names, student.layer_names, snaps, base_row(c, run.run_id),
                               None if shared is None else shared.comparisons)
    for row in perturb_rows:
        row["run_id"] = run.run_id
    env = environment(device)
    runtime = time.time() - run.started
    final = {"student_final_acc": final_acc, "student_final_class_loss": final_loss,
             "student_final_aux_loss": final_aux, "student_train_aux_loss_last": train_aux,
             "test_majority_acc": majority_rate(data.test_y) if shared is None else shared.majority_rate(data.test_y)}
    row = run_row(run, data.identity, env, final, layer_rows, runtime, distill_seconds, extra)
    return RunResult(row, layer_rows, perturb_rows, config_record(run, env),
                     {"student_stage": runtime, "distillation": distill_seconds})

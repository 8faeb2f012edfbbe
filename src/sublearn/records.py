"""What a run leaves behind, as rows: weight snapshots and their comparisons (layer metrics), the run's
row of runs.csv and its config record, and the provenance of a stage."""

from __future__ import annotations

import math
import platform
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .config import RUNS_COLUMNS
from .model import SplitHeadModel, parameter_counts
from .seeding import seed_bookkeeping

SCHEMA_VERSION = "subliminal_unified_v1"
EPS = 1e-12
VALUE_NAMES = ("cosine", "diff_norm", "reference_norm", "other_norm", "relative_diff_reference",
               "relative_diff_symmetric")


def tensor_norm(x: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x.detach().reshape(-1).float(), ord=2).item())


def cosine_or_nan(a: torch.Tensor, b: torch.Tensor) -> float:
    x, y = a.detach().reshape(-1).float(), b.detach().reshape(-1).float()
    if x.numel() == 0 or y.numel() == 0 or tensor_norm(x) < EPS or tensor_norm(y) < EPS:
        return float("nan")
    return float(F.cosine_similarity(x.unsqueeze(0), y.unsqueeze(0), dim=1).item())


def tensor_kinds(layer: nn.Module) -> dict[str, torch.Tensor]:
    return {k: getattr(layer, k) for k in ("weight", "bias") if getattr(layer, k, None) is not None}


def snapshot(model: SplitHeadModel, known: dict[tuple, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """The layers' tensors as they are now, on the model's device (compared there, copied once), with each
    layer's identity ("identity": SplitHeadModel.identity, or None). ``known``: layer snapshots by identity,
    shared by the runs of a job (a layer drawn or trained once is copied once; a distilled one is a run's own)."""
    snaps = {}
    for name in model.layer_names:
        identity = model.identity(name)
        key = None if known is None or identity is None or identity[0] == "distilled" else identity
        if key is not None and key in known:
            snaps[name] = known[key]
            continue
        snaps[name] = {**{k: t.detach().clone() for k, t in tensor_kinds(getattr(model, name)).items()},
                       "identity": identity}
        if key is not None:
            known[key] = snaps[name]
    return snaps


# a pair to compare: (reference, other, reference's key, other's key); a key names what fixed a tensor, or is None
Pair = tuple[torch.Tensor, torch.Tensor, tuple | None, tuple | None]


def pair_values(pairs: list[Pair],
                known: dict[tuple, Any] | None = None) -> list[dict[str, float]]:
    """The comparison values of each pair of equal shapes, as tensor_norm and cosine_or_nan give them, with one
    host copy for all (equal keys: equal tensors). ``known``: values of pairs and norms computed before (by the
    runs of a job), added to; a tensor's norm is computed once whichever pairs it is in."""
    known = {} if known is None else known
    todo = [i for i, (_, _, *keys) in enumerate(pairs) if None in keys or tuple(keys) not in known]
    parts: list[torch.Tensor] = []
    slot_of: dict[tuple, int] = {}  # a norm computed here -> its index in parts

    def norm(tensor: torch.Tensor, key: tuple | None) -> tuple:
        name = ("norm", key) if key is not None else ("tensor", id(tensor))
        if name not in known and name not in slot_of:
            slot_of[name] = len(parts)
            parts.append(torch.linalg.vector_norm(tensor.detach().reshape(-1).float(), ord=2))
        return name

    names = []
    for i in todo:
        ref, other, ref_key, other_key = pairs[i]
        x, y = ref.detach().reshape(-1).float(), other.detach().reshape(-1).float()
        names.append((norm(ref, ref_key), norm(other, other_key), len(parts)))
        parts += [torch.linalg.vector_norm((ref - other).detach().reshape(-1).float(), ord=2),
                  F.cosine_similarity(x.unsqueeze(0), y.unsqueeze(0), dim=1)[0]]
    numbers = torch.stack(parts).tolist() if parts else []
    norms = {name: numbers[slot] for name, slot in slot_of.items()}
    known.update((name, value) for name, value in norms.items() if name[0] == "norm")  # keyed: known from now on
    computed = {}
    for (ref_name, other_name, slot), i in zip(names, todo, strict=True):
        ref_norm, other_norm = (norms[name] if name in norms else known[name] for name in (ref_name, other_name))
        diff, cosine = numbers[slot:slot + 2]
        computed[i] = comparison_values(pairs[i][0].numel(), ref_norm, other_norm, diff, cosine)
        if None not in pairs[i][2:]:
            known[pairs[i][2:]] = computed[i]
    return [computed[i] if i in computed else known[tuple(keys)] for i, (_, _, *keys) in enumerate(pairs)]


def comparison_values(numel: int, ref_norm: float, other_norm: float, diff: float, cosine: float) -> dict[str, float]:
    """A pair's row values (VALUE_NAMES) from its norms, difference norm and cosine (NaN where a side is empty
    or zero)."""
    if numel == 0 or ref_norm < EPS or other_norm < EPS:
        cosine = float("nan")
    return {"cosine": cosine, "diff_norm": diff, "reference_norm": ref_norm, "other_norm": other_norm,
            "relative_diff_reference": diff / (ref_norm + EPS),
            "relative_diff_symmetric": 2.0 * diff / (ref_norm + other_norm + EPS)}


def _shape(x: torch.Tensor | None) -> str:
    return "" if x is None else "x".join(str(v) for v in x.shape)


def _missing(prefix: str, ref: Any, other: Any, models: tuple[str, str]) -> str | None:
    """Which side of a comparison lacks its layer or tensor ("<prefix>_both", "<prefix>_in_<model>"), or None."""
    if ref is None and other is None:
        return f"{prefix}_both"
    if ref is None or other is None:
        return f"{prefix}_in_{models[0] if ref is None else models[1]}"
    return None


def compare_snapshots(comparison: str, models: tuple[str, str], states: tuple[str, str],
                      snaps: tuple[dict, dict], layer_order: list[str], base_row: dict,
                      pairs: list[Pair]) -> list[dict[str, Any]]:
    """The comparison's rows; a comparable pair's values are left for pair_values (``pairs`` gets the
    pair, the row its index there as ``pending``)."""
    ref_model, other_model = models
    rows = []
    for layer_name in layer_order:
        ref_layer, other_layer = snaps[0].get(layer_name), snaps[1].get(layer_name)
        layer_status = _missing("missing", ref_layer, other_layer, models) or "comparable"
        for kind in ("weight", "bias"):
            ref = ref_layer.get(kind) if ref_layer is not None else None
            other = other_layer.get(kind) if other_layer is not None else None
            status = layer_status
            pending = None
            if status == "comparable":
                if ref is None or other is None:
                    status = _missing("missing_tensor", ref, other, models)
                elif tuple(ref.shape) != tuple(other.shape):
                    status = "shape_mismatch"
                else:
                    pending = len(pairs)
                    pairs.append((ref, other, *((layer["identity"], kind) if layer["identity"] is not None else None
                                                for layer in (ref_layer, other_layer))))
            rows.append({
                **base_row, "comparison": comparison, "reference_model": ref_model, "other_model": other_model,
                "reference_state": states[0], "other_state": states[1], "layer_name": layer_name,
                "tensor_kind": kind, "reference_shape": _shape(ref), "other_shape": _shape(other),
                "status": status, **dict.fromkeys(VALUE_NAMES, float("nan")), "pending": pending,
            })
    return rows


@torch.no_grad()
def stacked_pair_values(pairs: list[Pair], known: dict[tuple, Any], max_bytes: int = 2**24) -> None:
    """pair_values of many runs' keyed pairs at once, into ``known`` (where pair_values then finds them): the
    pairs of each shape stacked, their norms, differences and dot products in a few batched ops (within
    ``max_bytes`` of stacked tensors), one host copy for all. A batched reduction need not sum in a lone
    one's order: float tolerance, for fused runs, which have it already. Pairs with an unkeyed side are
    left to pair_values. ``max_bytes`` is small because a CPU's allocator hands blocks much over 10 MB back to
    the system and faults them in again on every use, which costs several times the copy (fig2's 180 runs at
    width 256: stacking and differences 3.6 ms a run at 256 MB, 0.8 ms at 16 MB); a GPU pays a few more
    launches a run."""
    todo: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
    for ref, other, ref_key, other_key in pairs:
        if ref_key is not None and other_key is not None and (ref_key, other_key) not in known:
            todo.setdefault((ref_key, other_key), (ref, other))
    by_shape: dict[tuple, list[tuple]] = {}
    for keys, (ref, _) in todo.items():
        by_shape.setdefault((tuple(ref.shape), str(ref.device)), []).append(keys)
    parts: list[torch.Tensor] = []
    chunks: list[list[tuple]] = []
    for (shape, _), keys in by_shape.items():
        size = max(1, math.prod(shape))
        step = max(1, max_bytes // (3 * 4 * size))  # references, others, differences
        for first in range(0, len(keys), step):
            chunk = keys[first:first + step]
            refs = torch.stack([todo[k][0].detach().reshape(-1).float() for k in chunk])
            others = torch.stack([todo[k][1].detach().reshape(-1).float() for k in chunk])
            # the dot product, not F.cosine_similarity's normalised copies: the cosine is taken on the host
            parts += [torch.linalg.vector_norm(refs, ord=2, dim=1), torch.linalg.vector_norm(others, ord=2, dim=1),
                      torch.linalg.vector_norm(refs - others, ord=2, dim=1),
                      torch.bmm(refs.unsqueeze(1), others.unsqueeze(2)).reshape(-1)]
            chunks.append(chunk)
    numbers = torch.cat(parts).tolist() if parts else []  # one op: all float32 (host_lists converts each)
    start = 0
    for chunk in chunks:
        n = len(chunk)
        ref_norms, other_norms, diffs, dots = (numbers[start + i * n:start + (i + 1) * n] for i in range(4))
        start += 4 * n
        for k, keys in enumerate(chunk):
            ref_norm = known.setdefault(("norm", keys[0]), ref_norms[k])
            other_norm = known.setdefault(("norm", keys[1]), other_norms[k])
            # F.cosine_similarity's formula: each norm clamped at its eps, 1e-8
            cosine = dots[k] / (max(ref_norms[k], 1e-8) * max(other_norms[k], 1e-8))
            known[keys] = comparison_values(todo[keys][0].numel(), ref_norm, other_norm, diffs[k], cosine)


def layer_metrics(teacher_layers: list[str], student_layers: list[str], snaps: dict[str, dict],
                  base_row: dict, known: dict[tuple, dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """The four comparisons' rows; ``known``: pair_values's values of pairs compared before (by the runs
    of a job, which share many: every run of a seed compares the same teacher before and after training)."""
    rows, pairs = comparisons(teacher_layers, student_layers, snaps, base_row)
    values = pair_values(pairs, known)
    for row in rows:
        pending = row.pop("pending")
        if pending is not None:
            row.update(values[pending])
    return rows


def comparisons(teacher_layers: list[str], student_layers: list[str], snaps: dict[str, dict],
                base_row: dict) -> tuple[list[dict[str, Any]], list[Pair]]:
    """The four comparisons' rows, their values left to pair_values: (rows, the pairs they compare)."""
    both = list(dict.fromkeys(teacher_layers + student_layers))
    t, s = ("teacher", "student"), ("initial", "final")
    pairs: list[Pair] = []
    rows = (
        compare_snapshots("teacher_student_init", t, ("initial", "initial"),
                          (snaps["teacher_initial"], snaps["student_initial"]), both, base_row, pairs)
        + compare_snapshots("teacher_student_final", t, ("final", "final"),
                            (snaps["teacher_final"], snaps["student_final"]), both, base_row, pairs)
        + compare_snapshots("teacher_init_final", ("teacher", "teacher"), s,
                            (snaps["teacher_initial"], snaps["teacher_final"]), teacher_layers, base_row, pairs)
        + compare_snapshots("student_init_final", ("student", "student"), s,
                            (snaps["student_initial"], snaps["student_final"]), student_layers, base_row, pairs)
    )
    return rows, pairs


_ALIAS_PREFIX = {
    "teacher_student_init": "init_teacher_student",
    "teacher_student_final": "final_teacher_student",
    "student_init_final": "student_init_final",
    "teacher_init_final": "teacher_init_final",
}


def head_metric_aliases(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Compact per-run columns for the heads: cosine, relative and absolute difference."""
    aliases = {}
    for row in rows:
        prefix = _ALIAS_PREFIX.get(row["comparison"])
        if prefix and row["layer_name"] in ("class_head", "aux_head"):
            suffix = f"{prefix}_{row['layer_name']}_{row['tensor_kind']}"
            aliases[f"cos_{suffix}"] = row["cosine"]
            aliases[f"rel_fro_{suffix}"] = row["relative_diff_reference"]
            aliases[f"diff_norm_{suffix}"] = row["diff_norm"]
    return aliases


def environment(device: torch.device) -> dict[str, Any]:
    """Provenance of a stage: where and with what it ran."""
    return {
        "sublearn_version": __version__,
        "torch_version": str(torch.__version__),
        "cuda_version": torch.version.cuda or "",
        "cuda_available": int(torch.cuda.is_available()),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "threads": torch.get_num_threads(),
        "hostname": platform.node(),
    }


@dataclass
class RunResult:
    run_row: dict[str, Any]
    layer_rows: list[dict[str, Any]]
    perturbation_rows: list[dict[str, Any]]
    config_record: dict[str, Any]
    stage_seconds: dict[str, float] = field(default_factory=dict)


def base_row(config, run_id: str) -> dict[str, Any]:
    """The columns that every row of a run's tables starts with."""
    return {"schema_version": SCHEMA_VERSION, "run_id": run_id, "seed": config.seed,
            "sweep_name": config.sweep_name, "run_label": config.run_label}


# settings whose runs.csv column holds the resolved form of the setting (as the plans and perturbations give it)
_RESOLVED = {"teacher_init": lambda rc: rc.teacher.init, "student_init": lambda rc: rc.student.init,
             "teacher_trainable": lambda rc: rc.teacher.trainable,
             "student_trainable": lambda rc: rc.student.trainable, "perturb_specs": lambda rc: rc.perturbations}


def setting_columns(rc) -> dict[str, Any]:
    """Each setting's runs.csv column, as the setting declares it (config.RUNS_COLUMNS), with its value as the
    table writes it: a planned setting resolved (layer sources, trainability, canonical perturbations), a
    flag 0 or 1, None empty, a list copied."""
    columns = {}
    for name, column in RUNS_COLUMNS.items():
        value = _RESOLVED[name](rc) if name in _RESOLVED else getattr(rc.config, name)
        columns[column] = ("" if value is None else int(value) if isinstance(value, bool)
                           else list(value) if isinstance(value, list) else value)
    return columns


def run_row(run, data_identity: str, env: dict[str, Any], final: dict[str, float], layer_rows: list[dict[str, Any]],
            runtime: float, distill_seconds: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A finished student run's row of runs.csv (the reference's columns, then ours); ``run``: a
    ``student.StudentRun``, ``final``: its evaluations after distillation. The settings' columns are those
    they declare (setting_columns), each where the reference's table has it; a setting the reference lacks
    follows class_count and class_selection, our first settings."""
    rc, checkpoint = run.rc, run.checkpoint
    c = rc.config
    seeds = seed_bookkeeping(c.seed)
    teacher_total, teacher_trainable = parameter_counts(run.teacher)
    student_total, student_trainable = parameter_counts(run.student)
    settings = setting_columns(rc)

    def take(*columns: str) -> dict[str, Any]:
        return {column: settings.pop(column) for column in columns}

    row = {
        "schema_version": SCHEMA_VERSION, "run_id": run.run_id, "timestamp": run.timestamp,
        "runtime_seconds": runtime + (checkpoint["runtime_seconds"] if run.teacher_in_process else 0.0),
        **take("sweep_name", "run_label", "seed"), **seeds,
        "torch_version": env["torch_version"], "cuda_available": env["cuda_available"], "device": env["device"],
        **take("dataset", "emnist_split"),
        "train_size": checkpoint["train_size"], "test_size": checkpoint["test_size"],
        "num_classes": rc.num_classes, **take("data_dir", "outdir"),
        **take("teacher_type", "student_type", "teacher_hidden_dims", "student_hidden_dims"),
        "teacher_arch_description": rc.teacher.arch_description(),
        "student_arch_description": rc.student.arch_description(),
        "teacher_layer_names": run.teacher.layer_names, "student_layer_names": run.student.layer_names,
        **take("m", "teacher_epochs", "student_epochs", "data_bsize", "noise_bsize", "noise_steps", "teacher_lr",
               "student_lr", "noise_dist", "perlin_res", "normalize_noise", "eval_noise_batches", "eval_noise_bsize",
               "teacher_init_config", "student_init_config", "teacher_trainable_config", "student_trainable_config",
               "perturb_specs"),
        "teacher_total_parameters": teacher_total, "student_total_parameters": student_total,
        "teacher_trainable_parameters": teacher_trainable, "student_trainable_parameters": student_trainable,
        "teacher_init_acc": run.metrics["teacher_init_acc"], "teacher_final_acc": run.metrics["teacher_final_acc"],
        "student_init_acc": run.init_acc, "student_final_acc": final["student_final_acc"],
        "teacher_init_class_loss": run.metrics["teacher_init_class_loss"],
        "teacher_final_class_loss": run.metrics["teacher_final_class_loss"],
        "student_init_class_loss": run.init_loss,
        "student_final_class_loss": final["student_final_class_loss"],
        "student_init_aux_loss": run.init_aux, "student_final_aux_loss": final["student_final_aux_loss"],
        "teacher_train_loss_last": run.metrics["teacher_train_loss_last"],
        "student_train_aux_loss_last": final["student_train_aux_loss_last"],
    }
    row.update(head_metric_aliases(layer_rows))
    row.update({
        **take("class_count", "class_selection"),
        **settings,  # the columns of settings the reference lacks
        # the accuracy of always answering the test split's most frequent class: the claims' chance floor
        "test_majority_acc": final["test_majority_acc"],
        "teacher_key": rc.teacher_key(),
        "run_key": rc.run_key(),
        "data_identity": data_identity,
        "sublearn_version": env["sublearn_version"], "cuda_version": env["cuda_version"],
        "device_name": env["device_name"], "threads": env["threads"], "hostname": env["hostname"],
        "teacher_device": checkpoint["environment"]["device"],
        "training_path": run.training_path,  # alone, stacked or fused (device.TRAINING_PATHS)
        "teacher_runtime_seconds": checkpoint.get("runtime_seconds", float("nan")),
        "student_runtime_seconds": runtime,
        "teacher_train_seconds": checkpoint.get("train_seconds", float("nan")),
        "student_train_seconds": distill_seconds,
        **(extra or {}),
    })
    return row


def config_record(run, env: dict[str, Any]) -> dict[str, Any]:
    """A run's config.json: its effective settings, their resolution, seeds and provenance."""
    rc, checkpoint = run.rc, run.checkpoint
    c = rc.config
    return {
        "schema_version": SCHEMA_VERSION, "run_id": run.run_id, "timestamp": run.timestamp,
        "effective_config": c.to_dict(),
        "teacher_init_config": rc.teacher.init, "student_init_config": rc.student.init,
        "teacher_trainable_config": rc.teacher.trainable, "student_trainable_config": rc.student.trainable,
        "teacher_arch_description": rc.teacher.arch_description(),
        "student_arch_description": rc.student.arch_description(),
        "seed_info": seed_bookkeeping(c.seed),
        "teacher_key": rc.teacher_key(),
        "teacher_settings": rc.teacher_settings(),
        "environment": env,
        "teacher_environment": checkpoint["environment"],
    }

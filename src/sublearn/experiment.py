"""One teacher/student experiment, as two stages that can run in one process or two.

``train_teacher_stage`` trains the teacher and returns a checkpoint; ``student_stage`` rebuilds the
teacher at its initialisation for the run's m, loads the trained body from the checkpoint and distils
the student. ``run`` chains both in memory, so a student distilled from a saved teacher gives exactly
what a full run gives. Every random draw follows the reference order (see REFERENCE.md).
"""

from __future__ import annotations

import hashlib
import math
import platform
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .config import Diverged, ResolvedConfig, UsageError, dataset_key
from .data import Dataset
from .model import SplitHeadModel, build_model, parameter_counts
from .seeding import derived_seed, forked_rng, seed_bookkeeping, set_seed

SCHEMA_VERSION = "subliminal_unified_v1"
EPS = 1e-12
CHECKPOINT_FORMAT = 2  # 2: records the identity of the data it was trained on


# --------------------------------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------------------------------


def _fade(t: torch.Tensor) -> torch.Tensor:
    return 6 * t**5 - 15 * t**4 + 10 * t**3


def _lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return a + t * (b - a)


def perlin_noise(n: int, res: int, device: torch.device, size: int = 28,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=torch.float32) * (res / size)
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    y0, x0 = gy.floor().long(), gx.floor().long()
    fy, fx = gy - y0.float(), gx - x0.float()
    angles = 2 * math.pi * torch.rand(n, res + 1, res + 1, device=device, generator=generator)
    gradients = torch.stack((torch.cos(angles), torch.sin(angles)), dim=-1)

    def corner(dy: int, dx: int) -> torch.Tensor:
        offset = torch.stack((fx - 1.0 if dx else fx, fy - 1.0 if dy else fy), dim=-1).unsqueeze(0)
        return (gradients[:, y0 + dy, x0 + dx, :] * offset).sum(dim=-1)

    u, v = _fade(fx).unsqueeze(0), _fade(fy).unsqueeze(0)
    noise = _lerp(_lerp(corner(0, 0), corner(0, 1), u), _lerp(corner(1, 0), corner(1, 1), u), v).unsqueeze(1)
    return noise / (noise.abs().amax(dim=(1, 2, 3), keepdim=True) + EPS)


def sample_noise(n: int, config, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    """A batch of noise images from ``generator`` (default: the global torch stream)."""
    if config.noise_dist == "uniform":  # in place: same values as 2 * rand - 1, no temporaries
        x = torch.rand(n, 1, 28, 28, device=device, generator=generator).mul_(2.0).sub_(1.0)
    elif config.noise_dist == "normal":
        x = torch.randn(n, 1, 28, 28, device=device, generator=generator)
    else:
        x = perlin_noise(n, config.perlin_res, device, generator=generator)
    if config.normalize_noise:
        x = x.sub_(0.1307).div_(0.3081)
    return x


# --------------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------------


def check_student_finite(rc: ResolvedConfig, train_aux: float, final_aux: float) -> None:
    c = rc.config
    values = {"training aux MSE": train_aux} if c.student_epochs and c.noise_steps else {}
    if c.eval_noise_batches:
        values["final aux MSE"] = final_aux
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        raise Diverged(f"student distillation diverged: {', '.join(f'{k} {v}' for k, v in bad.items())} "
                       f"(student_lr {c.student_lr:g}); no result was written")


class CpuAdam:
    """Adam with exactly the arithmetic of torch.optim.Adam's default CPU path (single-tensor, no weight
    decay, no amsgrad), so results are bit-identical. It exists because constructing torch.optim.Adam
    imports torch._dynamo, about 0.9 s of every short run job; on CUDA torch.optim.Adam is used."""

    def __init__(self, params: list[torch.Tensor], lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps = list(params), lr, betas, eps
        self.state: dict[int, tuple[list[float], torch.Tensor, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for index, param in enumerate(self.params):
            if param.grad is None:  # like torch.optim: a parameter without gradient is left alone
                continue
            grad = param.grad
            if index not in self.state:
                self.state[index] = ([0.0], torch.zeros_like(param, memory_format=torch.preserve_format),
                                     torch.zeros_like(param, memory_format=torch.preserve_format))
            step, exp_avg, exp_avg_sq = self.state[index]
            step[0] += 1.0
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            bias_correction1 = 1 - beta1 ** step[0]
            bias_correction2 = 1 - beta2 ** step[0]
            step_size = self.lr / bias_correction1
            denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(self.eps)
            param.addcdiv_(exp_avg, denom, value=-step_size)


def adam(params: list[torch.Tensor], lr: float, device: torch.device):
    return CpuAdam(params, lr) if device.type == "cpu" else torch.optim.Adam(params, lr=lr)


class SharedEvaluations:
    """What the evaluations of a batch job's runs have in common, computed once: each seed's eval-noise
    batches, a model body's features on an input (the test split, or those batches) keyed by the body's
    weights, and a teacher's aux logits on the noise. In fig2, say, the 36 runs of a seed start from 4
    distinct student bodies and share one teacher. Equal weights and inputs through the same operations
    give equal outputs, so every run's numbers are those of its lone run. The least recently used entries
    go beyond ``max_bytes``."""

    def __init__(self, max_bytes: int = 256 * 2**20):
        self.max_bytes, self.bytes = max_bytes, 0
        self.entries: OrderedDict[tuple, tuple[Any, list[torch.Tensor], int]] = OrderedDict()

    def get(self, key: tuple, compute: Callable[[], list[torch.Tensor]], keep: Any = None) -> list[torch.Tensor]:
        """The cached value of ``key``, else ``compute()`` (cached when it fits). ``keep``: an object the
        key names by id(), held as long as the entry so that its id cannot be reused."""
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key][1]
        value = compute()
        size = sum(t.numel() * t.element_size() for t in value)
        if size <= self.max_bytes:
            self.entries[key] = (keep, value, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                self.bytes -= self.entries.popitem(last=False)[1][2]
        return value

    def features(self, model: SplitHeadModel, name: tuple, inputs: list[torch.Tensor], keep: Any = None):
        return self.get(("features", body_key(model), name), lambda: [model.features(x) for x in inputs], keep)


def weights_digest(modules: list[nn.Module]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def body_key(model: SplitHeadModel) -> tuple:
    """Equal keys: the same feature layers (structure and weights), so equal features of any input."""
    return repr(model.steps), weights_digest([getattr(model, name) for name, _, _ in model.steps])


@torch.no_grad()
def evaluate_class(model: SplitHeadModel, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                   shared: SharedEvaluations | None = None) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of the class head over a split, in order, in loader-sized batches."""
    model.eval()
    starts = range(0, x.shape[0], batch_size)
    if shared is None:
        features = (model.features(x[start:start + batch_size]) for start in starts)
    else:
        features = shared.features(model, ("split", id(x), batch_size),
                                   [x[start:start + batch_size] for start in starts], keep=x)
    correct, loss_sum = 0, 0.0
    for start, h in zip(starts, features, strict=True):
        logits = model.class_head(h)
        target = y[start:start + batch_size]
        loss_sum += float(F.cross_entropy(logits, target, reduction="sum").item())
        correct += int((logits.argmax(dim=1) == target).sum().item())
    return correct / max(1, x.shape[0]), loss_sum / max(1, x.shape[0])


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator):
    """Index batches in the order DataLoader(shuffle=True, generator=g) yields them for one epoch."""
    torch.empty((), dtype=torch.int64).random_(generator=generator)  # the iterator's base seed
    order = torch.randperm(n, generator=generator)
    # RandomSampler then draws the (empty) remainder permutation once the epoch is exhausted
    torch.randperm(n, generator=generator)
    return order.split(batch_size)


def epoch_mean(losses: torch.Tensor) -> float:
    """Mean of an epoch's batch losses, summed as Python floats in order like the reference's running sum
    (one device sync per epoch instead of one per batch)."""
    return sum(losses.tolist()) / len(losses) if len(losses) else float("nan")


def eval_noise(rc: ResolvedConfig, device: torch.device, moment: str) -> list[torch.Tensor]:
    c = rc.config
    with forked_rng(device):
        set_seed(derived_seed(c.seed, "eval_noise", moment))
        return [sample_noise(c.eval_noise_bsize, c, device) for _ in range(c.eval_noise_batches)]


@torch.no_grad()
def aux_mse_on_noise(student: SplitHeadModel, teacher: SplitHeadModel, rc: ResolvedConfig,
                     device: torch.device, moment: str, shared: SharedEvaluations | None = None) -> float:
    student.eval()
    teacher.eval()
    if shared is None:
        batches = eval_noise(rc, device, moment)
        pairs = ((student.aux_logits(x), teacher.aux_logits(x)) for x in batches)
    else:
        c = rc.config
        name = ("eval_noise", c.seed, moment, c.eval_noise_batches, c.eval_noise_bsize, c.noise_dist,
                c.perlin_res, c.normalize_noise, str(device))
        batches = shared.get(name, lambda: eval_noise(rc, device, moment))
        targets = shared.get(("aux", body_key(teacher), weights_digest([teacher.aux_head]), name),
                             lambda: [teacher.aux_head(h) for h in shared.features(teacher, name, batches)])
        pairs = zip((student.aux_head(h) for h in shared.features(student, name, batches)), targets, strict=True)
    losses = [float(F.mse_loss(output, target).item()) for output, target in pairs]
    return float(sum(losses) / len(losses)) if losses else float("nan")


# --------------------------------------------------------------------------------------------------
# Perturbations, snapshots, layer metrics
# --------------------------------------------------------------------------------------------------


def tensor_norm(x: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x.detach().reshape(-1).float(), ord=2).item())


def cosine_or_nan(a: torch.Tensor, b: torch.Tensor) -> float:
    x, y = a.detach().reshape(-1).float(), b.detach().reshape(-1).float()
    if x.numel() == 0 or y.numel() == 0 or tensor_norm(x) < EPS or tensor_norm(y) < EPS:
        return float("nan")
    return float(F.cosine_similarity(x.unsqueeze(0), y.unsqueeze(0), dim=1).item())


def _tensor_kinds(layer: nn.Module) -> dict[str, torch.Tensor]:
    return {k: getattr(layer, k) for k in ("weight", "bias") if getattr(layer, k, None) is not None}


@torch.no_grad()
def apply_perturbations(timing: str, rc: ResolvedConfig, models: dict[str, SplitHeadModel],
                        device: torch.device, run_id: str) -> list[dict[str, Any]]:
    c = rc.config
    rows = []
    for spec in rc.perturbations:
        if spec["timing"] != timing or spec["target"] not in models:
            continue
        for layer_name in spec["layers"]:
            layer = getattr(models[spec["target"]], layer_name)
            tensors = _tensor_kinds(layer)
            before = {k: t.detach().clone() for k, t in tensors.items()}
            seed = derived_seed(c.seed, "perturb", spec["index"], timing, spec["target"], layer_name)
            with forked_rng(device):
                set_seed(seed)
                for kind in ("weight", "bias"):
                    if kind in tensors and spec[f"include_{kind}"] and spec["std"] > 0:
                        tensors[kind].add_(torch.randn_like(tensors[kind]) * spec["std"])
            row = {
                "schema_version": SCHEMA_VERSION, "run_id": run_id, "seed": c.seed,
                "sweep_name": c.sweep_name, "run_label": c.run_label, "timing": timing,
                "target": spec["target"], "layer_name": layer_name, "std": spec["std"],
                "include_weight": int(spec["include_weight"]), "include_bias": int(spec["include_bias"]),
                "distribution": spec["distribution"], "perturb_seed": seed,
            }
            for kind in ("weight", "bias"):
                if kind in tensors:
                    after, old = tensors[kind].detach(), before[kind]
                    delta = tensor_norm(after - old)
                    before_norm = tensor_norm(old)
                    row.update({
                        f"{kind}_delta_norm": delta, f"{kind}_before_norm": before_norm,
                        f"{kind}_after_norm": tensor_norm(after), f"{kind}_delta_rel": delta / (before_norm + EPS),
                        f"{kind}_before_after_cosine": cosine_or_nan(old, after),
                    })
                else:
                    row.update({f"{kind}_{m}": float("nan") for m in (
                        "delta_norm", "before_norm", "after_norm", "delta_rel", "before_after_cosine")})
            rows.append(row)
    return rows


def snapshot(model: SplitHeadModel) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k: t.detach().cpu().clone() for k, t in _tensor_kinds(getattr(model, name)).items()}
            for name in model.layer_names}


def _shape(x: torch.Tensor | None) -> str:
    return "" if x is None else "x".join(str(v) for v in x.shape)


def compare_snapshots(comparison: str, models: tuple[str, str], states: tuple[str, str],
                      snaps: tuple[dict, dict], layer_order: list[str], base_row: dict) -> list[dict[str, Any]]:
    ref_model, other_model = models
    rows = []
    for layer_name in layer_order:
        ref_layer, other_layer = snaps[0].get(layer_name), snaps[1].get(layer_name)
        if ref_layer is None and other_layer is None:
            layer_status = "missing_both"
        elif ref_layer is None:
            layer_status = f"missing_in_{ref_model}"
        elif other_layer is None:
            layer_status = f"missing_in_{other_model}"
        else:
            layer_status = "comparable"
        for kind in ("weight", "bias"):
            ref = ref_layer.get(kind) if ref_layer is not None else None
            other = other_layer.get(kind) if other_layer is not None else None
            status = layer_status
            values = dict.fromkeys(("cosine", "diff_norm", "reference_norm", "other_norm",
                                    "relative_diff_reference", "relative_diff_symmetric"), float("nan"))
            if status == "comparable":
                if ref is None and other is None:
                    status = "missing_tensor_both"
                elif ref is None:
                    status = f"missing_tensor_in_{ref_model}"
                elif other is None:
                    status = f"missing_tensor_in_{other_model}"
                elif tuple(ref.shape) != tuple(other.shape):
                    status = "shape_mismatch"
                else:
                    ref_norm, other_norm, diff = tensor_norm(ref), tensor_norm(other), tensor_norm(ref - other)
                    values = {
                        "cosine": cosine_or_nan(ref, other), "diff_norm": diff, "reference_norm": ref_norm,
                        "other_norm": other_norm, "relative_diff_reference": diff / (ref_norm + EPS),
                        "relative_diff_symmetric": 2.0 * diff / (ref_norm + other_norm + EPS),
                    }
            rows.append({
                **base_row, "comparison": comparison, "reference_model": ref_model, "other_model": other_model,
                "reference_state": states[0], "other_state": states[1], "layer_name": layer_name,
                "tensor_kind": kind, "reference_shape": _shape(ref), "other_shape": _shape(other),
                "status": status, **values,
            })
    return rows


def layer_metrics(teacher_layers: list[str], student_layers: list[str], snaps: dict[str, dict],
                  base_row: dict) -> list[dict[str, Any]]:
    both = list(dict.fromkeys(teacher_layers + student_layers))
    t, s = ("teacher", "student"), ("initial", "final")
    return (
        compare_snapshots("teacher_student_init", t, ("initial", "initial"),
                          (snaps["teacher_initial"], snaps["student_initial"]), both, base_row)
        + compare_snapshots("teacher_student_final", t, ("final", "final"),
                            (snaps["teacher_final"], snaps["student_final"]), both, base_row)
        + compare_snapshots("teacher_init_final", ("teacher", "teacher"), s,
                            (snaps["teacher_initial"], snaps["teacher_final"]), teacher_layers, base_row)
        + compare_snapshots("student_init_final", ("student", "student"), s,
                            (snaps["student_initial"], snaps["student_final"]), student_layers, base_row)
    )


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


# --------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------


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


def _body(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items() if not k.startswith("aux_head.")}


@dataclass
class TeacherRun:
    """A teacher between its stages: built, perturbed and evaluated, then trained (alone or in lockstep)."""

    rc: ResolvedConfig
    data: Dataset
    model: SplitHeadModel
    started: float
    initial_body: dict[str, torch.Tensor]
    init_acc: float
    init_loss: float
    optimizer: Any = None  # its own, or None in a StackedMLP, whose optimizer steps every member at once
    generator: torch.Generator | None = None  # its data order (DataLoader shuffle)
    batches: tuple = ()  # this epoch's index batches
    losses: torch.Tensor | None = None  # this epoch's batch losses, in one tensor (see _Distilling.losses)
    epoch: int = 0  # epochs done
    step: int = 0  # steps done in this epoch
    last: float = float("nan")
    train_seconds: float = 0.0
    stacked: StackedMLP | None = None
    index: int = 0  # its place in ``stacked``
    failed: bool = False

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.data.train_x.shape[0] / self.rc.config.data_bsize)


def prepare_teacher(rc: ResolvedConfig, data: Dataset, device: torch.device) -> TeacherRun:
    """Build the teacher (reference order: seed, construction, perturbations), keep its initial body and
    evaluate it; then seed its training, make its optimizer and its data-order generator."""
    c = rc.config
    started = time.time()
    set_seed(derived_seed(c.seed, "experiment_start"))
    model = build_model(rc.teacher, c.m, rc.num_classes, c.seed, device)
    apply_perturbations("before_teacher_training", rc, {"teacher": model}, device, run_id="")
    initial_body = _body(model.state_dict())
    init_acc, init_loss = evaluate_class(model, data.test_x, data.test_y, c.data_bsize)
    print(f"[eval] teacher initial acc {init_acc:.6f} class CE {init_loss:.6f}", flush=True)
    run = TeacherRun(rc, data, model, started, initial_body, init_acc, init_loss)
    set_seed(derived_seed(c.seed, "teacher_training"))  # training draws nothing from it; kept as the reference
    run.generator = torch.Generator()
    run.generator.manual_seed(derived_seed(c.seed, "dataloader_shuffle"))
    model.train()
    return run


def train_teachers(runs: list[TeacherRun], device: torch.device, on_done: Callable[[TeacherRun], None],
                   on_failed: Callable[[TeacherRun, Diverged], None], stack_layers: bool | None = None) -> None:
    """Train prepared teachers in lockstep, each on its own data order, with exactly a lone teacher's
    arithmetic; ``stack_layers`` (default: on CUDA only) trains MLP teachers of equal shape, learning rate,
    batch size, steps per epoch and epochs as one StackedMLP. ``on_done(run)`` is called as soon as a
    teacher's epochs are done; ``on_failed(run, error)`` when it diverges (the others go on)."""
    groups: dict[Any, list[TeacherRun]] = {}
    for run in runs:
        c = run.rc.config
        key = stacked_mlp_key(run.rc.teacher, c.teacher_lr, run.steps_per_epoch * c.teacher_epochs, c.data_bsize)
        if not uses_stacked_layers(stack_layers, device) or key is None:
            key = id(run)
        key = (key, run.data.train_x.shape[0])  # with equal batch sizes: equal batch shapes in every step
        groups.setdefault(key, []).append(run)
    units = list(groups.values())
    for unit in units:
        if len(unit) > 1:
            stacked = StackedMLP([r.model for r in unit], "class_head", unit[0].rc.config.teacher_lr, device)
            for index, run in enumerate(unit):
                run.stacked, run.index = stacked, index
            print(f"[stack] {len(unit)} teachers in stacked layers", flush=True)
        else:
            run = unit[0]
            run.optimizer = adam([p for p in run.model.parameters() if p.requires_grad], run.rc.config.teacher_lr,
                                 device)
    while units:
        for unit in units:
            _teacher_step(unit, device, on_done, on_failed)
        units = [unit for unit in units if unit[0].epoch < unit[0].rc.config.teacher_epochs
                 and not all(run.failed for run in unit)]


def _teacher_step(unit: list[TeacherRun], device: torch.device, on_done: Callable[[TeacherRun], None],
                  on_failed: Callable[[TeacherRun, Diverged], None]) -> None:
    """One training step of a unit (a lone teacher or a StackedMLP's members); at an epoch's end its losses,
    at the last epoch's end the finished teachers."""
    lead = unit[0]
    if lead.step == 0:
        for run in unit:
            run.batches = shuffled_batches(run.data.train_x.shape[0], run.rc.config.data_bsize, run.generator)
            run.losses = torch.empty(len(run.batches), device=device)
    started = time.perf_counter()
    indices = [run.batches[lead.step].to(device) for run in unit]
    xs = [run.data.train_x[index] for run, index in zip(unit, indices, strict=True)]
    ys = [run.data.train_y[index] for run, index in zip(unit, indices, strict=True)]
    if lead.stacked is None:
        lead.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(lead.model.class_logits(xs[0]), ys[0])
        loss.backward()
        lead.optimizer.step()
        losses = [loss.detach()]
    else:
        losses = lead.stacked.train_step(xs, F.cross_entropy, ys)
    share = (time.perf_counter() - started) / len(unit)
    for run, loss in zip(unit, losses, strict=True):
        run.losses[run.step] = loss
        run.train_seconds += share
        run.step += 1
    if lead.step < lead.steps_per_epoch:
        return
    for run in unit:
        run.step = 0
        run.epoch += 1
        if not run.failed:
            _end_teacher_epoch(run, on_failed)
    if lead.epoch == lead.rc.config.teacher_epochs:
        for run in unit:
            if not run.failed:
                if run.stacked is not None:
                    run.stacked.write_back(run.index)
                on_done(run)


def _end_teacher_epoch(run: TeacherRun, on_failed: Callable[[TeacherRun, Diverged], None]) -> None:
    c = run.rc.config
    run.last = epoch_mean(run.losses)
    print(f"[teacher] {run.rc.teacher_key()} epoch {run.epoch}/{c.teacher_epochs} class CE {run.last:.6f}", flush=True)
    if not math.isfinite(run.last):
        run.failed = True
        on_failed(run, Diverged(f"teacher training diverged: class cross-entropy {run.last} in epoch {run.epoch} "
                                f"(teacher_lr {c.teacher_lr:g}); no result was written"))


def finish_teacher(run: TeacherRun, device: torch.device) -> dict[str, Any]:
    """Evaluate a trained teacher; its checkpoint holds its body (every layer but aux_head) before and after."""
    rc, data, teacher = run.rc, run.data, run.model
    final_acc, final_loss = evaluate_class(teacher, data.test_x, data.test_y, rc.config.data_bsize)
    print(f"[eval] teacher final acc {final_acc:.6f} class CE {final_loss:.6f}", flush=True)
    return {
        "format": CHECKPOINT_FORMAT,
        "teacher_key": rc.teacher_key(),
        "teacher_settings": rc.teacher_settings(),
        "data_identity": data.identity,
        "initial_body": run.initial_body,
        "trained_body": _body(teacher.state_dict()),
        "metrics": {
            "teacher_init_acc": run.init_acc, "teacher_init_class_loss": run.init_loss,
            "teacher_final_acc": final_acc, "teacher_final_class_loss": final_loss,
            "teacher_train_loss_last": run.last,
        },
        "train_size": int(data.train_x.shape[0]),
        "test_size": int(data.test_x.shape[0]),
        "runtime_seconds": time.time() - run.started,
        "train_seconds": run.train_seconds,
        "environment": environment(device),
        "timestamp": datetime.now().isoformat(timespec="seconds"),
    }


def train_teacher_stage(rc: ResolvedConfig, data: Dataset, device: torch.device) -> dict[str, Any]:
    """Train one teacher; its checkpoint (see finish_teacher)."""
    run = prepare_teacher(rc, data, device)

    def failed(_, error: Diverged) -> None:
        raise error

    train_teachers([run], device, lambda _: None, failed)
    return finish_teacher(run, device)


def check_checkpoint(rc: ResolvedConfig, checkpoint: dict[str, Any], flag: str = "--teacher-checkpoint",
                     data_identity: str | None = None) -> None:
    """Refuse a checkpoint of another teacher, or (given the run's data identity) of other data."""
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        older = f" (it is format {checkpoint['format']}: train it again)" \
            if isinstance(checkpoint, dict) and "format" in checkpoint else ""
        raise UsageError(f"{flag}: not a sublearn teacher checkpoint of format {CHECKPOINT_FORMAT}{older}")
    if checkpoint.get("teacher_key") != rc.teacher_key():
        theirs, ours = checkpoint.get("teacher_settings", {}), rc.teacher_settings()
        diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise UsageError(f"{flag}: the checkpoint's teacher differs from this run's in {', '.join(diff)}; "
                         "train a teacher with the same teacher settings")
    if data_identity is not None and checkpoint.get("data_identity") != data_identity:
        c = rc.config
        raise UsageError(f"{flag}: the teacher was trained on data {checkpoint.get('data_identity')}, but this run's "
                         f"{dataset_key(c.dataset, c.emnist_split)} data ({c.data_dir}) is {data_identity}; "
                         "train the teacher on this data")


@dataclass
class RunResult:
    run_row: dict[str, Any]
    layer_rows: list[dict[str, Any]]
    perturbation_rows: list[dict[str, Any]]
    config_record: dict[str, Any]
    stage_seconds: dict[str, float] = field(default_factory=dict)


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


@dataclass
class _Distilling:
    """One training trajectory of a lockstep distillation: the run that takes the most steps trains, and
    the runs of the same trajectory key (followers) take its weights when their own steps are done."""

    run: StudentRun
    optimizer: Any  # its own, or None in a StackedStudents, whose optimizer steps every member at once
    steps: int
    per_epoch: int
    followers: list[tuple[StudentRun, int, int]]  # (run, steps, steps per epoch), fewest steps first
    keep: int  # losses kept: the longest epoch of any member
    # the latest ``keep`` steps' losses, enough for any member's last epoch, in one ring buffer: kept as a list
    # of per-step scalars they pinned the allocator's heap between steps (a job grew ~4 MB per kept step)
    losses: torch.Tensor | None = None
    last: float = float("nan")
    seconds: float = 0.0
    stacked: StackedStudents | None = None
    index: int = 0  # its place in ``stacked``
    stream: _Stream | None = None  # its stack's noise stream and teacher body
    head: int = 0  # its teacher's aux head among the stream's distinct ones (``_Stream.heads``)

    def train_step(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = F.mse_loss(self.run.student.aux_logits(x), target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def sync(self) -> None:
        """Bring the run's own student up to date (a stacked member trains in the stack's tensors)."""
        if self.stacked is not None:
            self.stacked.write_back(self.index)


def stacking_key(d: _Distilling) -> tuple | None:
    """Trajectories with equal keys can train as one StackedStudents (see stacked_mlp_key)."""
    c = d.run.rc.config
    return stacked_mlp_key(d.run.rc.student, c.student_lr, d.steps, c.noise_bsize)


class StackedMLP:
    """MLPs of equal hidden widths trained side by side: each hidden layer's weights of all members as one
    [K, out, in] tensor (one batched matmul per layer and step instead of K), each member's own head
    (``head``: aux_head for a student, class_head for a teacher) and loss, one optimizer over all. Per
    member it is the arithmetic of a lone run: on CPU the batched matmuls give the same bits as separate
    ones for this project's shapes where the BLAS does (tests check it), and on CUDA, where it exists to
    fill the device with fewer and larger kernels, float tolerance applies."""

    def __init__(self, models: list[SplitHeadModel], head: str, lr: float, device: torch.device):
        self.models, self.head = models, head
        self.layers = [name for name, _, _ in models[0].steps]
        self.weights, self.biases = [], []
        for name in self.layers:
            trainable = getattr(models[0], name).weight.requires_grad
            for tensors, kind in ((self.weights, "weight"), (self.biases, "bias")):
                stacked = torch.stack([getattr(getattr(m, name), kind).detach() for m in models])
                tensors.append(stacked.requires_grad_(trainable))
        params = [p for p in self.weights + self.biases if p.requires_grad]
        params += [p for m in models for p in getattr(m, head).parameters() if p.requires_grad]
        self.optimizer = adam(params, lr, device)

    def train_step(self, xs: list[torch.Tensor], loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   targets: list[torch.Tensor]) -> list[torch.Tensor]:
        """One step of every member on its own batch (the same tensor for members of one noise stream):
        ``loss(member's head output, its target)``."""
        if all(x is xs[0] for x in xs):
            h = xs[0].reshape(xs[0].shape[0], -1).expand(len(xs), -1, -1)
        else:
            h = torch.stack([x.reshape(x.shape[0], -1) for x in xs])
        for weight, bias in zip(self.weights, self.biases, strict=True):
            h = F.relu_(torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2)))
        # unbind: one gradient stack in backward, where indexing would add K zero-padded [K, B, out] tensors
        losses = [loss(getattr(m, self.head)(hidden), target)
                  for m, hidden, target in zip(self.models, h.unbind(0), targets, strict=True)]
        self.optimizer.zero_grad(set_to_none=True)
        torch.stack(losses).sum().backward()  # each member's loss gets gradient 1, as alone
        self.optimizer.step()
        return [value.detach() for value in losses]

    @torch.no_grad()
    def write_back(self, index: int) -> None:
        """Copy a member's hidden layers into its own model."""
        model = self.models[index]
        for name, weight, bias in zip(self.layers, self.weights, self.biases, strict=True):
            getattr(model, name).weight.copy_(weight[index])
            getattr(model, name).bias.copy_(bias[index])


def stacked_mlp_key(plan, lr: float, steps: int, batch_size: int) -> tuple | None:
    """Models with equal keys can train as one StackedMLP: MLPs of equal hidden widths and hidden-layer
    trainability, learning rate, steps and batch size. None: trains alone."""
    if plan.model_type != "mlp":
        return None
    trainable = tuple(bool(plan.trainable[f"fc{i}"]) for i in range(1, len(plan.hidden_dims) + 1))
    if not any(trainable):
        return None
    return tuple(plan.hidden_dims), trainable, lr, steps, batch_size


class StackedStudents(StackedMLP):
    """Distilling trajectories in one StackedMLP (their aux heads, seeds and noise streams may differ)."""

    def __init__(self, members: list[_Distilling], device: torch.device):
        super().__init__([d.run.student for d in members], "aux_head", members[0].run.rc.config.student_lr, device)
        self.members = members
        for index, d in enumerate(members):
            d.stacked, d.index = self, index


def uses_stacked_layers(stack_layers: bool | None, device: torch.device) -> bool:
    """``stack_layers`` as asked, by default on CUDA only: on a CPU the per-run matmuls already run at the
    core's matmul rate and give the same bits on any BLAS."""
    return stack_layers if stack_layers is not None else device.type == "cuda"


def stack_students(active: list[_Distilling], device: torch.device) -> list[list[_Distilling]]:
    """Trajectories in training units: stacks of equal stacking keys (two or more), the rest alone."""
    groups: dict[Any, list[_Distilling]] = {}
    for d in active:
        key = stacking_key(d)
        groups.setdefault(id(d) if key is None else key, []).append(d)
    for group in groups.values():
        if len(group) > 1:
            StackedStudents(group, device)
            print(f"[stack] {len(group)} students in stacked layers: {', '.join(d.run.run_id for d in group)}",
                  flush=True)
    return list(groups.values())


@dataclass
class _Stream:
    """A stack's noise stream and teacher body: one noise draw and one body forward per step serve every
    student of the stack. Each stream draws from its own generator, so stacks of several seeds can step
    in lockstep."""

    config: Any
    generator: torch.Generator
    body: SplitHeadModel
    heads: list = field(default_factory=list)  # distinct teacher aux heads: each gives its target once
    x: torch.Tensor | None = None
    targets: dict = field(default_factory=dict)

    def draw(self, device: torch.device, heads_in_use: set[int]) -> None:
        c = self.config
        self.x = sample_noise(c.noise_bsize, c, device, self.generator)
        with torch.no_grad():
            features = self.body.features(self.x)
            self.targets = {i: self.heads[i](features) for i in sorted(heads_in_use)}

    def head_of(self, teacher: SplitHeadModel) -> int:
        """Its index of a teacher's aux head (equal m, initialisation and perturbations give equal heads)."""
        mine = teacher.aux_head
        for index, head in enumerate(self.heads):
            if torch.equal(head.weight, mine.weight) and torch.equal(head.bias, mine.bias):
                return index
        self.heads.append(mine)
        return len(self.heads) - 1


def distill_stack(runs: list[StudentRun], device: torch.device,
                  on_done: Callable[[StudentRun, float, float], None], stack_layers: bool | None = None) -> None:
    """Distil prepared students in lockstep: one stack (runs that share a teacher body and a noise
    stream) or several (a stack per seed, say), one run alone being the smallest case.

    Every run of one seed and noise setting draws the same noise stream, and a run of N steps per epoch
    and E epochs consumes its first N x E batches: one noise draw and one teacher-body forward per step
    serve every student of a stack, and each does exactly the arithmetic of a lone run. Runs that differ
    only in N and E, or in the student's class head (equal trajectory keys), are one computation: the
    longest trains, and another one's student takes its weights after that run's own N x E steps.
    ``stack_layers`` (default: on CUDA only) trains trajectories of equal MLP shape as StackedStudents,
    across stacks too. ``on_done(run, last epoch's mean loss, seconds)`` is called as soon as a run's
    steps are done.
    """
    from .batch import stack_key

    streams: dict[str, _Stream] = {}
    trajectories: dict[tuple[str, str], list[tuple[StudentRun, int, int]]] = {}
    for run in runs:
        c = run.rc.config
        run.student.train()
        run.teacher.eval()
        steps = c.noise_steps * c.student_epochs
        if steps == 0:
            on_done(run, float("nan"), 0.0)
            continue
        key = stack_key(run.rc)
        if key not in streams:  # its teacher's body is every run's of the stack (same teacher key)
            generator = torch.Generator(device).manual_seed(derived_seed(c.seed, "student_training_noise"))
            streams[key] = _Stream(c, generator, run.teacher)
        trajectories.setdefault((key, run.rc.trajectory_key()), []).append((run, steps, c.noise_steps))
    active = []
    for (key, _), members in trajectories.items():
        members.sort(key=lambda member: member[1])
        leader, steps, per_epoch = members[-1]
        d = _Distilling(leader, None, steps, per_epoch, members[:-1], max(member[2] for member in members),
                        stream=streams[key])
        d.head = d.stream.head_of(leader.teacher)
        active.append(d)
    units = stack_students(active, device) if uses_stacked_layers(stack_layers, device) else [[d] for d in active]
    for unit in units:
        if unit[0].stacked is None:  # a stack's members share its optimizer
            params = [p for p in unit[0].run.student.parameters() if p.requires_grad]
            unit[0].optimizer = adam(params, unit[0].run.rc.config.student_lr, device)
    step = 0
    heads_in_use = _heads_in_use(units)
    while units:
        for stream in streams.values():
            if id(stream) in heads_in_use:  # a stream none of whose runs is left stops drawing
                stream.draw(device, heads_in_use[id(stream)])
        step += 1
        for unit in units:
            started = time.perf_counter()
            if unit[0].stacked is None:
                d = unit[0]
                losses = [d.train_step(d.stream.x, d.stream.targets[d.head])]
            else:
                losses = unit[0].stacked.train_step([d.stream.x for d in unit], F.mse_loss,
                                                    [d.stream.targets[d.head] for d in unit])
            share = (time.perf_counter() - started) / len(unit)
            for d, loss in zip(unit, losses, strict=True):
                d.seconds += share
                record_step(d, step, loss, on_done)
        finished = [unit for unit in units if step == unit[0].steps]  # a unit's members take equal steps
        if finished:
            for d in (d for unit in finished for d in unit):
                d.sync()
                on_done(d.run, d.last, d.seconds)
            units = [unit for unit in units if step < unit[0].steps]
            heads_in_use = _heads_in_use(units)


def _heads_in_use(units: list[list[_Distilling]]) -> dict[int, set[int]]:
    """id(stream) -> the indices of its teacher aux heads that the units still training use."""
    heads: dict[int, set[int]] = {}
    for d in (d for unit in units for d in unit):
        heads.setdefault(id(d.stream), set()).add(d.head)
    return heads


def record_step(d: _Distilling, step: int, loss: torch.Tensor,
                on_done: Callable[[StudentRun, float, float], None]) -> None:
    """Keep a trajectory's loss, report its epochs, and finish the followers whose steps are done."""
    if d.losses is None:
        d.losses = torch.empty(d.keep, dtype=loss.dtype, device=loss.device)
    d.losses[(step - 1) % d.keep] = loss
    if step % d.per_epoch == 0:
        d.last = latest_mean(d, step, d.per_epoch)
        c = d.run.rc.config
        print(f"[student] {d.run.run_id} epoch {step // d.per_epoch}/{c.student_epochs} aux MSE "
              f"{d.last:.8f}", flush=True)
    while d.followers and d.followers[0][1] == step:
        follower, _, per_epoch = d.followers.pop(0)
        d.sync()
        take_trajectory_weights(follower.student, d.run.student)
        last = latest_mean(d, step, per_epoch)
        print(f"[student] {follower.run_id}: the first {step} steps of {d.run.run_id}, last epoch aux MSE "
              f"{last:.8f}", flush=True)
        on_done(follower, last, d.seconds)


def latest_mean(d: _Distilling, step: int, count: int) -> float:
    """epoch_mean of a trajectory's losses of steps step - count + 1 .. step (in the ring buffer)."""
    return epoch_mean(d.losses[torch.arange(step - count, step, device=d.losses.device) % d.keep])


def take_trajectory_weights(follower: SplitHeadModel, leader: SplitHeadModel) -> None:
    """A follower's student after its steps: the leader's weights, but its own class head, which no
    distillation step changes and which may differ from the leader's (source or perturbation)."""
    with torch.no_grad():
        for (name, mine), theirs in zip(follower.named_parameters(), leader.parameters(), strict=True):
            if not name.startswith("class_head."):
                mine.copy_(theirs)


def prepare_student(rc: ResolvedConfig, data: Dataset, device: torch.device, checkpoint: dict[str, Any],
                    teacher_in_process: bool = False, shared: SharedEvaluations | None = None) -> StudentRun:
    """Everything of a student run before distillation (steps 1-8 of the reference order); ``shared``:
    evaluations that the runs of a batch have in common."""
    c = rc.config
    started = time.time()
    run_id = uuid.uuid4().hex[:12]
    timestamp = datetime.now().isoformat(timespec="seconds")
    check_checkpoint(rc, checkpoint, data_identity=data.identity)
    set_seed(derived_seed(c.seed, "experiment_start"))
    teacher = build_model(rc.teacher, c.m, rc.num_classes, c.seed, device)
    student = build_model(rc.student, c.m, rc.num_classes, c.seed, device)
    models = {"teacher": teacher, "student": student}

    perturb_rows = apply_perturbations("before_teacher_training", rc, models, device, run_id)
    snaps = {"teacher_initial": snapshot(teacher)}
    initial_body = _body(teacher.state_dict())
    if any(not torch.equal(initial_body[k], checkpoint["initial_body"][k]) for k in initial_body):
        raise UsageError("--teacher-checkpoint: its initial weights differ from this run's teacher; "
                         "it was trained by another version or with other settings")
    teacher.load_state_dict({k: v.to(device) for k, v in checkpoint["trained_body"].items()}, strict=False)
    metrics = dict(checkpoint["metrics"])

    perturb_rows += apply_perturbations("after_teacher_training", rc, models, device, run_id)
    snaps["teacher_final"] = snapshot(teacher)
    if any(p["target"] == "teacher" and p["timing"] == "after_teacher_training" for p in rc.perturbations):
        metrics["teacher_final_acc"], metrics["teacher_final_class_loss"] = evaluate_class(
            teacher, data.test_x, data.test_y, c.data_bsize)

    perturb_rows += apply_perturbations("before_student_training", rc, models, device, run_id)
    snaps["student_initial"] = snapshot(student)
    init_acc, init_loss = evaluate_class(student, data.test_x, data.test_y, c.data_bsize, shared)
    init_aux = aux_mse_on_noise(student, teacher, rc, device, "student_initial", shared)
    print(f"[eval] student initial acc {init_acc:.6f} class CE {init_loss:.6f} aux MSE {init_aux:.8f}", flush=True)
    return StudentRun(rc, checkpoint, teacher, student, run_id, timestamp, started, metrics, snaps, perturb_rows,
                      init_acc, init_loss, init_aux, teacher_in_process)


def student_stage(rc: ResolvedConfig, data: Dataset, device: torch.device,
                  checkpoint: dict[str, Any], teacher_in_process: bool = False) -> RunResult:
    """Distil one student from a trained teacher (in memory or loaded from a checkpoint file)."""
    run = prepare_student(rc, data, device, checkpoint, teacher_in_process)
    distilled = {}
    distill_stack([run], device, lambda _, loss, seconds: distilled.update(loss=loss, seconds=seconds))
    return finish_student(run, data, device, distilled["loss"], distilled["seconds"])


def finish_student(run: StudentRun, data: Dataset, device: torch.device, train_aux: float,
                   distill_seconds: float, extra: dict[str, Any] | None = None,
                   shared: SharedEvaluations | None = None) -> RunResult:
    """Everything after distillation (steps 10-11): perturbations, evaluations, metrics and records."""
    rc, checkpoint, teacher, student = run.rc, run.checkpoint, run.teacher, run.student
    c = rc.config
    run_id, timestamp, started, metrics, snaps = run.run_id, run.timestamp, run.started, run.metrics, run.snaps
    init_acc, init_loss, init_aux = run.init_acc, run.init_loss, run.init_aux
    teacher_in_process = run.teacher_in_process
    models = {"teacher": teacher, "student": student}
    perturb_rows = run.perturb_rows + apply_perturbations("after_student_training", rc, models, device, run_id)
    snaps["student_final"] = snapshot(student)
    final_acc, final_loss = evaluate_class(student, data.test_x, data.test_y, c.data_bsize, shared)
    final_aux = aux_mse_on_noise(student, teacher, rc, device, "student_final", shared)
    print(f"[eval] student final acc {final_acc:.6f} class CE {final_loss:.6f} aux MSE {final_aux:.8f}", flush=True)
    check_student_finite(rc, train_aux, final_aux)

    base_row = {"schema_version": SCHEMA_VERSION, "run_id": run_id, "seed": c.seed,
                "sweep_name": c.sweep_name, "run_label": c.run_label}
    layer_rows = layer_metrics(teacher.layer_names, student.layer_names, snaps, base_row)
    for row in perturb_rows:
        row["run_id"] = run_id
    seeds = seed_bookkeeping(c.seed)
    env = environment(device)
    teacher_total, teacher_trainable = parameter_counts(teacher)
    student_total, student_trainable = parameter_counts(student)
    runtime = time.time() - started
    run_row = {
        "schema_version": SCHEMA_VERSION, "run_id": run_id, "timestamp": timestamp,
        "runtime_seconds": runtime + (checkpoint["runtime_seconds"] if teacher_in_process else 0.0),
        "sweep_name": c.sweep_name, "run_label": c.run_label, "seed": c.seed, **seeds,
        "torch_version": env["torch_version"], "cuda_available": env["cuda_available"], "device": env["device"],
        "dataset": c.dataset, "emnist_split": c.emnist_split,
        "train_size": checkpoint["train_size"], "test_size": checkpoint["test_size"],
        "num_classes": rc.num_classes, "data_dir": c.data_dir, "outdir": c.outdir,
        "teacher_type": c.teacher_type, "student_type": c.student_type,
        "teacher_hidden_dims": list(c.teacher_hidden_dims), "student_hidden_dims": list(c.student_hidden_dims),
        "teacher_arch_description": rc.teacher.arch_description(),
        "student_arch_description": rc.student.arch_description(),
        "teacher_layer_names": teacher.layer_names, "student_layer_names": student.layer_names,
        "m": c.m, "teacher_epochs": c.teacher_epochs, "student_epochs": c.student_epochs,
        "data_bsize": c.data_bsize, "noise_bsize": c.noise_bsize, "noise_steps": c.noise_steps,
        "teacher_lr": c.teacher_lr, "student_lr": c.student_lr, "noise_dist": c.noise_dist,
        "perlin_res": c.perlin_res, "normalize_noise": int(c.normalize_noise),
        "eval_noise_batches": c.eval_noise_batches, "eval_noise_bsize": c.eval_noise_bsize,
        "teacher_init_config": rc.teacher.init, "student_init_config": rc.student.init,
        "teacher_trainable_config": rc.teacher.trainable, "student_trainable_config": rc.student.trainable,
        "perturb_specs": rc.perturbations,
        "teacher_total_parameters": teacher_total, "student_total_parameters": student_total,
        "teacher_trainable_parameters": teacher_trainable, "student_trainable_parameters": student_trainable,
        "teacher_init_acc": metrics["teacher_init_acc"], "teacher_final_acc": metrics["teacher_final_acc"],
        "student_init_acc": init_acc, "student_final_acc": final_acc,
        "teacher_init_class_loss": metrics["teacher_init_class_loss"],
        "teacher_final_class_loss": metrics["teacher_final_class_loss"],
        "student_init_class_loss": init_loss, "student_final_class_loss": final_loss,
        "student_init_aux_loss": init_aux, "student_final_aux_loss": final_aux,
        "teacher_train_loss_last": metrics["teacher_train_loss_last"],
        "student_train_aux_loss_last": train_aux,
    }
    run_row.update(head_metric_aliases(layer_rows))
    run_row.update({
        "class_count": c.class_count if c.class_count is not None else "",
        "class_selection": c.class_selection,
        "teacher_key": rc.teacher_key(),
        "run_key": rc.run_key(),
        "data_identity": data.identity,
        "sublearn_version": env["sublearn_version"], "cuda_version": env["cuda_version"],
        "device_name": env["device_name"], "threads": env["threads"], "hostname": env["hostname"],
        "teacher_device": checkpoint["environment"]["device"],
        "teacher_runtime_seconds": checkpoint.get("runtime_seconds", float("nan")),
        "student_runtime_seconds": runtime,
        "teacher_train_seconds": checkpoint.get("train_seconds", float("nan")),
        "student_train_seconds": distill_seconds,
        **(extra or {}),
    })
    config_record = {
        "schema_version": SCHEMA_VERSION, "run_id": run_id, "timestamp": timestamp,
        "effective_config": c.to_dict(),
        "teacher_init_config": rc.teacher.init, "student_init_config": rc.student.init,
        "teacher_trainable_config": rc.teacher.trainable, "student_trainable_config": rc.student.trainable,
        "teacher_arch_description": rc.teacher.arch_description(),
        "student_arch_description": rc.student.arch_description(),
        "seed_info": seeds,
        "teacher_key": rc.teacher_key(),
        "teacher_settings": rc.teacher_settings(),
        "environment": env,
        "teacher_environment": checkpoint["environment"],
    }
    return RunResult(run_row, layer_rows, perturb_rows, config_record,
                     {"student_stage": runtime, "distillation": distill_seconds})

"""The cost model: estimated float32 FLOPs (matmuls and convolutions) and memory of teachers, student runs,
stacks and jobs. The runner's `batch --plan` and the workflow's job planning both count with it.
Torch-free.
"""

from __future__ import annotations

from typing import Any

from .architecture import ModelPlan, layers
from .catalog import CATALOG, IMAGE_SHAPE, dataset_key
from .plan import ResolvedConfig

# an allowance for a run's work outside the training matmuls (models, evaluations, snapshots, metrics, files),
# by the device type its job computes on: on a CPU core its evaluations alone take ~0.1-0.2 s; on a GPU the
# fused path's host work is ~4 ms a run (bench/bench_step.py), allowed 5x for a slower host
SECONDS_PER_RUN = {"cpu": 0.5, "cuda": 0.02}
JOB_START_SECONDS = 5.0  # a job's process start: Python, torch's import (~2 s here), CUDA's start, the data cache


def layer_macs(plan: ModelPlan, m: int, num_classes: int) -> list[tuple[str, int]]:
    return [(layer.name, layer.macs) for layer in layers(plan, m, num_classes)]


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


def run_flops(rc: ResolvedConfig, dataset_key: str, distillation_only: bool = False,
              steps: int | None = None) -> dict[str, float]:
    """Estimated FLOPs of one student run: distillation, the teacher's forward passes that give its targets
    in distillation and on the eval noise (body and aux head, which a stack shares), and the student's
    evaluation. ``distillation_only``: the distillation's steps alone (no evaluation, no eval noise);
    ``steps``: that many noise steps instead of the run's (1: what a run adds to a lockstep step)."""
    c = rc.config
    s_macs = layer_macs(rc.student, c.m, rc.num_classes)
    t_macs = layer_macs(rc.teacher, c.m, rc.num_classes)
    s_fwd = 2 * sum(v for n, v in s_macs if n != "class_head")
    t_body = 2 * sum(v for n, v in t_macs if n not in ("class_head", "aux_head"))
    t_aux = 2 * dict(t_macs)["aux_head"]
    images = (c.noise_steps * c.student_epochs if steps is None else steps) * c.noise_bsize
    eval_images = 0 if distillation_only else 2 * c.eval_noise_batches * c.eval_noise_bsize  # before and after
    test = CATALOG[dataset_key].test_size
    if c.class_count:
        test = test * c.class_count // rc.num_classes if c.class_count < rc.num_classes else test
    s_class = 2 * sum(v for n, v in s_macs if n != "aux_head")
    return {
        "student": images * _train_step_flops(rc.student, s_macs, "aux_head"),
        "teacher_head": (images + eval_images) * t_aux,
        "teacher_body": (images + eval_images) * t_body,
        "evaluation": 0 if distillation_only else 2 * test * s_class + eval_images * s_fwd,
    }


def teacher_flops(rc: ResolvedConfig, dataset_key: str) -> float:
    c = rc.config
    macs = layer_macs(rc.teacher, c.m, rc.num_classes)
    info = CATALOG[dataset_key]
    forward = 2 * sum(v for n, v in macs if n != "aux_head")
    return c.teacher_epochs * info.train_size * _train_step_flops(rc.teacher, macs, "class_head") \
        + 2 * info.test_size * forward


def stack_flops(runs: list[Any], dataset_key: str, distillation_only: bool = False, steps: int | None = None) -> float:
    """FLOPs of a stack (runs with ``.id`` and ``.rc``): every member's evaluation, the distillation of each
    trajectory once (its longest run: runs of equal trajectory keys share it), each distinct teacher aux
    head's targets and one teacher-body forward for as many steps as the longest run using them.
    ``distillation_only`` and ``steps`` as for run_flops (``steps=1``: one lockstep step of the stack)."""
    costs = {r.id: run_flops(r.rc, dataset_key, distillation_only, steps) for r in runs}
    trajectories: dict[str, float] = {}
    heads: dict[str, float] = {}
    for r in runs:
        key, head = r.rc.trajectory_key(), r.rc.teacher_head_key()
        trajectories[key] = max(trajectories.get(key, 0.0), costs[r.id]["student"])
        heads[head] = max(heads.get(head, 0.0), costs[r.id]["teacher_head"])
    return (sum(trajectories.values()) + sum(heads.values()) + sum(c["evaluation"] for c in costs.values())
            + max(c["teacher_body"] for c in costs.values()))


class JobCost:
    """A job's estimated FLOPs as runs join it in order (the runs of a stack together, a trajectory's longest
    run first), for cutting runs into jobs: a run adds its evaluation, its trajectory's distillation when
    it starts one, the teacher-body passes when it starts a stack and what its teacher aux head adds."""

    def __init__(self) -> None:
        self.flops = 0.0
        self.heads: dict[tuple, float] = {}  # (stack, teacher aux head) -> its targets' FLOPs counted here
        self.last: tuple = (None, None)  # the stack and trajectory of the run that joined last

    def added(self, cost: dict[str, float], stack: str, trajectory: str, head: str) -> float:
        """What a run with these costs (``run_flops``) would add."""
        student = cost["student"] if (stack, trajectory) != self.last else 0.0
        extra = student + cost["evaluation"] + (cost["teacher_body"] if stack != self.last[0] else 0.0)
        return extra + max(0.0, cost["teacher_head"] - self.heads.get((stack, head), 0.0))

    def add(self, cost: dict[str, float], stack: str, trajectory: str, head: str, extra: float) -> None:
        self.flops += extra
        self.heads[(stack, head)] = max(self.heads.get((stack, head), 0.0), cost["teacher_head"])
        self.last = (stack, trajectory)

    def restart(self) -> None:
        """A new job: it shares nothing with the runs before."""
        self.__init__()


def estimated_seconds(flops: float, gflops_per_s: float, runs: int, device_type: str = "cpu", jobs: int = 1) -> float:
    """The estimated wall time of ``jobs`` jobs' work (0: a part of a job): their process starts, the FLOPs at
    ``gflops_per_s`` and each run's allowance on the device."""
    return jobs * JOB_START_SECONDS + flops / (gflops_per_s * 1e9) + runs * SECONDS_PER_RUN[device_type]


def memory_mb(rc: ResolvedConfig) -> float:
    """Estimated memory of one member while it distils (float32): teacher weights, student weights with
    gradients and Adam's two moments, and three copies (value, gradient, saved input) of every student
    activation of one noise batch plus the teacher's."""
    c = rc.config
    student = layers(rc.student, c.m, rc.num_classes)
    teacher = layers(rc.teacher, c.m, rc.num_classes)
    weights = 4 * sum(layer.params for layer in student) + sum(layer.params for layer in teacher)
    outputs = 3 * sum(layer.outputs for layer in student) + sum(layer.outputs for layer in teacher)
    activations = c.noise_bsize * outputs
    return 4 * (weights + activations) / 2**20


def follower_memory_mb(rc: ResolvedConfig) -> float:
    """Estimated memory of a run that follows a longer run of its trajectory (it trains nothing and takes
    that run's weights when its own steps are done): its teacher's and student's weights (float32)."""
    c = rc.config
    return 4 * sum(layer.params for plan in (rc.student, rc.teacher) for layer in layers(plan, c.m, rc.num_classes)) \
        / 2**20


def peak_memory_mb(rc: ResolvedConfig) -> dict[str, float]:
    """Estimated memory (MB) of a run's largest moments, by what sets them: distilling (``memory_mb``), its
    evaluation noise (all batches and their features through teacher and student, as a job keeps them)
    and drawing Perlin noise (per image its gradient grid and corner terms)."""
    c = rc.config
    pixels = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]
    features = sum(layer.outputs for plan in (rc.student, rc.teacher) for layer in layers(plan, c.m, rc.num_classes))
    perlin = 0.0
    if c.noise_dist == "perlin":
        perlin = max(c.noise_bsize, c.eval_noise_bsize) * (2 * (c.perlin_res + 1) ** 2 + 10 * pixels) * 4 / 2**20
    return {"distillation": memory_mb(rc),
            "evaluation noise": c.eval_noise_batches * c.eval_noise_bsize * (pixels + features) * 4 / 2**20,
            "Perlin noise": perlin}


def teacher_memory_mb(rc: ResolvedConfig) -> float:
    """Estimated memory (MB) of training a teacher: weights with gradients and Adam's moments, three copies
    of every activation of a labelled batch, and the normalised training split."""
    c = rc.config
    teacher = layers(rc.teacher, c.m, rc.num_classes)
    info = CATALOG[dataset_key(c.dataset, c.emnist_split)]
    pixels = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]
    values = 4 * sum(layer.params for layer in teacher) + 3 * c.data_bsize * sum(layer.outputs for layer in teacher)
    return 4 * (values + info.train_size * pixels) / 2**20


def memory_settings(rc: ResolvedConfig, moment: str) -> str:
    """The settings behind one of ``peak_memory_mb``'s moments, for a message."""
    c = rc.config
    widths = f"student {rc.student.arch_description()}, teacher {rc.teacher.arch_description()}"
    return {"distillation": f"m {c.m}, noise_bsize {c.noise_bsize}, {widths}",
            "evaluation noise": f"eval_noise_batches {c.eval_noise_batches}, eval_noise_bsize {c.eval_noise_bsize}, "
                                f"m {c.m}, {widths}",
            "Perlin noise": f"perlin_res {c.perlin_res}, noise_bsize {c.noise_bsize}, "
                            f"eval_noise_bsize {c.eval_noise_bsize}"}[moment]


def memory_refusal(rc: ResolvedConfig, budget_mb: float) -> str | None:
    """Why a run cannot fit in ``budget_mb`` (its largest moment and the settings behind it), or None."""
    moments = peak_memory_mb(rc)
    moment = max(moments, key=moments.get)
    if moments[moment] <= budget_mb:
        return None
    return (f"its {moment} needs about {moments[moment]:,.0f} MB, more than the {budget_mb:,.0f} MB allowed "
            f"({memory_settings(rc, moment)})")

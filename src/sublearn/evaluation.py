"""Evaluations of a model: class accuracy and loss over a split, aux MSE against the teacher on
evaluation noise, and what the runs of a batch job have in common (computed once)."""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .model import InitialWeights, SplitHeadModel, activate
from .noise import sample_noise
from .plan import ResolvedConfig
from .seeding import derived_seed, forked_rng, set_seed
from .stacked import linear, stack_linear


class SharedEvaluations:
    """What the evaluations of a batch job's runs have in common, computed once: each seed's eval-noise
    batches, a model body's features on an input (the test split, or those batches) keyed by the body's
    weights, and a teacher's aux logits on the noise. In fig2, say, the 36 runs of a seed start from 4
    distinct student bodies and share one teacher. Equal weights and inputs through the same operations
    give equal outputs, so every run's numbers are those of its lone run. Bodies are keyed by what fixed
    their weights (layer_key) rather than by hashing the weights of every run; the job's layers' initial
    weights are drawn once (``inits``). The least recently used entries
    go beyond ``max_bytes``."""

    def __init__(self, max_bytes: int = 256 * 2**20):
        self.max_bytes, self.bytes = max_bytes, 0
        self.entries: OrderedDict[tuple, tuple[Any, list[torch.Tensor], int]] = OrderedDict()
        self.inits = InitialWeights()  # the layers' initial weights, drawn once for every run that builds them
        self.trained: dict[int, tuple[dict, dict[str, tuple]]] = {}  # id(trained body) -> (it, layer identities)
        self.comparisons: dict[tuple, Any] = {}  # records.pair_values's values of pairs and norms by their keys
        self.snapshots: dict[tuple, dict] = {}  # records.snapshot's layer snapshots by identity
        # trained teachers no perturbation touches, shared by the runs being prepared (student.prepare_student),
        # and their snapshots; an entry goes with the last run that holds its teacher
        self.teachers: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self.teacher_snaps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.majority: dict[int, tuple[torch.Tensor, float]] = {}

    def majority_rate(self, labels: torch.Tensor) -> float:
        """majority_rate of a split's labels, computed once."""
        if id(labels) not in self.majority:
            self.majority[id(labels)] = (labels, majority_rate(labels))
        return self.majority[id(labels)][1]

    def trained_identities(self, trained_body: dict[str, torch.Tensor]) -> dict[str, tuple]:
        """A teacher checkpoint's layers by a digest of their trained weights, computed once per checkpoint."""
        if id(trained_body) not in self.trained:
            layers: dict[str, list[str]] = {}
            for key in trained_body:
                layers.setdefault(key.rsplit(".", 1)[0], []).append(key)
            identities = {layer: ("trained", tensors_digest([(key, trained_body[key]) for key in keys]))
                          for layer, keys in layers.items()}
            self.trained[id(trained_body)] = (trained_body, identities)
        return self.trained[id(trained_body)][1]

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


def tensors_digest(named: list[tuple[str, torch.Tensor]]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in named:
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def weights_digest(modules: list[nn.Module]) -> str:
    return tensors_digest([item for module in modules for item in module.state_dict().items()])


def layer_key(model: SplitHeadModel, name: str) -> tuple:
    """Equal keys: equal weights. The layer's identity (what fixed its weights, see SplitHeadModel.stamp)
    while it holds, else a digest of its weights."""
    identity = model.identity(name)
    return identity if identity is not None else ("digest", weights_digest([getattr(model, name)]))


def body_key(model: SplitHeadModel) -> tuple:
    """Equal keys: the same feature layers (structure and weights), so equal features of any input."""
    return repr(model.steps), tuple(layer_key(model, name) for name, _, _ in model.steps)


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
    losses, hits = [], []
    for start, h in zip(starts, features, strict=True):
        logits = model.class_head(h)
        target = y[start:start + batch_size]
        losses.append(F.cross_entropy(logits, target, reduction="sum"))
        hits.append((logits.argmax(dim=1) == target).sum())
    # one host copy for every batch (not two waits per batch); summed on the host in batch order as Python
    # numbers, as the reference sums each batch's .item()
    correct, loss_sum = 0, 0.0
    for loss, hit in zip(*host_values(losses, hits), strict=True):
        loss_sum += loss
        correct += int(hit)
    return correct / max(1, x.shape[0]), loss_sum / max(1, x.shape[0])


def host_values(*columns: list[torch.Tensor]) -> list[list]:
    """Lists of scalar tensors as lists of Python numbers, in one host copy (one device wait). Each value is
    the number its own ``.item()`` gives."""
    filled = iter(host_lists([torch.stack(column) for column in columns if column]))
    return [next(filled) if column else [] for column in columns]


def majority_rate(labels: torch.Tensor) -> float:
    """Accuracy of always answering the split's most frequent class (MNIST's test split: 1135 / 10000)."""
    return float(torch.bincount(labels.reshape(-1).cpu()).max().item()) / max(1, labels.numel())


def eval_noise(rc: ResolvedConfig, device: torch.device, moment: str) -> list[torch.Tensor]:
    c = rc.config
    with forked_rng(device):
        set_seed(derived_seed(c.seed, "eval_noise", moment))
        return [sample_noise(c.eval_noise_bsize, c, device) for _ in range(c.eval_noise_batches)]


def noise_targets(teacher: SplitHeadModel, rc: ResolvedConfig, device: torch.device, moment: str,
                  shared: SharedEvaluations) -> tuple[tuple, list[torch.Tensor], list[torch.Tensor]]:
    """(the eval noise's cache name, its batches, the teacher's aux logits on them), each computed once a job."""
    name = (*rc.eval_noise_key(moment), str(device))
    batches = shared.get(name, lambda: eval_noise(rc, device, moment))
    targets = shared.get(("aux", body_key(teacher), layer_key(teacher, "aux_head"), name),
                         lambda: [teacher.aux_head(h) for h in shared.features(teacher, name, batches)])
    return name, batches, targets


def mean_of(losses: list[float]) -> float:
    return float(sum(losses) / len(losses)) if losses else float("nan")


@torch.no_grad()
def aux_mse_on_noise(student: SplitHeadModel, teacher: SplitHeadModel, rc: ResolvedConfig,
                     device: torch.device, moment: str, shared: SharedEvaluations | None = None) -> float:
    student.eval()
    teacher.eval()
    if shared is None:
        batches = eval_noise(rc, device, moment)
        pairs = ((student.aux_logits(x), teacher.aux_logits(x)) for x in batches)
    else:
        name, batches, targets = noise_targets(teacher, rc, device, moment, shared)
        pairs = zip((student.aux_head(h) for h in shared.features(student, name, batches)), targets, strict=True)
    (losses,) = host_values([F.mse_loss(output, target) for output, target in pairs])
    return mean_of(losses)


def stacking_key(model: SplitHeadModel) -> tuple | None:
    """Equal keys: MLPs of equal bodies (layer shapes, activations) and class heads, whose forwards one batched
    matmul per layer serves (their aux heads may differ in width); None for a model with other layers."""
    if any(kind != "linear" for _, kind, _ in model.steps):
        return None
    return repr(model.steps), tuple(tuple(getattr(model, name).weight.shape)
                                    for name in [name for name, _, _ in model.steps] + ["class_head"])


@torch.no_grad()
def evaluate_stacked(students: list[SplitHeadModel], teachers: list[SplitHeadModel], rcs: list[ResolvedConfig],
                     test_x: torch.Tensor, test_y: torch.Tensor, device: torch.device, moment: str,
                     shared: SharedEvaluations, max_bytes: int = 2**28) -> list[tuple[float, float, float]]:
    """evaluate_class on the split and aux_mse_on_noise of K students of one stacking_key at once: each
    distinct body (body_key; on its eval noise) through one batched forward per layer and batch, the class
    heads and losses of all and the aux heads of each width batched on those features, one host copy for
    all (K students at a time within ``max_bytes`` of activations): each student's (accuracy, class loss,
    aux MSE). The runs must share the split's batch size and the eval noise's sizes. Equal to separate
    evaluations to float tolerance (a batched matmul need not give a lone one's bits, nor a batched reduction
    a lone one's order): for fused runs, which have that tolerance already."""
    c = rcs[0].config
    batch_size, noise_batches, noise_bsize = c.data_bsize, c.eval_noise_batches, c.eval_noise_bsize
    if len({(rc.config.data_bsize, rc.config.eval_noise_batches, rc.config.eval_noise_bsize) for rc in rcs}) > 1 \
            or len({stacking_key(s) for s in students}) > 1 or stacking_key(students[0]) is None:
        raise ValueError("evaluate_stacked: the students differ in shape or evaluation sizes")
    names = [name for name, _, _ in students[0].steps]
    activations = [spec.get("activation", "relu") for _, _, spec in students[0].steps]
    widest = max([test_x[0].numel()] + [getattr(students[0], name).weight.shape[0] for name in names])
    chunk = max(1, max_bytes // (4 * widest * max(batch_size, noise_bsize, 1)))
    noise = [noise_targets(teacher, rc, device, moment, shared) for teacher, rc in zip(teachers, rcs, strict=True)]
    starts = range(0, test_x.shape[0], batch_size)
    read: list[tuple[str, list[int], torch.Tensor]] = []  # (column, its rows' students, [rows, batches])
    for first in range(0, len(students), chunk):
        members = list(range(first, min(first + chunk, len(students))))
        models, inputs = [students[k] for k in members], [noise[k] for k in members]
        # members of one body and eval noise (an init shared by runs, a trajectory's followers) share features
        slots: dict[tuple, int] = {}
        owners, index = [], []  # the first member of each distinct body; each member's slot among them
        for k, (model, (name, _, _)) in enumerate(zip(models, inputs, strict=True)):
            key = (body_key(model), name)
            if key not in slots:
                slots[key] = len(owners)
                owners.append(k)
            index.append(slots[key])
        for model in models:
            model.eval()
        body = [stack_linear([getattr(models[k], name) for k in owners]) for name in names]
        class_head = stack_linear([model.class_head for model in models])
        widths: dict[int, list[int]] = {}  # aux width -> its members' positions in the chunk
        for position, model in enumerate(models):
            widths.setdefault(model.aux_head.weight.shape[0], []).append(position)
        # each member's row among the distinct bodies' features (None: the same rows), made once a chunk
        class_rows = body_rows(index, len(owners), device)
        aux_rows_of = {width: body_rows([index[p] for p in positions], len(owners), device)
                       for width, positions in widths.items()}

        loss_rows, hit_rows = [], []
        for start in starts:
            x, y = test_x[start:start + batch_size], test_y[start:start + batch_size]
            h = stacked_features(x.reshape(1, x.shape[0], -1).expand(len(owners), -1, -1), body, activations)
            logits = linear(member_rows(h, class_rows), *class_head)
            loss_rows.append(F.cross_entropy(logits.flatten(0, 1), y.repeat(len(models)), reduction="none")
                             .view(len(models), -1).sum(1))
            hit_rows.append((logits.argmax(dim=2) == y).sum(1))
        read += [("loss", members, batch_rows(loss_rows, len(models), device)),
                 ("hits", members, batch_rows(hit_rows, len(models), device))]
        heads = {width: stack_linear([models[p].aux_head for p in positions]) for width, positions in widths.items()}
        aux_rows: dict[int, list[torch.Tensor]] = {width: [] for width in widths}
        for j in range(noise_batches):
            x = same_or_stacked([inputs[k][1][j] for k in owners])
            h = stacked_features(x.reshape(x.shape[0], x.shape[1], -1), body, activations)
            for width, positions in widths.items():
                target = same_or_stacked([inputs[p][2][j] for p in positions])
                output = linear(member_rows(h, aux_rows_of[width]), *heads[width])
                aux_rows[width].append((output - target).square().flatten(1).mean(1))
        read += [("aux", [members[p] for p in positions], batch_rows(aux_rows[width], len(positions), device))
                 for width, positions in widths.items()]
    values: dict[str, list[list]] = {column: [[] for _ in students] for column in ("loss", "hits", "aux")}
    for (column, rows, _), flat in zip(read, host_lists([t.flatten() for _, _, t in read]), strict=True):
        per_row = len(flat) // max(1, len(rows))
        for r, k in enumerate(rows):
            values[column][k] = flat[r * per_row:(r + 1) * per_row]
    out, count = [], max(1, test_x.shape[0])
    for losses, hits, aux in zip(values["loss"], values["hits"], values["aux"], strict=True):
        # summed on the host in batch order, as evaluate_class and aux_mse_on_noise sum theirs
        loss_sum, correct = 0.0, 0
        for loss, hit in zip(losses, hits, strict=True):
            loss_sum += loss
            correct += int(hit)
        out.append((correct / count, loss_sum / count, mean_of(aux)))
    return out


def batch_rows(rows: list[torch.Tensor], members: int, device: torch.device) -> torch.Tensor:
    """Per-batch [members] values as one [members, batches] tensor."""
    return torch.stack(rows, 1) if rows else torch.zeros(members, 0, device=device)


def body_rows(index: list[int], bodies: int, device: torch.device) -> torch.Tensor | None:
    """Some members' rows among ``bodies`` distinct bodies' features (``index``: each one's body), as an index
    tensor; None where they are those rows in order."""
    return None if index == list(range(bodies)) else torch.tensor(index, device=device)


def member_rows(h: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """Features of distinct bodies [D, ...] as some members' (body_rows)."""
    return h if rows is None else h.index_select(0, rows)


def host_lists(tensors: list[torch.Tensor]) -> list[list]:
    """1-D tensors (float32 or counts) as lists of Python numbers, in one host copy (one device wait)."""
    flat = torch.cat([t.double() for t in tensors]).tolist() if tensors else []  # exact: float32 and counts
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()])
        start += t.numel()
    return out


def stacked_features(h: torch.Tensor, body: list[tuple[torch.Tensor, torch.Tensor]], activations: list) -> torch.Tensor:
    """SplitHeadModel.features of K MLPs at once: h [K, n, in], body their stacked layers (stack_linear)."""
    for (weight, bias), activation in zip(body, activations, strict=True):
        h = activate(linear(h, weight, bias), activation)
    return h


def same_or_stacked(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The tensors as one [K, ...] tensor: a broadcast view where they are one tensor, else a stacked copy."""
    if all(t is tensors[0] for t in tensors):
        return tensors[0].unsqueeze(0).expand(len(tensors), *tensors[0].shape)
    return torch.stack(tensors)

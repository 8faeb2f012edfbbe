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

from .model import InitialWeights, SplitHeadModel
from .noise import sample_noise
from .plan import ResolvedConfig
from .seeding import derived_seed, forked_rng, set_seed


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
    stacked = [torch.stack(column).double() for column in columns if column]  # exact: float32 and counts
    flat = torch.cat(stacked).tolist() if stacked else []
    out, start = [], 0
    for column in columns:
        out.append(flat[start:start + len(column)])
        start += len(column)
    return out


def majority_rate(labels: torch.Tensor) -> float:
    """Accuracy of always answering the split's most frequent class (MNIST's test split: 1135 / 10000)."""
    return float(torch.bincount(labels.reshape(-1).cpu()).max().item()) / max(1, labels.numel())


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
        name = (*rc.eval_noise_key(moment), str(device))
        batches = shared.get(name, lambda: eval_noise(rc, device, moment))
        targets = shared.get(("aux", body_key(teacher), layer_key(teacher, "aux_head"), name),
                             lambda: [teacher.aux_head(h) for h in shared.features(teacher, name, batches)])
        pairs = zip((student.aux_head(h) for h in shared.features(student, name, batches)), targets, strict=True)
    (losses,) = host_values([F.mse_loss(output, target) for output, target in pairs])
    return float(sum(losses) / len(losses)) if losses else float("nan")

"""Counting what a piece of code asks of the device: operator calls that do work (kernels on a GPU), as a
TorchDispatchMode sees them; views and metadata calls are not counted. For bench/bench_step.py and the
tests that pin a fused step's kernel count."""

from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode

# calls that launch no kernel: allocation without a fill, metadata, aliasing
NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "alias",
             "_unsafe_view", "lift_fresh", "is_same_size", "_has_compatible_shallow_copy_type", "set_", "resize_"}


class OpCounter(TorchDispatchMode):
    """``with OpCounter() as counter: ...``: ``counter.ops`` kernel ops, ``counter.calls`` dispatcher calls,
    ``counter.names`` the count of each kernel op by name."""

    def __init__(self):
        super().__init__()
        self.ops = self.calls = 0
        self.names: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        name = func.overloadpacket.__name__
        if not func.is_view and name not in NO_KERNEL:
            self.ops += 1
            self.names[name] = self.names.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


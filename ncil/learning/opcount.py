"""Host syncs and aten ops of a training step, counted on any device (the CPU included).

A CUDA kernel launch returns at once; the host waits for the device only when it needs a value or a
shape that the device computes. ``StepCounter`` sees every aten op that reaches the dispatcher below
autograd (forward, backward, optimiser: a ``TorchDispatchMode``) plus the Python-level tensor reads
(a ``TorchFunctionMode``), and counts as a sync:

* ``_local_scalar_dense``: ``item()``, ``float()``, ``int()``, ``bool()`` of a tensor;
* ops whose output shape depends on the data: ``nonzero``, ``masked_select``, ``unique`` (all forms),
  indexing or ``index_put`` with a boolean mask, ``repeat_interleave`` without ``output_size``,
  ``bincount``; and ``equal`` (a Python bool);
* ``tolist()``, ``numpy()`` and ``cpu()`` of a tensor, and device-to-host copies
  (``_to_copy`` / ``copy_`` from a CUDA tensor to the CPU) or copies from pageable host memory to CUDA.

On the CPU host and device are one, so a value the code made on the host (a tensor built from Python
data, ``torch.tensor(...)``: ``aten.lift_fresh``, and what is computed from such tensors alone, e.g.
Adam's step counter) is told apart from the device's: reading it is no sync, on a GPU either.
Copies between host and device cannot be seen on the CPU (they are no-ops there); on a GPU
``torch.cuda.set_sync_debug_mode`` catches them (tests/test_gpu.py).

``count_training_steps`` runs a callable that trains (``ncil.learning.training.train_task``) under the counter and
returns the counts per training step: the ops between the end of one step's ``EpochProgress.step``
and the end of the next, so the first step of every epoch (the epoch's set-up, Adam's state) and the
per-epoch reads in ``end_epoch`` are left out.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import weakref
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# Ops whose output shape or a host value depends on the device's data.
DATA_DEPENDENT_OPS = frozenset({
    "nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_dim", "unique_consecutive",
    "unique_dim_consecutive", "bincount", "equal", "_local_scalar_dense",
})
HOST_FACTORIES = frozenset({"lift_fresh", "lift_fresh_copy"})  # a tensor from Python data: made on the host
VIEW_OPS = frozenset({"view", "_unsafe_view", "reshape", "as_strided", "t", "transpose", "permute", "unsqueeze",
                      "squeeze", "expand", "select", "slice", "detach", "alias", "unbind", "split",
                      "split_with_sizes", "chunk", "narrow", "diagonal", "view_as", "expand_as", "_reshape_alias"})
_TENSOR_READS = {torch.Tensor.tolist: "tolist", torch.Tensor.numpy: "numpy", torch.Tensor.cpu: "cpu"}


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _caller() -> str:
    """file:line of the innermost frame in the ncil package (where a sync comes from)."""
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if f"{os.sep}ncil{os.sep}" in path and not path.endswith("opcount.py"):
            return f"{path[path.rindex(os.sep + 'ncil' + os.sep) + 1:]}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


def _bool_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


@dataclass
class StepCounter:
    """Counts (see the module doc); ``active`` switches counting on and off."""

    active: bool = True
    ops: collections.Counter = field(default_factory=collections.Counter)  # aten op name -> calls
    syncs: collections.Counter = field(default_factory=collections.Counter)  # sync kind -> occurrences
    sites: collections.Counter = field(default_factory=collections.Counter)  # "kind at file:line" -> occurrences

    def __post_init__(self):
        self.host: dict[int, weakref.ref] = {}  # id -> tensor made on the host (see the module doc)

    def is_host(self, t: torch.Tensor) -> bool:
        ref = self.host.get(id(t))
        return ref is not None and ref() is t

    def add_host(self, t: torch.Tensor) -> None:
        self.host[id(t)] = weakref.ref(t)  # a stale id is told apart by ``ref() is t``

    def sync_kind(self, name: str, args, kwargs, inputs: list[torch.Tensor]) -> str | None:
        """The kind of sync op ``name`` is with these arguments, or None."""
        if name == "_local_scalar_dense":
            return None if all(self.is_host(t) for t in inputs) else name
        if name in DATA_DEPENDENT_OPS:
            return name
        if name in ("index", "index_put", "index_put_", "_index_put_impl_") and _bool_index(args[1] if len(args) > 1 else None):
            return f"{name}[bool mask]"
        if name == "repeat_interleave" and args and isinstance(args[0], torch.Tensor) and kwargs.get("output_size") is None:
            return "repeat_interleave without output_size"
        if name in ("_to_copy", "copy_") and len(inputs) >= 1:
            src = inputs[1] if name == "copy_" else inputs[0]
            dst_cpu = (inputs[0].device.type == "cpu") if name == "copy_" else (str(kwargs.get("device", src.device)).startswith("cpu"))
            if src.device.type == "cuda" and dst_cpu:
                return "device-to-host copy"
            if src.device.type == "cpu" and not dst_cpu and not src.is_pinned():
                return "copy from pageable host memory"
        return None

    def record(self, name: str, args, kwargs, out) -> None:
        inputs = _tensors((args, kwargs))
        if self.active:
            self.ops[name] += 1
            kind = self.sync_kind(name, args, kwargs, inputs)
            if kind:
                self.add_sync(kind)
        if name in HOST_FACTORIES or (inputs and all(self.is_host(t) for t in inputs)):
            for t in _tensors(out):
                self.add_host(t)

    def record_read(self, name: str, tensor: torch.Tensor) -> None:
        if self.active and not self.is_host(tensor) and tensor.device.type in ("cpu", "cuda"):
            self.add_sync(f"{name}()")

    def add_sync(self, kind: str) -> None:
        self.syncs[kind] += 1
        self.sites[f"{kind} at {_caller()}"] += 1

    @contextlib.contextmanager
    def counting(self):
        counter = self

        class Dispatch(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                counter.record(func.overloadpacket.__name__, args, kwargs, out)
                return out

        class Function(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                name = _TENSOR_READS.get(func)
                if name is not None and args and isinstance(args[0], torch.Tensor):
                    counter.record_read(name, args[0])
                return func(*args, **kwargs)

        with Function(), Dispatch():
            yield self


@dataclass
class StepCounts:
    """Counts per training step over ``steps`` counted steps."""

    steps: int
    ops: collections.Counter
    syncs: collections.Counter
    sites: collections.Counter

    @property
    def ops_per_step(self) -> float:
        return sum(self.ops.values()) / max(self.steps, 1)

    @property
    def compute_ops_per_step(self) -> float:
        """Ops that are not views (a view launches no kernel)."""
        return sum(n for op, n in self.ops.items() if op not in VIEW_OPS) / max(self.steps, 1)

    @property
    def syncs_per_step(self) -> float:
        return sum(self.syncs.values()) / max(self.steps, 1)

    def summary(self) -> dict:
        return {"steps_counted": self.steps, "syncs_per_step": self.syncs_per_step,
                "aten_ops_per_step": self.ops_per_step, "compute_ops_per_step": self.compute_ops_per_step,
                "syncs_by_kind": {k: v / max(self.steps, 1) for k, v in sorted(self.syncs.items())},
                "syncs_by_site": {k: v / max(self.steps, 1) for k, v in sorted(self.sites.items())}}


def count_training_steps(train_fn, *args, **kwargs):
    """Run ``train_fn(*args, **kwargs)`` (a training loop that builds ``EpochProgress`` through the name its module
    imported: ``ncil.learning.training``'s, or the EFC, AdaGauss, DyTox loops') under a ``StepCounter``; return (its
    result, ``StepCounts``) of the steps after each epoch's first."""
    import sys

    from ncil.pipeline.progress import EpochProgress

    counter = StepCounter(active=False)
    steps = [0]

    class Counted(EpochProgress):
        def start_epoch(self):
            counter.active = False
            return super().start_epoch()

        def step(self, loss, batch, correct):
            super().step(loss, batch, correct)
            steps[0] += counter.active  # the window that ends here was one whole step
            counter.active = True

        def end_epoch(self, epoch, lr):
            counter.active = False
            return super().end_epoch(epoch, lr)

    loops = [m for name, m in list(sys.modules.items())
             if name.startswith("ncil.") and getattr(m, "EpochProgress", None) is EpochProgress]
    for module in loops:
        module.EpochProgress = Counted
    try:
        with counter.counting():
            result = train_fn(*args, **kwargs)
    finally:
        for module in loops:
            module.EpochProgress = EpochProgress
    return result, StepCounts(steps[0], counter.ops, counter.syncs, counter.sites)

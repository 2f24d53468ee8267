"""``bench``: the cost of one training step of a method against the floor of its backbone work.

The floor is what any distillation method on the same rows must pay: the student's forward and
backward pass plus the old model's forward pass (method-spec 5.3: one old-model pass per step).
Everything a method adds on top (rotation, PKS, PR, prototype augmentation, the optimiser step)
shows up as the ratio step / floor.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn.functional as F

from ncil.config import MethodConfig, Params
from ncil.methods.baseline import rotate_batch
from ncil.methods.objective import OldKnowledge, rotations, step_loss
from ncil.models.network import build_network


def _median_seconds(fn, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_step(p: Params, method: MethodConfig, batch_size: int, steps: int = 20, warmup: int = 3,
               n_old: int = 4, n_new: int = 2, seed: int = 0) -> dict:
    """Median seconds of one full training step and of its floor, on synthetic images."""
    torch.manual_seed(seed)
    torch.set_num_threads(p.runtime.threads)
    rot = rotations(method)
    net = build_network(p.model, p.dataset.channels, rot * (n_old + n_new), method.backbone)
    teacher = copy.deepcopy(net).eval().requires_grad_(False)
    dim = net.feature_dim
    old = OldKnowledge(teacher=teacher, centers=torch.randn(n_old, dim), radius=0.5)
    pr_centers = torch.cat([old.centers, torch.randn(n_new, dim)])
    size = p.dataset.image_size
    x = torch.randn(batch_size, p.dataset.channels, size, size)
    y = torch.randint(n_old, n_old + n_new, (batch_size,))
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    net.train()

    def full_step():
        loss, *_ = step_loss(net, x, y, method, old, pr_centers, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    xr, yr = rotate_batch(x, y) if method.rotation else (x, y)  # the same rows the step trains on

    def floor():
        logits = net(xr)["logits"]
        net.zero_grad(set_to_none=True)
        F.cross_entropy(logits, yr).backward()
        with torch.no_grad():
            teacher.backbone(xr)

    step_s = _median_seconds(full_step, steps, warmup)
    floor_s = _median_seconds(floor, steps, warmup)
    return {
        "rows": int(xr.shape[0]),
        "step_ms": 1e3 * step_s,
        "floor_ms": 1e3 * floor_s,
        "ratio": step_s / floor_s,
        "images_per_s": batch_size / step_s,
        "threads": p.runtime.threads,
        "parameters": sum(q.numel() for q in net.backbone.parameters()),
    }

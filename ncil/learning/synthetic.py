"""One incremental task of synthetic data, for ``ncil.learning.training.train_task`` with no data set on disk.

``scripts/gpu_check.py`` and ``tests/test_gpu.py`` time and check the real training code on the paper
preset's shapes (CIFAR-100 32x32, TinyImageNet 64x64, ImageNet-Subset 224x224) on a machine that has
no data set: a task t = 1 whose previous task's checkpoint is a freshly initialised network (the
teacher) and whose stored class centers are random. The images are uint8 with a class-dependent
mean colour plus noise, so a few epochs teach even a tiny model to tell the classes apart (the
autocast-versus-fp32 check compares the predictions of a trained model, not of a coin toss).
"""

from __future__ import annotations

import numpy as np
import torch

from ncil.data import arrays
from ncil.learning.training import TaskJob
from ncil.methods.objective import rotations
from ncil.models.network import build_network
from ncil.pipeline.config import Params


def images(n_classes: int, per_class: int, size: int, channels: int, seed: int, noise_seed: int | None = None) -> arrays.Split:
    """uint8 images (n_classes * per_class, size, size, channels), class c's mean colour its own (drawn
    from ``seed``), plus Gaussian noise (from ``noise_seed``, default ``seed``), and labels 0..n_classes-1
    grouped by class. The same ``seed`` with another ``noise_seed`` gives held-out images of the same classes."""
    means = np.random.default_rng(seed).integers(40, 216, size=(n_classes, 1, 1, channels))  # one colour per class
    labels = np.repeat(np.arange(n_classes, dtype=np.int64), per_class)
    rng = np.random.default_rng([seed, seed if noise_seed is None else noise_seed])
    noise = 24.0 * rng.standard_normal((len(labels), size, size, channels), dtype=np.float32)
    pixels = np.clip(means[labels] + noise, 0, 255).astype(np.uint8)
    return arrays.Split(images=pixels, labels=labels)


def incremental_task(p: Params, method_name: str, n_old: int, n_new: int, per_class: int, seed: int = 1):
    """(job, train split, previous checkpoint payload, previous centers) of task 1 with ``n_old`` old
    and ``n_new`` new classes, ``per_class`` training images of each new class.

    Classes are numbered in learning order (class order 0..n_old+n_new-1): task 0 holds 0..n_old-1.
    """
    method = p.method[method_name]
    order = list(range(n_old + n_new))
    tasks = [order[:n_old], order[n_old:]]
    new = images(n_new, per_class, p.dataset.image_size, p.dataset.channels, seed)
    split = arrays.Split(images=new.images, labels=new.labels + n_old)  # original ids n_old..n_old+n_new-1
    torch.manual_seed(seed)
    teacher = build_network(p.model, p.dataset.channels, rotations(method) * n_old, method.backbone)
    previous = {"model": {k: v.detach().clone() for k, v in teacher.state_dict().items()}}
    g = np.random.default_rng(seed + 1)
    dim = teacher.feature_dim
    centers = {
        "class_id": np.arange(n_old, dtype=np.int32),
        "original_class": np.arange(n_old, dtype=np.int32),
        "task": np.zeros(n_old, np.int32),
        "n_samples": np.full(n_old, per_class, np.int64),
        "spread": g.uniform(0.5, 1.5, n_old).astype(np.float32),
        "center": g.normal(0.0, 1.0, (n_old, dim)).astype(np.float32),
    }
    job = TaskJob(task=1, seed=seed, class_order=order, tasks=tasks, method_name=method_name, method=method,
                  identity={"dataset": f"synthetic-{p.dataset.name}", "method": method_name, "seed": seed, "task": 1})
    return job, split, previous, centers


def held_out(p: Params, n_old: int, n_new: int, per_class: int, seed: int = 1) -> arrays.Split:
    """Held-out images of the new classes of ``incremental_task(p, ..., seed)``: their colours, fresh noise."""
    new = images(n_new, per_class, p.dataset.image_size, p.dataset.channels, seed, noise_seed=seed + 1000)
    return arrays.Split(images=new.images, labels=new.labels + n_old)

"""One task's training, readable top to bottom (design.md 5; method-spec 5.2).

``train_task`` takes loaded objects (config, split, data, the previous task's checkpoint and
centers) and returns the new checkpoint payload and centers rows; only the CLI touches disk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ncil import runtime
from ncil.config import MethodConfig, Params, to_dict
from ncil.data import arrays
from ncil.data.scenario import remap_labels
from ncil.methods.prototypes import class_centers
from ncil.models.network import IncrementalNet, build_network, load_network
from ncil.progress import EpochProgress


@dataclass(frozen=True)
class TaskJob:
    """What one training job needs to know about its place in the grid."""

    task: int
    seed: int
    class_order: list[int]  # original class ids in learning order
    tasks: list[list[int]]  # original class ids of tasks 0..task (at least)
    method_name: str  # incremental method (or the base recipe for task 0)
    method: MethodConfig | None  # None for task 0 (the base recipe is shared)
    identity: dict  # who this job is: dataset, run, seed, ... (stored in the checkpoint)


def run_config_snapshot(p: Params, job: TaskJob) -> dict:
    """The resolved configuration a checkpoint carries (everything that shaped its weights)."""
    snapshot = {
        "preset": p.preset,
        "order_seed": p.order_seed,
        "seed": job.seed,
        "dataset": to_dict(p.dataset),
        "model": to_dict(p.model),
        "train": to_dict(p.train),
        "runtime": {"threads": p.runtime.threads},
        "method": job.method_name,
    }
    if job.method is not None:
        snapshot["method_config"] = to_dict(job.method)
    return snapshot


def training_classes(job: TaskJob) -> list[int]:
    """Original ids of the classes whose training images task ``job.task`` may use."""
    if job.method is not None and job.method.train_on == "seen":
        return [c for t in job.tasks[: job.task + 1] for c in t]
    return list(job.tasks[job.task])


def train_task(
    p: Params,
    job: TaskJob,
    train_split: arrays.Split,
    previous: dict | None,
    previous_centers: dict | None,
    logger: logging.Logger,
) -> tuple[dict, dict]:
    """Train task ``job.task``; return (checkpoint payload, centers rows)."""
    device, generator = runtime.setup(p.runtime, job.seed, job.task)
    label_map = remap_labels(job.class_order)
    seen = [c for t in job.tasks[: job.task + 1] for c in t]
    n_seen = len(seen)

    # 1. The model: fresh for task 0; otherwise task t-1's weights with the head grown to n_seen.
    in_chans = p.dataset.channels
    if job.task == 0:
        net = build_network(p.model, in_chans, n_seen)
    else:
        net = load_network(p.model, in_chans, previous["model"])
        net.head.grow(n_seen)
    net.to(device)

    # 2. The task's training data, normalised, on the device: images (N, C, H, W), labels (N,).
    _, images, labels = arrays.select_classes(train_split, training_classes(job), label_map)
    x_all = arrays.to_tensor(images, p.dataset.mean, p.dataset.std).to(device)
    y_all = torch.from_numpy(labels).to(device)

    # 3. Optimiser and schedule: a fresh Adam and StepLR per task (method-spec 5.1).
    optimizer = torch.optim.Adam(net.parameters(), lr=p.train.lr, weight_decay=p.train.weight_decay)
    scheduler = (
        torch.optim.lr_scheduler.StepLR(optimizer, step_size=p.train.lr_step, gamma=p.train.lr_gamma)
        if p.train.lr_step
        else None
    )

    # 4. Epochs.
    steps = -(-len(y_all) // p.train.batch_size)
    progress = EpochProgress(logger, f"task {job.task}", p.train.epochs, steps)
    history = []
    for epoch in range(p.train.epochs):
        net.train()
        progress.start_epoch()
        for idx in arrays.batches(len(y_all), p.train.batch_size, torch_cpu_generator(generator)):
            idx = idx.to(device)
            x = arrays.augment(x_all[idx], p.dataset.crop_padding, p.dataset.hflip, generator)  # (B, C, H, W)
            y = y_all[idx]  # (B,)
            with runtime.autocast(device):
                logits = net(x)["logits"]  # (B, n_seen)
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            progress.step(loss.item(), len(y), int((logits.argmax(1) == y).sum()))
        history.append(progress.end_epoch(epoch, optimizer.param_groups[0]["lr"]))
        if scheduler is not None:
            scheduler.step()
    progress.close()

    # 5. Class centers of the new classes (eval mode, no augmentation), appended to task t-1's rows.
    new_classes = job.tasks[job.task]
    _, new_images, new_labels = arrays.select_classes(train_split, new_classes, label_map)
    features = extract_features(net, arrays.to_tensor(new_images, p.dataset.mean, p.dataset.std),
                                p.train.eval_batch_size, device)
    class_ids, centers = class_centers(features, torch.from_numpy(new_labels))
    counts = np.bincount(new_labels, minlength=n_seen)
    inverse = {label: original for original, label in label_map.items()}
    rows = empty_centers(net.feature_dim) if previous_centers is None else dict(previous_centers)
    rows = {
        "class_id": np.concatenate([rows["class_id"], class_ids.numpy()]).astype(np.int32),
        "original_class": np.concatenate([rows["original_class"], [inverse[int(c)] for c in class_ids]]).astype(np.int32),
        "task": np.concatenate([rows["task"], np.full(len(class_ids), job.task)]).astype(np.int32),
        "n_samples": np.concatenate([rows["n_samples"], counts[class_ids.numpy()]]).astype(np.int64),
        "center": np.concatenate([rows["center"], centers.numpy()]).astype(np.float32),
    }

    payload = {
        "task": job.task,
        "identity": job.identity,
        "class_order": list(job.class_order),
        "seen_classes": seen,
        "n_outputs": n_seen,
        "head_layout": "plain",  # one logit per class
        "config": run_config_snapshot(p, job),
        "history": history_without_timing(history),
        "model": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
    }
    return payload, rows


def torch_cpu_generator(generator: torch.Generator) -> torch.Generator:
    """The data order is drawn on the CPU (randperm on CUDA takes no CUDA generator everywhere)."""
    if generator.device.type == "cpu":
        return generator
    cpu = torch.Generator()
    cpu.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device)))
    return cpu


def history_without_timing(history: list[dict]) -> list[dict]:
    """Per-epoch loss and accuracy; images/s is left out so checkpoints stay bit-identical."""
    return [{k: v for k, v in h.items() if k != "images_per_s"} for h in history]


def empty_centers(dim: int) -> dict:
    return {
        "class_id": np.zeros(0, np.int32),
        "original_class": np.zeros(0, np.int32),
        "task": np.zeros(0, np.int32),
        "n_samples": np.zeros(0, np.int64),
        "center": np.zeros((0, dim), np.float32),
    }


@torch.no_grad()
def extract_features(net: IncrementalNet, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """[CLS] features (N, D) in eval mode, on the CPU."""
    net.eval()
    out = []
    for start in range(0, len(x), batch_size):
        with runtime.autocast(device):
            cls, _ = net.backbone(x[start : start + batch_size].to(device))
        out.append(cls.float().cpu())
    return torch.cat(out) if out else torch.zeros(0, net.feature_dim)

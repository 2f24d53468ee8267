"""FeCAM in the pipeline (Goswami et al., NeurIPS 2023; docs/efcil.md, "FeCAM" and "Integration plan" 1, 2, 5).

Task 0 trains the backbone with the method's base recipe (``ncil.learning.training.train_task``); every task
then writes the statistics of its own classes (``task_statistics``): the mean raw feature and the unbiased
covariance of the Tukey-transformed features of the task's training images, under the test transform (no
augmentation), through the frozen backbone. Tasks t >= 1 train nothing (``frozen_task``): the checkpoint's
weights are task t-1's, bit for bit, and only the new classes' images are read. Evaluation
(``ncil.learning.prediction.predict_fecam``, which imports nothing of training) shrinks and normalises the stored
covariances and predicts with the Mahalanobis classifier of ``ncil.methods.fecam``.

The statistics are per task (each file holds the classes its task introduced): with a frozen backbone an old
class's statistics never change, so a later file repeating them would only copy bytes (1 MiB per class at
D = 512).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ncil.data import arrays
from ncil.data.scenario import remap_labels
from ncil.learning import runtime
from ncil.methods import fecam
from ncil.methods.prototypes import class_centers
from ncil.models.network import IncrementalNet, load_network
from ncil.pipeline.config import Params


def class_statistics_rows(features: torch.Tensor, labels: np.ndarray, label_map: dict, task: int,
                          lam: float) -> dict:
    """The statistics rows of the classes in ``labels`` (pure): features (N, D) raw, labels (N,) incremental.

    Per class (ascending id): ``mean`` the mean raw feature (D,), ``covariance`` the unbiased covariance of
    ``fecam.tukey(features, lam)`` (D, D), made exactly symmetric, both computed in float64; ``n_samples``.
    """
    x = features.double()
    classes = sorted({int(c) for c in labels.tolist()})
    labels_t = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    means, _ = fecam.class_statistics(x, labels_t, classes)  # (C, D)
    _, covs = fecam.class_statistics(fecam.tukey(x, lam), labels_t, classes)  # (C, D, D)
    covs = (covs + covs.transpose(1, 2)) / 2  # the matmul's rounding need not be symmetric
    original = {label: o for o, label in label_map.items()}
    counts = np.bincount(labels, minlength=max(classes) + 1)
    return {
        "class_id": np.asarray(classes, np.int32),
        "original_class": np.asarray([original[c] for c in classes], np.int32),
        "task": np.full(len(classes), task, np.int32),
        "n_samples": counts[classes].astype(np.int64),
        "mean": means.float().numpy(),
        "covariance": covs.float().numpy(),
    }


def new_class_features(p: Params, job, train_split: arrays.Split, net: IncrementalNet, device: torch.device
                       ) -> tuple[torch.Tensor, np.ndarray]:
    """Features (N, D) of task ``job.task``'s own classes' training images (test transform: normalisation only)
    and their incremental labels (N,). Only those classes' images are selected: no earlier task's image is read."""
    from ncil.learning.training import extract_features

    _, images, labels = arrays.select_classes(train_split, list(job.tasks[job.task]), remap_labels(job.class_order))
    x = arrays.to_uint8_tensor(images)  # (N, C, H, W) uint8
    features = extract_features(net, x, p.train.eval_batch_size, device, p.dataset.mean, p.dataset.std)
    return features, labels


def task_statistics(p: Params, job, train_split: arrays.Split, payload: dict) -> dict:
    """The statistics rows of task ``job.task``'s classes under the checkpoint ``payload``'s backbone."""
    device = runtime.resolve_device(p.runtime.device)
    torch.set_num_threads(p.runtime.threads)
    net = load_network(p.model, p.dataset.channels, payload["model"], job.method.backbone).to(device)
    features, labels = new_class_features(p, job, train_split, net, device)
    return class_statistics_rows(features, labels, remap_labels(job.class_order), job.task, job.method.fecam_tukey)


def frozen_task(p: Params, job, train_split: arrays.Split, previous: dict, previous_centers: dict,
                logger: logging.Logger) -> tuple[dict, dict, dict]:
    """Task t >= 1 of FeCAM: no training. Returns (checkpoint payload, centers rows, statistics rows).

    The payload's weights are task t-1's tensors unchanged (the backbone is frozen and the head, unused by the
    FeCAM classifier, is not grown); the centers table gains the new classes' mean features, as every method's.
    """
    from ncil.learning.training import append_centers, history_without_timing, run_config_snapshot

    device, _ = runtime.setup(p.runtime, job.seed, job.task)
    net = load_network(p.model, p.dataset.channels, previous["model"], job.method.backbone).to(device)
    net.eval().requires_grad_(False)
    features, labels = new_class_features(p, job, train_split, net, device)
    logger.info("task %d: FeCAM, frozen backbone: statistics of %d classes from %d training images", job.task,
                len(job.tasks[job.task]), len(labels))
    label_map = remap_labels(job.class_order)
    seen = [c for t in job.tasks[: job.task + 1] for c in t]
    class_ids, centers = class_centers(features, torch.from_numpy(labels))
    rows = append_centers(previous_centers, features, labels, class_ids, centers, label_map, len(seen), job.task)
    payload = {
        "task": job.task,
        "identity": job.identity,
        "class_order": list(job.class_order),
        "seen_classes": seen,
        "n_outputs": int(previous["n_outputs"]),
        "rotations": int(previous.get("rotations", 1)),
        "head_layout": previous.get("head_layout", "plain"),
        "backbone": job.method.backbone,
        "config": run_config_snapshot(p, job, device.type),
        "history": history_without_timing([]),
        "model": {k: v.clone() for k, v in previous["model"].items()},  # task t-1's tensors, bit for bit
    }
    statistics = class_statistics_rows(features, labels, label_map, job.task, job.method.fecam_tukey)
    return payload, rows, statistics

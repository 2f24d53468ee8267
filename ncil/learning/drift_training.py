"""Drift compensation in the pipeline: LDC, SDC and ADC as options of one method (classifier ncm; docs/efcil.md,
"LDC, SDC, ADC in the pipeline").

Every task trains the backbone with the paper step (``ncil.learning.training.train_task``: task 0 cross-entropy,
tasks t >= 1 cross-entropy on the new classes plus feature distillation to F_{t-1}); the class prototypes are the
centers every method writes (mean features of the task's training images, un-augmented). After task t >= 1 the old
classes' prototypes, task t-1's centers, are moved by the drift estimate of ``method.drift`` (``compensate``), from
the current task's training images only (un-augmented, normalised) seen through F_{t-1} (the previous checkpoint)
and F_t (the task's trained network); the new classes' prototypes are the new model's centers. The centers table
and the checkpoint (``prototypes``, (K_seen, D) float32, row = incremental label) both hold the result, so task t+1
reads the moved prototypes and evaluation (``ncil.learning.prediction.predict_ncm``) reads them with the weights.
No image of an earlier task is read: only task t's classes are selected from the training split.

The math is ``ncil.methods.drift`` (pure); this module only gathers features and networks.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ncil.data import arrays, augment
from ncil.data.scenario import remap_labels
from ncil.learning import runtime
from ncil.methods import drift
from ncil.models.network import IncrementalNet, load_network
from ncil.pipeline.config import MethodConfig, Params

SDC_CHUNK = 16  # prototypes per kernel evaluation: sdc_weights holds a (chunk, N, D) difference tensor


def ldc_seed(seed: int, task: int) -> int:
    """The seed of LDC's projector (initialisation and sample order) for task ``task`` of run ``seed``: a fifth
    stream of ``runtime.derive_seeds``, apart from the four ``runtime.setup`` draws the task's training from."""
    return runtime.derive_seeds(seed, task, 5)[4]


def batched(net: IncrementalNet, batch_size: int):
    """The callable images (N, C, H, W) float -> [CLS] features (N, D) that ``ncil.methods.drift`` takes, in
    batches of ``batch_size`` (gradients flow through it when the caller enables them)."""
    def features(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([net.backbone(x[i:i + batch_size])[0] for i in range(0, len(x), batch_size)])
    return features


def compensate(method: MethodConfig, prototypes: torch.Tensor, old_features: torch.Tensor,
               new_features: torch.Tensor, *, old_model=None, new_model=None, images: torch.Tensor | None = None,
               batch_size: int = drift.LDC_BATCH, generator: torch.Generator | None = None) -> torch.Tensor:
    """The old prototypes (C, D) moved by ``method.drift``'s estimate (pure given its inputs).

    ``old_features``/``new_features`` (N, D): the current task's un-augmented training images under F_{t-1} / F_t.
    sdc: ``drift.sdc_compensate`` with ``method.sdc_sigma`` (in chunks of prototypes: the same rows);
    ldc: ``drift.fit_projector_adam`` (``ldc_epochs``, ``ldc_lr``, ``batch_size``, ``generator``), then
    ``drift.apply_projector``; adc: ``drift.adc_compensate`` on ``images`` (N, C, H, W) normalised, with the
    callables ``old_model``/``new_model`` and the clamp bounds the images' global minimum and maximum
    (``adc_alpha``, ``adc_steps``, ``adc_samples``); none: unchanged.
    """
    if method.drift == "none" or len(prototypes) == 0:
        return prototypes.clone()
    if method.drift == "sdc":
        return torch.cat([drift.sdc_compensate(old_features, new_features, prototypes[i:i + SDC_CHUNK],
                                               sigma=method.sdc_sigma)
                          for i in range(0, len(prototypes), SDC_CHUNK)])
    if method.drift == "ldc":
        projector = drift.fit_projector_adam(old_features, new_features, epochs=method.ldc_epochs, lr=method.ldc_lr,
                                             batch_size=batch_size, generator=generator)  # (D, D)
        return drift.apply_projector(projector, prototypes)
    if method.drift == "adc":
        if images is None or old_model is None or new_model is None:
            raise ValueError("drift adc: needs the current images and both networks")
        return drift.adc_compensate(old_model, new_model, images, prototypes, alpha=method.adc_alpha,
                                    steps=method.adc_steps, k=method.adc_samples, x_min=images.min().item(),
                                    x_max=images.max().item(), grad_norm="batch")
    raise ValueError(f"drift: expected one of none, sdc, adc, ldc, got {method.drift!r}")


def current_images(p: Params, job, train_split: arrays.Split) -> torch.Tensor:
    """Task ``job.task``'s own classes' training images, uint8 (N, C, H, W): no earlier task's image is selected."""
    _, images, _ = arrays.select_classes(train_split, list(job.tasks[job.task]), remap_labels(job.class_order))
    return arrays.to_uint8_tensor(images)


def drift_step(p: Params, job, train_split: arrays.Split, previous: dict, payload: dict,
               old_prototypes: torch.Tensor, logger: logging.Logger) -> torch.Tensor:
    """Task t's drift estimate applied to ``old_prototypes`` (K_old, D): F_{t-1} is ``previous``'s network, F_t
    ``payload``'s; both in eval mode, fp32, on the task's device."""
    from ncil.learning.training import extract_features

    device = runtime.resolve_device(p.runtime.device)
    method = job.method
    nets = [load_network(p.model, p.dataset.channels, ckpt["model"], method.backbone).to(device)
            for ckpt in (previous, payload)]
    for net in nets:
        net.eval().requires_grad_(False)
    x = current_images(p, job, train_split)  # (N, C, H, W) uint8
    old_features, new_features = (extract_features(net, x, p.train.eval_batch_size, device, p.dataset.mean,
                                                   p.dataset.std).to(device) for net in nets)  # (N, D) each
    prototypes = old_prototypes.to(device)
    images = None
    if method.drift == "adc":
        images = augment.normalize(augment.to_unit(x.to(device)), p.dataset.mean, p.dataset.std)  # (N, C, H, W)
    generator = torch.Generator().manual_seed(ldc_seed(job.seed, job.task))
    moved = compensate(method, prototypes, old_features, new_features,
                       old_model=batched(nets[0], p.train.eval_batch_size),
                       new_model=batched(nets[1], p.train.eval_batch_size), images=images,
                       batch_size=p.train.batch_size, generator=generator)
    shift = torch.linalg.vector_norm(moved - prototypes, dim=1)
    logger.info("task %d: drift %s moved %d old prototypes (mean shift %.4f) from %d current images", job.task,
                method.drift, len(prototypes), float(shift.mean()) if len(shift) else 0.0, len(x))
    return moved.float().cpu()


def ncm_task(p: Params, job, train_split: arrays.Split, previous: dict | None, previous_centers: dict | None,
             logger: logging.Logger, plan=None) -> tuple[dict, dict]:
    """One task of a classifier-ncm method: (checkpoint payload, centers rows), the payload with ``prototypes``.

    Training (and resuming: ``plan``) is ``train_task``'s; the drift step after it reads nothing random but LDC's
    seeded generator, so a resumed task gives the same bytes.
    """
    from ncil.learning.training import train_task

    payload, rows = train_task(p, job, train_split, previous, previous_centers, logger, plan)
    n_old = 0 if previous_centers is None else len(previous_centers["class_id"])
    if n_old and job.method.drift != "none":
        old = torch.from_numpy(np.ascontiguousarray(previous_centers["center"]))  # (K_old, D) task t-1's prototypes
        moved = drift_step(p, job, train_split, previous, payload, old, logger)
        rows = {**rows, "center": np.concatenate([moved.numpy(), rows["center"][n_old:]]).astype(np.float32)}
    payload = {**payload, "prototypes": torch.from_numpy(rows["center"].copy())}  # (K_seen, D), row = label
    return payload, rows

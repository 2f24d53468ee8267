"""AdaGauss in the pipeline (Rypesc et al., NeurIPS 2024; docs/efcil.md, "AdaGauss" and "AdaGauss in the
pipeline"). The pure tensor cores are ``ncil.methods.adagauss``; this module gathers networks, images and features.

The network is the method's backbone (ResNet-18 as the paper, or the ViT) with a linear bottleneck to the latent
space of S = ``adagauss_latent`` dimensions; the checkpoint stores it as an ordinary ``IncrementalNet`` whose head
*is* that bottleneck (S rows), so ``net(x)["logits"]`` is the latent vector (B, S). Every task t:

1. trains the backbone and the bottleneck with CE over a fresh linear head of the task's own classes (labels
   shifted to 0..C-1, as the released criterion), plus from task 1 on the projected distillation to F_{t-1}
   through a fresh MLP distiller (weight ``adagauss_lambda``), plus the anti-collapse loss on the batch's latent
   vectors (weight ``adagauss_alpha``, clamp ``adagauss_beta``): ``adagauss.training_loss``. Only full batches
   are drawn (the released loaders drop the last, smaller one: the anti-collapse loss needs B > S); the first
   1 % of the epochs train the heads on detached features (released: ``epoch < int(nepochs * 0.01)``); gradients
   are clipped to norm 1;
2. from task 1 on, trains an adapter (the distiller's shape) from F_{t-1}'s latent space to F_t's on the task's
   augmented images for epochs // 2 epochs (``adagauss.adapter_loss``; SGD lr ``adagauss_adapter_lr``, momentum
   0.9, weight decay 5e-4, steps at epochs 30/60/90) and carries every old class's Gaussian through it with
   ``adagauss_samples`` samples (``adagauss.adapt_gaussians``);
3. adds the new classes' Gaussians: mean and unbiased covariance of their training images' latent vectors (test
   transform), and of their horizontal flips where the data set flips (``dataset.hflip``; the released code
   always flips).

The checkpoint's ``adagauss`` entry holds every seen class's ``mean`` (K, S) float32 (= the centers table's
``center`` column) and ``covariance`` (K, S, S) float64; evaluation's Bayes classifier reads them
(``ncil.learning.prediction.predict_bayes``). No image of an earlier task is selected.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ncil.data import arrays, augment
from ncil.data.scenario import remap_labels
from ncil.learning import optim, resume, runtime
from ncil.methods import adagauss
from ncil.methods.fecam import class_statistics
from ncil.models.network import IncrementalNet, build_network, load_network
from ncil.pipeline.config import Params
from ncil.pipeline.progress import EpochProgress

EPOCH_COUNTERS = ("seen", "loss_sum", "correct")  # EpochProgress's running sums inside an epoch
CLIP_NORM = 1.0  # released clip_grad_norm_(..., 1) on the backbone's and the adapter's steps
DETACHED_FRACTION = 0.01  # the first int(epochs * 0.01) epochs train on detached features (released)
ADAPTER_MOMENTUM = 0.9  # released get_adapter_optimizer
ADAPTER_WEIGHT_DECAY = 5e-4
ADAPTER_MILESTONES = (30, 60, 90)


class AdaGaussModel(nn.Module):
    """What task t trains: the network (backbone + bottleneck), the task's own class head (S -> C) and, from task 1
    on, the distiller (S -> 32 S -> S). One module, so a resumable state holds all three."""

    def __init__(self, net: IncrementalNet, n_classes: int, latent: int, distiller: bool):
        super().__init__()
        self.net = net
        self.task_head = nn.Linear(latent, n_classes)
        self.distiller = adagauss.mlp(latent) if distiller else None

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["logits"]  # (B, S): the head is the bottleneck


def check_previous_state(previous: dict, n_old: int, latent: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Task t-1's stored Gaussians (means (K_old, S), covariances (K_old, S, S)), checked (pure)."""
    state = previous.get("adagauss")
    if not isinstance(state, dict) or "mean" not in state or "covariance" not in state:
        raise ValueError("previous checkpoint: adagauss: missing (expected the class means and covariances: task t-1 "
                         "was not trained by a method with adagauss: true)")
    means, covs = state["mean"], state["covariance"]
    if tuple(means.shape) != (n_old, latent) or tuple(covs.shape) != (n_old, latent, latent):
        raise ValueError(f"previous checkpoint: adagauss: expected mean ({n_old}, {latent}) and covariance ({n_old}, "
                         f"{latent}, {latent}), found {tuple(means.shape)} and {tuple(covs.shape)}")
    return means, covs


def full_batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device) -> list[torch.Tensor]:
    """The epoch's shuffled index batches with the last, smaller one dropped (released ``drop_last=True``)."""
    from ncil.learning.training import epoch_order, torch_cpu_generator

    return [b for b in epoch_order(n, batch_size, torch_cpu_generator(generator), device) if len(b) == batch_size]


@torch.no_grad()
def latent_features(net: IncrementalNet, x: torch.Tensor, batch_size: int, device: torch.device, mean, std,
                    flip: bool = False) -> torch.Tensor:
    """Latent vectors (N, S) of uint8 images (N, C, H, W) under the test transform, on the CPU in float32; with
    ``flip`` the horizontal flips' follow, (2N, S) (released ``create_distributions``)."""
    net.eval()
    out, flipped = [], []
    for start in range(0, len(x), batch_size):
        batch = augment.normalize(augment.to_unit(x[start:start + batch_size].to(device)), mean, std)
        out.append(net(batch)["logits"].float().cpu())
        if flip:
            flipped.append(net(torch.flip(batch, dims=(3,)))["logits"].float().cpu())
    rows = out + flipped
    return torch.cat(rows) if rows else torch.zeros(0, net.head.out_features)


def gaussians(features: torch.Tensor, labels: torch.Tensor, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (C, S) and unbiased covariance (C, S, S) per class of ``classes``, in float64, covariances made exactly
    symmetric (pure)."""
    means, covs = class_statistics(features.double(), labels, classes)
    return means, (covs + covs.transpose(1, 2)) / 2


def train_adapter(adapter: nn.Module, old_net: IncrementalNet, new_net: IncrementalNet, x_all: torch.Tensor, p: Params,
                  epochs: int, lr: float, alpha: float, beta: float, generator: torch.Generator) -> list[float]:
    """The adapter F_{t-1} -> F_t on the task's augmented images (both networks frozen, eval mode): full shuffled
    batches, ``adagauss.adapter_loss``, gradients clipped to norm 1, SGD with the released schedule. Returns the mean
    loss of each epoch."""
    optimizer = torch.optim.SGD(adapter.parameters(), lr=lr, momentum=ADAPTER_MOMENTUM,
                                weight_decay=ADAPTER_WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(ADAPTER_MILESTONES), gamma=0.1)
    spec = augment.spec_from_dataset(p.dataset)
    losses = []
    for _ in range(epochs):
        adapter.train()
        total, seen = torch.zeros((), dtype=torch.float64, device=x_all.device), 0
        for idx in full_batches(len(x_all), p.train.batch_size, generator, x_all.device):
            x = augment.augment_batch(x_all.index_select(0, idx), spec, generator)
            with torch.no_grad():
                new, old = new_net(x)["logits"], old_net(x)["logits"]
            loss = adagauss.adapter_loss(adapter, old, new, alpha=alpha, beta=beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(adapter.parameters(), CLIP_NORM)
            optimizer.step()
            total += loss.detach().double() * len(idx)
            seen += len(idx)
        scheduler.step()
        losses.append(float(total / max(seen, 1)))
    adapter.eval()
    return losses


def adapted(adapter: nn.Module, means: torch.Tensor, covs: torch.Tensor, n_samples: int,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The old classes' Gaussians through the adapter (float32 sampling as released), returned in float64 with the
    covariances made exactly symmetric; a covariance that is not positive definite is refused naming its class."""
    device = next(adapter.parameters()).device
    for c in range(len(covs)):  # MultivariateNormal's check, with the class named
        if torch.linalg.cholesky_ex(covs[c].float())[1] != 0:
            raise ValueError(f"adagauss: the stored covariance of class {c} is not positive definite in float32 (its "
                             f"latent vectors collapsed): it cannot be sampled")
    new_means, new_covs = adagauss.adapt_gaussians(adapter, means.float().to(device), covs.float().to(device),
                                                   n_samples=n_samples, generator=generator)
    new_covs = new_covs.double().cpu()
    return new_means.double().cpu(), (new_covs + new_covs.transpose(1, 2)) / 2


def train_adagauss_task(p: Params, job, train_split: arrays.Split, previous: dict | None,
                        previous_centers: dict | None, logger: logging.Logger,
                        plan: resume.Plan | None = None) -> tuple[dict, dict]:
    """One task of AdaGauss; returns (checkpoint payload, centers rows) as ``training.train_task``."""
    from ncil.learning.training import (append_centers, empty_centers, example_image, history_without_timing,
                                        run_config_snapshot)

    method = job.method
    plan = plan or resume.Plan()
    latent = method.adagauss_latent
    batch_size = p.train.batch_size
    if batch_size <= latent:
        raise ValueError(f"method {job.method_name}: the anti-collapse loss needs a batch larger than the latent "
                         f"space: expected train.batch_size > adagauss_latent ({latent}), got {batch_size}")
    device, generator = runtime.setup(p.runtime, job.seed, job.task)
    label_map = remap_labels(job.class_order)
    seen = [c for t in job.tasks[: job.task + 1] for c in t]
    n_seen, n_old = len(seen), len(seen) - len(job.tasks[job.task])

    # 1. The network (fresh for task 0, else task t-1's), the task head, the distiller; the frozen F_{t-1}.
    if job.task == 0:
        net = build_network(p.model, p.dataset.channels, latent, method.backbone)
        means_prev = covs_prev = teacher = None
    else:
        net = load_network(p.model, p.dataset.channels, previous["model"], method.backbone)
        if net.head.out_features != latent:
            raise ValueError(f"previous checkpoint: model: head.weight: expected the bottleneck to {latent} latent "
                             f"dimensions, found {net.head.out_features} rows")
        means_prev, covs_prev = check_previous_state(previous, n_old, latent)
        teacher = load_network(p.model, p.dataset.channels, previous["model"], method.backbone).to(device)
        teacher.eval().requires_grad_(False)
    model = AdaGaussModel(net, n_seen - n_old, latent, distiller=job.task > 0).to(device)
    runtime.maybe_compile(model.net.backbone, p.runtime.compile, example_image(p, device))

    # 2. The task's own images (uint8 on the device) and labels 0..C-1 of the task head.
    _, images, labels = arrays.select_classes(train_split, list(job.tasks[job.task]), label_map)
    x_all = arrays.to_uint8_tensor(images).to(device)
    del images
    y_all = torch.from_numpy(labels).to(device) - n_old
    steps = len(y_all) // batch_size
    if steps == 0:
        raise ValueError(f"method {job.method_name}: task {job.task} has {len(y_all)} training images, fewer than one "
                         f"full batch (train.batch_size {batch_size})")
    spec = augment.spec_from_dataset(p.dataset)

    # 3. The grid's recipe for this task over everything trained (network, task head, distiller).
    recipe = optim.task_recipe(p.train, job.task)
    trained = list(model.parameters())
    optimizer, scheduler = optim.build_optimizer(trained, recipe)
    detached_epochs = int(recipe.epochs * DETACHED_FRACTION)
    progress = EpochProgress(logger, f"task {job.task}", recipe.epochs, steps)
    history: list[dict] = []
    st, start = plan.state, resume.Position(0, 0)
    if st is not None:
        history, start = resume.restore(plan, st, model, optimizer, scheduler, generator, device, recipe.epochs, steps)
        logger.info("task %d: resuming from %s after %s", job.task, plan.path,
                    resume.describe_position(start.epoch, start.step, steps))

    def save(position, epoch_generator, counters):
        plan.save(resume.capture(position, model, optimizer, scheduler, generator, epoch_generator, device, None,
                                 history, {"steps_per_epoch": steps, **(counters or {})}))

    stop = resume.stopper(plan, save, steps, job.task)
    if plan.stop_requested():
        raise resume.Preempted(start.epoch, start.step, steps, job.task, saved=st is not None)
    for epoch in range(start.epoch, recipe.epochs):
        inside = st is not None and epoch == start.epoch and start.step > 0
        model.train()
        progress.start_epoch()
        if inside:
            generator.set_state(st["random"]["data_epoch_start"])
        epoch_generator = generator.get_state()
        order = full_batches(len(y_all), batch_size, generator, device)
        first = 0
        if inside:
            generator.set_state(st["random"]["data"])
            progress.seen, progress.loss_sum, progress.correct = (st["counters"][k] for k in EPOCH_COUNTERS)
            first = start.step
        for step in range(first, steps):
            idx = order[step]
            x = augment.augment_batch(x_all.index_select(0, idx), spec, generator)  # (B, C, H, W)
            y = y_all[idx]  # (B,) 0..C-1
            features = model.latent(x)  # (B, S)
            if epoch < detached_epochs:
                features = features.detach()
            logits = model.task_head(features)  # (B, C)
            old_features = None
            if teacher is not None:
                with torch.no_grad():
                    old_features = teacher(x)["logits"]  # (B, S)
            loss = adagauss.training_loss(F.cross_entropy(logits, y), features, old_features, model.distiller,
                                          lamb=method.adagauss_lambda, alpha=method.adagauss_alpha,
                                          beta=method.adagauss_beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, CLIP_NORM)
            optimizer.step()
            progress.step(loss.detach(), len(y), (logits.argmax(1) == y).sum())
            if step + 1 < steps and plan.stop_requested():
                stop(resume.Position(epoch, step + 1), epoch_generator,
                     {k: getattr(progress, k) for k in EPOCH_COUNTERS})
        history.append(progress.end_epoch(epoch, optimizer.param_groups[0]["lr"]))
        if scheduler is not None:
            scheduler.step()
        resume.after_epoch(plan, save, stop, epoch + 1, recipe.epochs, generator)
    progress.close()
    net.eval()

    # 4. The old classes' Gaussians through the adapter (tasks t >= 1), from a stream of their own.
    adapter_history: list[float] = []
    old_means = old_covs = torch.zeros(0)
    if teacher is not None:
        seed = runtime.derive_seeds(job.seed, job.task, 5)[4]
        torch.manual_seed(seed)  # the adapter's initialisation
        adapter = adagauss.mlp(latent).to(device)
        adapter_generator = torch.Generator(device=device).manual_seed(seed)
        adapter_history = train_adapter(adapter, teacher, net, x_all, p, recipe.epochs // 2,
                                        method.adagauss_adapter_lr, method.adagauss_alpha, method.adagauss_beta,
                                        adapter_generator)
        old_means, old_covs = adapted(adapter, means_prev, covs_prev, method.adagauss_samples,
                                      torch.Generator().manual_seed(seed))
        logger.info("task %d: adapter trained %d epochs (last loss %.4f); %d old Gaussians adapted (mean shift %.4f)",
                    job.task, len(adapter_history), adapter_history[-1] if adapter_history else float("nan"), n_old,
                    float(torch.linalg.vector_norm(old_means - means_prev.double(), dim=1).mean()))

    # 5. The new classes' Gaussians (test transform, and flips where the data set flips).
    x_cpu = x_all.cpu()
    features = latent_features(net, x_cpu, p.train.eval_batch_size, device, p.dataset.mean, p.dataset.std)
    new_labels = torch.from_numpy(labels.astype(np.int64))
    class_ids = torch.unique(new_labels, sorted=True)
    with_flips = features
    flip_labels = new_labels
    if p.dataset.hflip:
        with_flips = latent_features(net, x_cpu, p.train.eval_batch_size, device, p.dataset.mean, p.dataset.std,
                                     flip=True)
        flip_labels = torch.cat([new_labels, new_labels])
    new_means, new_covs = gaussians(with_flips, flip_labels, class_ids.tolist())
    old_rows = (empty_centers(latent) if previous_centers is None
                else {**previous_centers, "center": old_means.float().numpy()})  # old rows: the adapted means
    rows = append_centers(old_rows, features, labels, class_ids, new_means.float(), label_map, n_seen, job.task)
    covs = torch.cat([old_covs.reshape(-1, latent, latent).double(), new_covs])  # (K, S, S)

    payload = {
        "task": job.task,
        "identity": job.identity,
        "class_order": list(job.class_order),
        "seen_classes": seen,
        "n_outputs": latent,
        "rotations": 1,
        "head_layout": "plain",
        "backbone": method.backbone,
        "config": run_config_snapshot(p, job, device.type),
        "history": history_without_timing(history),
        **({"adapter_history": adapter_history} if adapter_history else {}),
        "model": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
        "adagauss": {"mean": torch.from_numpy(rows["center"].copy()), "covariance": covs},
    }
    return payload, rows

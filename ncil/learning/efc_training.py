"""EFC++ (and EFC) in the pipeline (Magistri et al., ICLR 2024 and arXiv 2503.10439; docs/efcil.md, "EFC and
EFC++" and "EFC++ in the pipeline"). The pure tensor cores are ``ncil.methods.efc``.

Every task of a method with ``efc: true`` leaves in its checkpoint (``payload["efc"]``) what the next task needs,
so no task ever reads an earlier task's images:

* ``efm`` (D, D): the empirical feature matrix of the task's model (all its class heads) over the task's
  training images;
* ``covariance`` (K, D, D): every seen class's feature covariance (unbiased), in class-id order; the class
  prototypes (means) are the centers table's ``center`` column, whose SHA-256 the checkpoint records.

Task 0 is the base recipe's ordinary training (``ncil.learning.training.train_task``, PASS's self-rotation on the
ResNet-18 as the released code) followed by ``task_zero_state``. A task t >= 1 (``train_efc_task``):

1. the backbone and a new head for the task's classes train on the task's images with
   CE(new head) + L_EFM(f_t(x), f_{t-1}(x); E_{t-1}) (``efc.efm_penalty``); the old heads stay as they were
   (EFC++), or, with ``efc_old_classes: pr_ace`` (EFC), all heads also train on PR-ACE's replayed rows;
   BatchNorm statistics stay frozen (eval mode), as in the released code;
2. the old prototypes move by the EFM-weighted drift of the task's images between f_{t-1} and f_t
   (``efc.efm_drift`` with E_{t-1}); the new classes' means and covariances are added;
3. EFC++: the heads alone are re-balanced (``rebalance_heads``) on the task's features and Gaussian samples of
   every old class, as many as the class had training images (``rebalance_data``);
4. E_t of the final model over the task's images.

Features for steps 2-4 are the test transform's (normalisation only), computed once.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ncil.data import arrays, augment
from ncil.data.scenario import remap_labels
from ncil.learning import optim, resume, runtime
from ncil.methods import efc
from ncil.methods.fecam import class_statistics
from ncil.methods.prototypes import class_centers
from ncil.models.head import GrowingHead
from ncil.models.network import IncrementalNet, load_network
from ncil.pipeline.config import MethodConfig, Params
from ncil.pipeline.progress import EpochProgress

EPOCH_COUNTERS = ("seen", "loss_sum", "correct")  # EpochProgress's running sums inside an epoch
REBALANCE_MOMENTUM = 0.9  # EFC++ re-balancing SGD (released --balanced_* defaults; docs/efcil.md)
REBALANCE_WEIGHT_DECAY = 5e-4


# --- Pure parts ------------------------------------------------------------------------------------------------


def plain_head_state(state: dict, rotations: int) -> dict:
    """A checkpoint's model state with a rotation head (``rotations`` columns per class, class c's unrotated
    score in column rotations * c) reduced to the class columns (pure): rows 0, r, 2r, ... of the head."""
    if rotations == 1:
        return dict(state)
    return {**state, "head.weight": state["head.weight"][::rotations].clone(),
            "head.bias": state["head.bias"][::rotations].clone()}


def class_covariances(features: torch.Tensor, labels: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Unbiased covariance (C, D, D) of features (N, D) per class of ``classes`` (in that order), computed in
    float64 and made exactly symmetric."""
    _, covs = class_statistics(features.double(), labels, classes)
    return (covs + covs.transpose(1, 2)) / 2


def rebalance_data(features: torch.Tensor, labels: torch.Tensor, means: torch.Tensor, covs: torch.Tensor,
                   counts, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """EFC++'s re-balancing set (pure but for ``generator``): the current features (N, D) with their labels (N,),
    then ``counts[c]`` samples of N(means[c], covs[c] + 1e-5 I) for every old class c (label c), float32.

    The Gaussians are drawn in float64 (a covariance of fewer samples than dimensions is singular before the
    jitter; its Cholesky factor in float32 can fail)."""
    sampled, sampled_labels = efc.sample_gaussians(means.double(), covs.double(), counts, generator=generator)
    return (torch.cat([features.float(), sampled.float()]),
            torch.cat([labels.long(), sampled_labels]))


def rebalance_heads(head: nn.Module, features: torch.Tensor, labels: torch.Tensor, epochs: int,
                    generator: torch.Generator, batch_size: int = efc.REBALANCE_BATCH,
                    lr: float = efc.REBALANCE_LR) -> list[float]:
    """Train ``head`` (a linear layer over all seen classes) alone on features (N, D) and labels (N,) with
    cross-entropy: SGD (momentum 0.9, weight decay 5e-4), shuffled batches of ``batch_size`` drawn from
    ``generator``. Returns the mean loss of each epoch."""
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=REBALANCE_MOMENTUM,
                                weight_decay=REBALANCE_WEIGHT_DECAY)
    losses = []
    for _ in range(epochs):
        total = torch.zeros((), dtype=torch.float64)
        for idx in arrays.batches(len(labels), batch_size, generator):
            loss = F.cross_entropy(head(features[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach().double() * len(idx)
        losses.append(float(total / max(len(labels), 1)))
    return losses


def freeze_batch_norm(module: nn.Module) -> None:
    """Put every BatchNorm layer of ``module`` in eval mode (running statistics used, not updated)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class EfcModel(nn.Module):
    """The trained part of task t >= 1: the backbone, the old classes' head rows and the new classes' head."""

    def __init__(self, net: IncrementalNet, n_old: int, n_new: int):
        super().__init__()
        self.backbone = net.backbone
        self.old_head = GrowingHead(net.feature_dim)
        with torch.no_grad():
            self.old_head.weight = nn.Parameter(net.head.weight.detach()[:n_old].clone())  # (K_old, D)
            self.old_head.bias = nn.Parameter(net.head.bias.detach()[:n_old].clone())
        self.new_head = GrowingHead(net.feature_dim, n_new)  # fresh rows, as the growing head's

    def merged_head(self) -> GrowingHead:
        head = GrowingHead(self.old_head.in_features)
        head.weight = nn.Parameter(torch.cat([self.old_head.weight.detach(), self.new_head.weight.detach()]))
        head.bias = nn.Parameter(torch.cat([self.old_head.bias.detach(), self.new_head.bias.detach()]))
        return head


# --- Task 0 -------------------------------------------------------------------------------------------------


def task_zero_state(p: Params, job, train_split: arrays.Split, payload: dict) -> dict:
    """What task 1 needs from task 0 (``payload``: its trained checkpoint): E_0 of the class heads (the rotation
    head's unrotated columns) and the base classes' covariances, over task 0's training images (test transform)."""
    device = runtime.resolve_device(p.runtime.device)
    torch.set_num_threads(p.runtime.threads)
    state = plain_head_state(payload["model"], int(payload.get("rotations", 1)))
    net = load_network(p.model, p.dataset.channels, state, job.method.backbone).to(device)
    features, labels = _task_features(p, job, train_split, net, device)
    classes = sorted({int(c) for c in labels.tolist()})
    return {
        "efm": _efm(features, net.head),
        "covariance": class_covariances(features, labels, classes).float(),
    }


# --- Tasks t >= 1 -------------------------------------------------------------------------------------------


def train_efc_task(p: Params, job, train_split: arrays.Split, previous: dict | None, previous_centers: dict | None,
                   logger: logging.Logger, plan: resume.Plan | None = None) -> tuple[dict, dict]:
    """One task of an EFC method; returns (checkpoint payload, centers rows) as ``training.train_task``."""
    from ncil.learning import training

    if job.task == 0:
        payload, rows = training.train_task(p, job, train_split, None, None, logger, plan)
        return {**payload, "efc": task_zero_state(p, job, train_split, payload)}, rows
    return _incremental_task(p, job, train_split, previous, previous_centers, logger, plan or resume.Plan())


def check_previous_state(previous: dict, previous_centers: dict, n_old: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Task t-1's stored EFC state (E (D, D), covariances (K_old, D, D)), checked against its centers (pure)."""
    state = previous.get("efc")
    if not isinstance(state, dict) or "efm" not in state or "covariance" not in state:
        raise ValueError("previous checkpoint: efc: missing (expected E and the class covariances: task t-1 was not "
                         "trained by a method with efc: true)")
    efm, covs = state["efm"], state["covariance"]
    if tuple(efm.shape) != (dim, dim) or tuple(covs.shape) != (n_old, dim, dim):
        raise ValueError(f"previous checkpoint: efc: expected efm ({dim}, {dim}) and covariance ({n_old}, {dim}, {dim}), "
                         f"found {tuple(efm.shape)} and {tuple(covs.shape)}")
    if len(previous_centers["class_id"]) != n_old or list(previous_centers["class_id"]) != list(range(n_old)):
        raise ValueError(f"previous centers: class_id: expected 0..{n_old - 1}, found {list(previous_centers['class_id'])}")
    return efm, covs


def _incremental_task(p: Params, job, train_split, previous: dict, previous_centers: dict, logger, plan) -> tuple[dict, dict]:
    from ncil.learning.training import (append_centers, epoch_order, example_image, history_without_timing,
                                        run_config_snapshot, torch_cpu_generator)

    method: MethodConfig = job.method
    device, generator = runtime.setup(p.runtime, job.seed, job.task)
    label_map = remap_labels(job.class_order)
    seen = [c for t in job.tasks[: job.task + 1] for c in t]
    n_seen, n_old = len(seen), len(seen) - len(job.tasks[job.task])
    n_new = n_seen - n_old

    # 1. Task t-1's model (class columns only) twice: the student and the frozen teacher F_{t-1}; its EFC state.
    state = plain_head_state(previous["model"], int(previous.get("rotations", 1)))
    net = load_network(p.model, p.dataset.channels, state, method.backbone)
    efm_prev, covs_prev = check_previous_state(previous, previous_centers, n_old, net.feature_dim)
    model = EfcModel(net, n_old, n_new).to(device)
    teacher = load_network(p.model, p.dataset.channels, state, method.backbone).to(device)
    teacher.eval().requires_grad_(False)
    runtime.maybe_compile(model.backbone, p.runtime.compile, example_image(p, device))
    efm_prev = efm_prev.to(device)
    pr_ace = method.efc_old_classes == "pr_ace"
    if pr_ace:  # PR-ACE's Gaussian prototypes of the old classes (stored means and covariances)
        means_prev = torch.from_numpy(previous_centers["center"]).double().to(device)
        chol = torch.linalg.cholesky(covs_prev.double() + efc.GAUSSIAN_JITTER * torch.eye(net.feature_dim,
                                                                                          dtype=torch.float64)).to(device)

    # 2. The task's images (uint8 on the device); labels shifted to the new head's columns in the step.
    _, images, labels = arrays.select_classes(train_split, list(job.tasks[job.task]), label_map)
    x_all = arrays.to_uint8_tensor(images).to(device)
    del images
    y_all = torch.from_numpy(labels).to(device)
    augment_spec = augment.spec_from_dataset(p.dataset)

    # 3. Optimiser: the grid's recipe for tasks t >= 1 (efc_lr, constant, where set), over the backbone and the new
    #    head (EFC++) or all heads (EFC).
    recipe = optim.task_recipe(p.train, job.task)
    if method.efc_lr > 0:  # the released incremental tasks' Adam learning rate (1e-4), not the grid's train.lr
        recipe = dataclasses.replace(recipe, lr=method.efc_lr, step=0, milestones=())
    trained_params = list(model.backbone.parameters()) + list(model.new_head.parameters())
    if pr_ace:
        trained_params += list(model.old_head.parameters())
    else:
        model.old_head.requires_grad_(False)
    optimizer, scheduler = optim.build_optimizer(trained_params, recipe)

    steps = -(-len(y_all) // p.train.batch_size)
    progress = EpochProgress(logger, f"task {job.task}", recipe.epochs, steps)
    history: list[dict] = []
    replay = None  # PR-ACE: the previous step's current features (detached) and labels
    st, start = plan.state, resume.Position(0, 0)
    if st is not None:
        history, start = resume.restore(plan, st, model, optimizer, scheduler, generator, device, recipe.epochs, steps)
        if st["pr_centers"] is not None:
            replay = (st["pr_centers"]["features"].to(device), st["pr_centers"]["labels"].to(device))
        logger.info("task %d: resuming from %s after %s", job.task, plan.path,
                    resume.describe_position(start.epoch, start.step, steps))

    def save(position, epoch_generator, counters):
        kept = None if replay is None else {"features": replay[0], "labels": replay[1]}
        plan.save(resume.capture(position, model, optimizer, scheduler, generator, epoch_generator, device, kept,
                                 history, {"steps_per_epoch": steps, **(counters or {})}))

    stop = resume.stopper(plan, save, steps, job.task)
    if plan.stop_requested():
        raise resume.Preempted(start.epoch, start.step, steps, job.task, saved=st is not None)
    eye = torch.eye(net.feature_dim, device=device)
    for epoch in range(start.epoch, recipe.epochs):
        inside = st is not None and epoch == start.epoch and start.step > 0
        model.train()
        freeze_batch_norm(model.backbone)
        teacher.eval()
        progress.start_epoch()
        if inside:
            generator.set_state(st["random"]["data_epoch_start"])
        epoch_generator = generator.get_state()
        order = epoch_order(len(y_all), p.train.batch_size, torch_cpu_generator(generator), device)
        first = 0
        if inside:
            generator.set_state(st["random"]["data"])
            progress.seen, progress.loss_sum, progress.correct = (st["counters"][k] for k in EPOCH_COUNTERS)
            first = start.step
        for step in range(first, steps):
            idx = order[step]
            x = augment.augment_batch(x_all.index_select(0, idx), augment_spec, generator)  # (B, C, H, W)
            y = y_all[idx]  # (B,) incremental labels n_old..n_seen-1
            features, _ = model.backbone(x)  # (B, D)
            with torch.no_grad():
                old_features, _ = teacher.backbone(x)  # (B, D)
            logits = model.new_head(features)  # (B, K_new)
            loss = F.cross_entropy(logits, y - n_old) + efc.efm_penalty(features, old_features, efm_prev,
                                                                         method.efc_lambda, method.efc_damping)
            if pr_ace:
                loss = loss + _pr_ace_replay(model, replay, means_prev, chol, generator, device, eye)
                replay = (features.detach(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            progress.step(loss.detach(), len(y), (logits.argmax(1) + n_old == y).sum())
            if step + 1 < steps and plan.stop_requested():
                stop(resume.Position(epoch, step + 1), epoch_generator,
                     {k: getattr(progress, k) for k in EPOCH_COUNTERS})
        history.append(progress.end_epoch(epoch, optimizer.param_groups[0]["lr"]))
        if scheduler is not None:
            scheduler.step()
        resume.after_epoch(plan, save, stop, epoch + 1, recipe.epochs, generator)
    progress.close()

    # 4. After the task: features of the task's images under both models (test transform).
    net.backbone = model.backbone
    net.head = model.merged_head().to(device)
    net.eval()
    new_features, new_labels = _task_features(p, job, train_split, net, device)
    old_features, _ = _task_features(p, job, train_split, teacher, device)
    # The old prototypes move by the EFM-weighted drift (E_{t-1}); the new classes' rows follow them.
    prototypes = torch.from_numpy(np.ascontiguousarray(previous_centers["center"]))
    drift = efc.efm_drift(old_features.double(), new_features.double(), prototypes.double(), efm_prev.double().cpu(),
                          method.efc_sigma)
    moved = {**previous_centers, "center": (prototypes.double() + drift).float().numpy()}
    class_ids, centers = class_centers(new_features, new_labels)
    rows = append_centers(moved, new_features, new_labels.numpy(), class_ids, centers, label_map, n_seen, job.task)
    new_covs = class_covariances(new_features, new_labels, class_ids.tolist())
    covs = torch.cat([covs_prev.double(), new_covs])  # (K, D, D)

    # 5. EFC++: the heads alone, re-balanced on the task's features and Gaussians of every old class.
    rebalance_history = []
    if not pr_ace:
        rebalance_generator = torch.Generator().manual_seed(runtime.derive_seeds(job.seed, job.task, 5)[4])
        feats, labs = rebalance_data(new_features, new_labels, torch.from_numpy(rows["center"][:n_old]),
                                     covs[:n_old], rows["n_samples"][:n_old], rebalance_generator)
        head = net.head.cpu().train()
        rebalance_history = rebalance_heads(head, feats, labs, method.efc_rebalance_epochs, rebalance_generator)
        logger.info("task %d: heads re-balanced on %d current features and %d Gaussian samples of %d old classes, "
                    "%d epochs (last loss %.4f)", job.task, len(new_labels), len(labs) - len(new_labels), n_old,
                    method.efc_rebalance_epochs, rebalance_history[-1])
        net.head = head.to(device)
    net.eval()

    payload = {
        "task": job.task,
        "identity": job.identity,
        "class_order": list(job.class_order),
        "seen_classes": seen,
        "n_outputs": n_seen,
        "rotations": 1,
        "head_layout": "plain",
        "backbone": method.backbone,
        "config": run_config_snapshot(p, job, device.type),
        "history": history_without_timing(history),
        **({"rebalance_history": rebalance_history} if rebalance_history else {}),
        "model": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
        "efc": {"efm": _efm(new_features, net.head), "covariance": covs.float()},
    }
    return payload, rows


def _pr_ace_replay(model: EfcModel, replay, means: torch.Tensor, chol: torch.Tensor, generator: torch.Generator,
                   device, eye) -> torch.Tensor:
    """EFC's PR-ACE replay term: CE over all heads of PROTO_BATCH Gaussian samples of old classes (classes drawn
    uniformly) and of the previous step's current features (none on the task's first step). ``means`` and ``chol``
    are on the data generator's device (the task's), so the draws are used where they are made: no host copy."""
    n_old, d = means.shape
    classes = torch.randint(0, n_old, (efc.PROTO_BATCH,), generator=generator, device=generator.device)
    z = torch.randn(efc.PROTO_BATCH, d, generator=generator, device=generator.device).double()
    samples = means[classes] + torch.einsum("bde,be->bd", chol[classes], z)  # (P, D) float64, on the device
    rows, targets = samples.float().to(device), classes.to(device)
    if replay is not None:
        rows, targets = torch.cat([rows, replay[0]]), torch.cat([targets, replay[1]])
    logits = torch.cat([model.old_head(rows), model.new_head(rows)], dim=1)  # (P [+ B], K)
    return F.cross_entropy(logits, targets)


def _task_features(p: Params, job, train_split: arrays.Split, net: IncrementalNet, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, D) of task ``job.task``'s own training images (test transform) and their labels (N,); no
    earlier task's image is selected."""
    from ncil.learning.training import extract_features

    _, images, labels = arrays.select_classes(train_split, list(job.tasks[job.task]), remap_labels(job.class_order))
    features = extract_features(net, arrays.to_uint8_tensor(images), p.train.eval_batch_size, device, p.dataset.mean,
                                p.dataset.std)
    return features, torch.from_numpy(np.asarray(labels, dtype=np.int64))


def _efm(features: torch.Tensor, head: nn.Module) -> torch.Tensor:
    """E (D, D) float32 of the heads over features (N, D), computed in float64 and made exactly symmetric."""
    w, b = head.weight.detach().double().cpu(), head.bias.detach().double().cpu()
    e = efc.empirical_feature_matrix(features.double(), w, b)
    return ((e + e.T) / 2).float()

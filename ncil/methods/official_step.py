"""The `official` preset's training step: the released code's terms wired together (method-spec 2.2-2.5, 4, 5.2-5.4).

Like ``ncil.methods.objective`` for the `paper` preset, this module only routes tensors: every term is a
pure function of ``official``, ``contrastive``, ``mixup``, ``head_layout``, ``baseline`` and ``pks``.

One step of task t on a loader batch x (B images, standard view), x_strong (its strong view, 2.2), y (B,):

* X' = the 4B rotated standard views (2.3; row 4i + k, label 4y + k) followed by the mixup images (2.4;
  not rotated, no strong view); X_aug = the 4B rotated strong views.
* The current model on X' (train mode): f (B', d), M (B', N, d), z (B', n_outputs).
* The key encoder on X_aug: the current backbone's weights, no gradient, train mode, with its own BN
  running buffers (``key_features``; 4.2, 5.3). The main model's buffers are never touched by it.
* L_clf = CE(z / tau, Y') over every head column (4.1); lambda_con L_con (4.2) when ``contrastive`` > 0.
* For t >= 1: the frozen old model on X' (one pass, 5.3), lambda_fkd L_fkd (4.3), lambda_tr L_tr through the
  transfer layer T (4.4), lambda_proto L_proto (4.5, through sg(T), real columns), then, as the method has
  them, PKS in the chosen form (4.6) and the code-form PR: lambda_pr (L_off + 0.1 L_rest) (4.7).

Random draws of one step, in this order (after the loop's ``augment_batch`` and ``strong_view`` of the
batch, which draw first): from the run's generator, the mixup rounds (per round one ``randperm(B)`` and one
``rand(B, 2, alpha)`` for the Beta draws; ``mixup.mixup_batch``); the model's drop-path (torch's global RNG)
in the current model's forward, then in the key encoder's; for t >= 1 from the generator again, protoAug's
classes ``randint(0, K_old, (64,))`` and noise ``randn(64, d)`` (drawn whenever protoAug or the contrastive
loss is on: the same p~ serve both), then PR's split ``randperm(4B)``, its classes ``randint(0, K_old, (4B,))``
and its pairing ``randperm(4B)``. The released code draws protoAug from NumPy and the PR split from Python's
``random``; here every draw comes from the generator, so one seed fixes the step.

Static shapes (``static=True``; ``runtime.static_shapes``, issue 21): X' holds all R * B mixup candidates
(``mixup_batch(static=True)``: the same draws), so B' = 4B + R B every step and no count is read back. A
row mask m (B',) of 0/1 (1 for the 4B rotated rows and the kept candidates) makes every term over X' the
value of the compacted step: the current model's BatchNorm statistics over the kept rows
(``IncrementalNet.forward(row_mask=)``), L_clf, L_tr and L_pks as means over the kept rows
(``pks.masked_mean``), L_fkd as the Frobenius norm of the kept rows; the dropped rows get exactly zero
gradient. The old model runs in eval mode (row by row) and PR and the contrastive loss read the 4B rotated
rows only, so they need no mask. The returned targets hold ``DROPPED_TARGET`` (-1) on the dropped rows, so
a count of correct predictions, ``(logits.argmax(1) == targets).sum()``, and of rows, ``(targets >= 0).sum()``,
are the compacted step's. One difference remains: drop-path draws one number per row of X' from torch's
global RNG, so a static step spends R * B - M more of them and its kept rows see other drop-path masks
(the same distribution); with drop_path 0 (or in eval mode) the two forms agree up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ncil.methods.baseline import feature_distillation, rotate_batch
from ncil.methods.contrastive import contrastive_keys, supervised_contrastive
from ncil.methods.head_layout import HeadLayout
from ncil.methods.mixup import check_labels, mixup_batch
from ncil.methods.objective import OldKnowledge, rotations
from ncil.pipeline.config import MethodConfig
from ncil.methods.official import (
    PR_RESTORE_WEIGHT,
    classification_loss,
    offset_loss_official,
    pks_official,
    pr_offsets,
    pr_split_official,
    proto_aug_loss,
    restoration_draws,
    restoration_official,
    sample_proto_aug,
    transfer_loss,
)
from ncil.methods.pks import pks_loss


DROPPED_TARGET = -1  # static shapes: the returned target of a dropped mixup row (no head column)


def is_official(method: MethodConfig) -> bool:
    """Whether a method trains with this step (its preset is `official`); every other method uses ``objective``."""
    return method.preset == "official"


def head_layout(method: MethodConfig, n_old: int, n_new: int) -> HeadLayout:
    """The head's columns in task t: rotations x K_tot real columns, then C_t (C_t - 1) / 2 mixup ones (2.5)."""
    return HeadLayout(n_old, n_new, rotations(method), mixup=method.mixup_rounds > 0)


class TrainedModules(nn.Module):
    """What the optimiser trains in an official task: the network and the transfer layer T (5.1).

    Its ``state_dict`` (keys ``net.*`` and ``transfer.*``) is what a resumable state saves; the checkpoint
    stores the network alone, since T is recreated as the identity at every task start (3.4).
    """

    def __init__(self, net: nn.Module, transfer: nn.Linear):
        super().__init__()
        self.net = net
        self.transfer = transfer


def key_encoder_buffers(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The key encoder's own BN buffers, copies of the backbone's at the start of the task (4.2, 5.3).

    They are updated by every key-encoder pass and never read for an output (the key encoder runs in train
    mode, where BN normalises with the batch's statistics), so they only keep the main model's buffers out
    of its way.
    """
    return {name: b.detach().clone() for name, b in backbone.named_buffers()}


@torch.no_grad()
def key_features(backbone: nn.Module, x: torch.Tensor, buffers: dict[str, torch.Tensor]) -> torch.Tensor:
    """Key features E(X_aug) (R, d): the backbone's current weights, no gradient, train mode, ``buffers``
    as its BN running statistics (updated in place there; the backbone's own buffers stay as they are)."""
    training = backbone.training
    backbone.train()
    try:
        params = {name: p.detach() for name, p in backbone.named_parameters()}
        cls, _ = torch.func.functional_call(backbone, {**params, **buffers}, (x,))  # (R, d), (R, N, d)
    finally:
        backbone.train(training)
    return cls


@dataclass
class OfficialTask:
    """What the official step keeps for one task: the head layout, T, the key encoder's buffers, protoAug's size."""

    layout: HeadLayout
    transfer: nn.Linear  # T: identity at the task's start (3.4), trained when method.transfer > 0
    key_buffers: dict[str, torch.Tensor]  # the key encoder's BN running buffers (``key_encoder_buffers``)
    proto_batch: int = 64  # protoAug draws this many prototypes per step, whatever the batch (4.5)
    labels_checked: bool = False  # the task's labels were checked once (``check_task_labels``): no per-step check


def check_task_labels(method: MethodConfig, layout: HeadLayout, labels: torch.Tensor) -> bool:
    """Check a task's training labels (N,) once for mixup (``mixup.check_labels``; a sync); True when checked."""
    if method.mixup_rounds > 0:
        check_labels(labels, layout)
    return True


def official_step(
    net: nn.Module,
    x: torch.Tensor,
    x_strong: torch.Tensor,
    y: torch.Tensor,
    method: MethodConfig,
    task: OfficialTask,
    old: OldKnowledge | None,
    pr_centers: torch.Tensor | None,
    generator: torch.Generator,
    *,
    static: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Total loss of one batch -> (loss, terms, logits z (B', n_outputs), targets Y' (B',)); see the module doc.

    x, x_strong (B, C, H, W) normalised standard and strong views, y (B,) incremental labels of the task's
    classes. ``old`` is None in task 0; ``pr_centers`` (K_tot, d) the task's frozen PR centres (4.7), needed
    when ``method.pr > 0``. ``terms`` holds every weighted term by name: ce, con (task 0 and later), fkd,
    transfer, proto, pks, pr_offset, pr_restore (t >= 1, the ones the method has), each a detached 0-dim tensor
    on the device. ``static``: the static-shape form (module doc): X' has 4B + R B rows every step, and the
    targets hold ``DROPPED_TARGET`` on the dropped mixup rows.
    """
    layout, tau = task.layout, method.ce_temperature
    x4, y4 = rotate_batch(x, y)  # (4B, C, H, W), (4B,): row 4i + k, label 4y + k
    rows, targets = [x4], [y4]
    row_mask = None  # static shapes: (B',) 0/1, the rows that count
    if method.mixup_rounds > 0:
        mixed = mixup_batch(x, y, layout, generator, rounds=method.mixup_rounds,
                            validate=not task.labels_checked, static=static)  # (M or R B, C, H, W), (M or R B,)
        rows.append(mixed[0])
        targets.append(mixed[1].to(y4.device))
        if static:
            keep = mixed[2].to(y4.device)  # (R B,) bool
            row_mask = torch.cat([torch.ones_like(y4, dtype=x.dtype), keep.to(x.dtype)])  # (B',)
    xs, ys = torch.cat(rows), torch.cat(targets)  # X' (B', C, H, W), Y' (B',): the 4B valid rows first
    n_valid = x4.shape[0]
    out = net(xs) if row_mask is None else net(xs, row_mask=row_mask)
    f, patches, logits = out["cls"], out["patches"], out["logits"]  # (B', d), (B', N, d), (B', n_outputs)

    keys = None
    if method.contrastive > 0:
        strong4, _ = rotate_batch(x_strong, y)  # (4B, C, H, W), the same order as x4
        keys = key_features(net.backbone, strong4, task.key_buffers)  # (4B, d), no gradient

    if row_mask is None:
        terms: dict[str, torch.Tensor] = {"ce": F.cross_entropy(logits.float() / tau, ys)}
    else:
        terms = {"ce": classification_loss(logits.float(), ys, tau, row_mask)}
    incremental = old is not None and old.n_old > 0
    protos = proto_classes = None
    if incremental:
        with torch.no_grad():
            old_f, old_patches = old.teacher.backbone(xs)  # (B', d), (B', N, d): one old-model pass (5.3)
        if method.feature_kd > 0:
            terms["fkd"] = method.feature_kd * feature_distillation(f, old_f, row_mask)
        if method.transfer > 0:
            terms["transfer"] = method.transfer * transfer_loss(f, old_f, task.transfer, row_mask)
        if method.proto_aug > 0 or method.contrastive > 0:
            protos, proto_classes = sample_proto_aug(old.centers, old.radius, generator, task.proto_batch)  # (64, d)
        if method.proto_aug > 0:
            terms["proto"] = method.proto_aug * proto_aug_loss(
                net.head, task.transfer, protos.to(f.dtype), proto_classes, layout, tau)
        if method.pks > 0:
            if method.pks_form == "official":
                terms["pks"] = method.pks * pks_official(patches, old_patches, f, row_mask)
            else:
                terms["pks"] = method.pks * pks_loss(f, patches, old_f, old_patches, weighting=method.pks_weighting,
                                                     p=method.pks_p, detach_weights=method.pks_detach, row_mask=row_mask)
        if method.pr > 0:
            valid = ys[:n_valid]  # (4B,) the rotated rows' labels 4y + k
            new_off = pr_offsets(f[:n_valid], valid, pr_centers, layout.rotations)  # O^s (4B, d)
            old_off = pr_offsets(old_f[:n_valid], valid, pr_centers, layout.rotations)  # O^T (4B, d)
            first, second = pr_split_official(n_valid, generator)
            first, second = first.to(f.device), second.to(f.device)
            terms["pr_offset"] = method.pr * offset_loss_official(new_off[first], old_off[second])
            classes, perm = restoration_draws(n_valid, old.n_old, generator)
            terms["pr_restore"] = method.pr * PR_RESTORE_WEIGHT * restoration_official(
                net.head, pr_centers, new_off, classes, perm, layout)

    if method.contrastive > 0:
        key_f, key_y = contrastive_keys(keys, y4, protos, proto_classes, layout.rotations)  # raw p~, labels 4c
        terms["con"] = method.contrastive * supervised_contrastive(
            f[:n_valid], key_f, y4, key_y, method.contrastive_temperature)

    total = sum(terms.values())
    if row_mask is not None:
        ys = torch.where(row_mask > 0, ys, DROPPED_TARGET)  # (B',) the dropped rows count in no tally
    return total, {k: v.detach() for k, v in terms.items()}, logits, ys


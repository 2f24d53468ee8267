"""The training objective of one step: which loss terms a method uses, and how they combine.

Paper Eq. 7: L = L_CIL + lambda_pks L_pks + lambda_pr L_pr, on top of the paper's baseline (PASS's
rotation self-supervision, prototype augmentation and feature distillation; method-spec 2.3, 4.3, 4.5).
Every term is a pure function from ``pks``, ``prototypes`` and ``baseline``; this module only wires
tensors between them. Task 0 uses the cross-entropy alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ncil.methods.baseline import N_ROTATIONS, feature_distillation, rotate_batch
from ncil.methods.pks import pks_loss
from ncil.methods.prototypes import augment_prototypes, offset_loss, restore_prototypes, split_halves
from ncil.pipeline.config import MethodConfig


@dataclass
class OldKnowledge:
    """What task t may use of tasks 0..t-1: the frozen old model and the stored class centers."""

    teacher: torch.nn.Module | None  # F_{t-1}: eval mode, no gradients (None if the method needs none)
    centers: torch.Tensor  # (K_old, D) stored class centers, row = incremental label
    radius: float  # PASS protoAug radius r = sqrt(mean_c rho_c)

    @property
    def n_old(self) -> int:
        return self.centers.shape[0]


def rotations(method: MethodConfig) -> int:
    """Head columns per class: 4 with rotation self-supervision (column 4c + k), else 1."""
    return N_ROTATIONS if method.rotation else 1


def needs_teacher(method: MethodConfig) -> bool:
    return method.feature_kd > 0 or method.pks > 0 or method.pr > 0


def step_loss(
    net: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    method: MethodConfig,
    old: OldKnowledge | None,
    pr_centers: torch.Tensor | None,
    generator: torch.Generator,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Total loss of one batch x (B, C, H, W), y (B,) -> (loss, terms, logits, targets) of the real rows.

    ``old`` is None in task 0. ``pr_centers`` (K_tot, D) are the class centers mu of Eq. 4-5 (old
    classes: stored; new classes: from the model), needed when ``method.pr > 0``. ``terms`` maps each
    weighted term's name to its detached 0-dim tensor, left on the device (reading it is the caller's sync).
    """
    rot = rotations(method)
    if method.rotation:
        x, y = rotate_batch(x, y)  # (4B, C, H, W), (4B,): row 4i + k, label 4y + k
    out = net(x)  # cls (R, D), patches (R, N, D), logits (R, rot * K_tot)
    cls, logits = out["cls"], out["logits"]
    ce_logits, ce_targets = [logits], [y]
    terms: dict[str, torch.Tensor] = {}
    incremental = old is not None and old.n_old > 0
    if incremental and method.classifier == "ncm":
        # Drift compensation (docs/efcil.md): the head only trains the features; as the released LwF base learner,
        # the cross-entropy reads the current task's columns alone (targets y - K_old), never an old class's.
        ce_logits, ce_targets = [logits[:, rot * old.n_old:]], [y - rot * old.n_old]

    teacher_cls = teacher_patches = None
    if incremental and needs_teacher(method):
        with torch.no_grad():
            teacher_cls, teacher_patches = old.teacher.backbone(x)  # (R, D), (R, N, D)

    if incremental and method.feature_kd > 0:
        terms["fkd"] = method.feature_kd * feature_distillation(cls, teacher_cls)

    if incremental and method.proto_aug > 0:
        n_aug = x.shape[0] // rot  # one augmented prototype per image of the batch
        classes = torch.randint(0, old.n_old, (n_aug,), generator=generator, device=generator.device)
        protos = augment_prototypes(old.centers, classes, old.radius, generator)  # (n_aug, D)
        proto_logits = net.head(protos.to(cls.dtype))  # (n_aug, rot * K_tot)
        target = (classes * rot).to(y.device)
        terms["proto"] = method.proto_aug * F.cross_entropy(proto_logits / method.ce_temperature, target)

    if incremental and method.pks > 0:
        terms["pks"] = method.pks * pks_loss(
            cls, out["patches"], teacher_cls, teacher_patches,
            weighting=method.pks_weighting, p=method.pks_p, detach_weights=method.pks_detach,
        )

    if incremental and method.pr > 0:
        own = pr_centers[torch.div(y, rot, rounding_mode="floor")]  # (R, D): mu_y of each row's class
        first, second = split_halves(x.shape[0], generator)  # Eq. 4: S1 current model, S2 old model
        first, second = first.to(y.device), second.to(y.device)
        terms["pr"] = method.pr * offset_loss(cls[first] - own[first], teacher_cls[second] - own[second])
        # Eq. 5: an old class's center plus the offset of a randomly chosen current sample.
        old_classes = torch.randint(0, old.n_old, (x.shape[0],), generator=generator, device=generator.device)
        donors = torch.randperm(x.shape[0], generator=generator, device=generator.device).to(y.device)
        old_classes = old_classes.to(y.device)
        restored = restore_prototypes(pr_centers[old_classes], cls[donors], own[donors])  # (R, D)
        ce_logits.append(net.head(restored))  # Eq. 6: one CE over current samples and restored prototypes
        ce_targets.append(old_classes * rot)

    terms["ce"] = F.cross_entropy(torch.cat(ce_logits).float() / method.ce_temperature, torch.cat(ce_targets))
    total = sum(terms.values())
    return total, {k: v.detach() for k, v in terms.items()}, logits, y

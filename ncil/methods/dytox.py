"""DyTox's training objective and DyTox + PKS (docs/dytox.md, sections "Losses" and "DyTox + PKS").

Pure tensor functions. Shapes: B rows, K_old classes of the earlier tasks, C_t classes of the current
task, K_tot = K_old + C_t. Targets are class indices (B,) or, with MixUp (DyTox+), soft targets (B, K_tot).
Nothing here reads a tensor's value on the host: no ``.item()``, no data-dependent shapes.

DyTox (tasks t >= 2; task 1 has the classification term alone):

    L = (1 - alpha) L_clf + alpha L_kd + lambda_div L_div,     alpha = K_old / K_tot,  lambda_div = 0.1

* L_clf: binary cross-entropy on the sigmoid of all K_tot logits against one-hot targets, mean over B x K_tot
  (released ``bce_loss: true``).
* L_kd: tau^2 KL(softmax(z_old / tau) || softmax(z[:, :K_old] / tau)) on the old model's logits z_old,
  tau = 1; the released code reduces it with ``reduction="mean"``, a mean over the B x K_old elements
  (``kd_reduction="batchmean"``: the mean over rows, the KL proper).
* L_div: the same binary cross-entropy on the divergence head's |C_t| + 1 logits, the target being 0 for a
  row of an old class and 1 + (y - K_old) for a row of new class y.

DyTox + PKS (Table 4 of the AAAI paper: "The vanilla knowledge distillation is replaced with our
patch-level knowledge selection"): alpha L_kd becomes lambda_pks L_pks (lambda_pks = 10), every other term
unchanged, (1 - alpha) on L_clf included. L_pks is Eq. 2-3 (``ncil.methods.pks``) on the patch tokens after
the SABs, student against the frozen old model, with the task embedding as [CLS] (see ``dytox_pks_loss``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ncil.methods.pks import patch_distances, patch_weights, pks_loss, pks_loss_code

DISTILLATIONS = ("kd", "pks", "kd+pks")  # kd: DyTox; pks: DyTox + PKS (the AAAI text); kd+pks: PKS added on top
CLASSIFICATION_FORMS = ("bce", "ce")
KD_REDUCTIONS = ("mean", "batchmean")
PKS_FORMS = ("paper", "code")
CLS_PAIRINGS = ("same_token", "last")


@dataclass(frozen=True)
class DyToxLossConfig:
    """The constants of DyTox's objective (released options/model/cifar_dytox.yaml and main.py defaults)."""

    distillation: str = "kd"  # kd (DyTox), pks (DyTox + PKS), kd+pks (method-spec 5.7's "added on top" reading)
    classification: str = "bce"  # bce (released bce_loss: true) or ce (softmax cross-entropy)
    divergence: float = 0.1  # lambda_div (released head_div: 0.1)
    kd_temperature: float = 1.0  # tau (released distillation_tau default)
    kd_reduction: str = "mean"  # mean over B x K_old elements (released) or batchmean (mean over rows)
    pks: float = 10.0  # lambda_pks (AAAI paper: lambda_pks = 10)
    pks_form: str = "paper"  # paper (Eq. 2-3) or code (method-spec 4.6 [code], DyTox variant)
    pks_weighting: str = "inverse"  # Eq. 2 (inverse), uniform, direct (Table 5)
    pks_p: int = 2  # norm of the [CLS]-to-patch distance in Eq. 2: 2 (paper), 1 (code)
    pks_detach: bool = False  # stop the gradient through the PKS weights (paper silent; code does not)
    cls_pairing: str = "same_token"  # Eq. 3's [CLS] term under DyTox, see dytox_pks_loss

    def __post_init__(self):
        for name, value, allowed in (("distillation", self.distillation, DISTILLATIONS),
                                     ("classification", self.classification, CLASSIFICATION_FORMS),
                                     ("kd_reduction", self.kd_reduction, KD_REDUCTIONS),
                                     ("pks_form", self.pks_form, PKS_FORMS),
                                     ("cls_pairing", self.cls_pairing, CLS_PAIRINGS)):
            if value not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")
        for name in ("divergence", "kd_temperature", "pks"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: expected a value >= 0, got {getattr(self, name)!r}")
        if self.kd_temperature == 0:
            raise ValueError("kd_temperature: expected a positive temperature, got 0")


def target_matrix(targets: torch.Tensor, n_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """Class indices (B,) -> one-hot (B, n_classes); soft targets (B, n_classes) pass through.

    The one-hot is a comparison with arange, not ``F.one_hot``, which checks the index range with a host
    read on the CPU."""
    if targets.ndim == 1:
        classes = torch.arange(n_classes, device=targets.device)
        return (targets.unsqueeze(1) == classes).to(dtype)  # (B, 1) == (K,) -> (B, K)
    if targets.ndim != 2 or targets.shape[1] != n_classes:
        raise ValueError(f"targets: expected (B,) indices or (B, {n_classes}) soft targets, got {tuple(targets.shape)}")
    return targets.to(dtype)


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, form: str = "bce") -> torch.Tensor:
    """L_clf over all K_tot logits (B, K_tot), a scalar.

    ``bce``: binary cross-entropy of sigmoid(logits) against the one-hot (or soft) targets, the mean over the
    B x K_tot elements (released ``bce_with_logits``). ``ce``: softmax cross-entropy, the mean over rows.
    """
    if form not in CLASSIFICATION_FORMS:
        raise ValueError(f"form: expected one of {CLASSIFICATION_FORMS}, got {form!r}")
    logits = logits.float()
    if form == "bce":
        return F.binary_cross_entropy_with_logits(logits, target_matrix(targets, logits.shape[1], logits.dtype))
    if targets.ndim == 1:
        return F.cross_entropy(logits, targets)
    return -(target_matrix(targets, logits.shape[1], logits.dtype) * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def divergence_targets(targets: torch.Tensor, n_old: int) -> torch.Tensor:
    """The divergence head's targets. Indices (B,): 0 for an old class (y < K_old), 1 + y - K_old for a new one.
    Soft targets (B, K_tot) -> (B, 1 + C_t): column 0 the mass of the old classes, then the new classes' columns."""
    if targets.ndim == 1:
        return torch.where(targets < n_old, torch.zeros_like(targets), targets - n_old + 1)
    return torch.cat([targets[:, :n_old].sum(dim=1, keepdim=True), targets[:, n_old:]], dim=1)


def divergence_loss(div_logits: torch.Tensor, targets: torch.Tensor, n_old: int, form: str = "bce") -> torch.Tensor:
    """L_div (unweighted), a scalar: ``classification_loss`` of the divergence head's logits (B, 1 + C_t)
    against ``divergence_targets``."""
    return classification_loss(div_logits, divergence_targets(targets, n_old), form)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
            reduction: str = "mean") -> torch.Tensor:
    """L_kd (unweighted), a scalar: tau^2 sum p_old (log p_old - log p_new) over the old classes, where
    p_old = softmax(teacher / tau) (B, K_old) and p_new = softmax(student[:, :K_old] / tau).

    ``reduction="mean"`` divides the sum by B x K_old (the released ``F.kl_div(..., reduction="mean")``);
    ``"batchmean"`` by B. The teacher has K_old columns; the student's first K_old columns are compared.
    """
    if reduction not in KD_REDUCTIONS:
        raise ValueError(f"reduction: expected one of {KD_REDUCTIONS}, got {reduction!r}")
    n_old = teacher_logits.shape[1]
    if student_logits.shape[0] != teacher_logits.shape[0] or student_logits.shape[1] < n_old:
        raise ValueError(f"expected student (B, >= K_old) and teacher (B, K_old) logits, got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    log_new = F.log_softmax(student_logits[:, :n_old].float() / temperature, dim=1)  # (B, K_old)
    log_old = F.log_softmax(teacher_logits.float() / temperature, dim=1)  # (B, K_old)
    total = (log_old.exp() * (log_old - log_new)).sum()
    denominator = teacher_logits.numel() if reduction == "mean" else teacher_logits.shape[0]
    return total / denominator * temperature ** 2


def kd_weight(n_old: int, n_total: int) -> float:
    """alpha = K_old / K_tot (released ``auto_kd``, after WA): weight of L_kd, and 1 - alpha of L_clf."""
    if not 0 <= n_old < n_total:
        raise ValueError(f"expected 0 <= n_old < n_total, got {n_old} and {n_total}")
    return n_old / n_total


def dytox_pks_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor],
                   cfg: DyToxLossConfig) -> torch.Tensor:
    """L_pks (unweighted) on DyTox's outputs, a scalar. ``student`` and ``teacher`` are ``DyToxNet`` outputs
    ("patches" (B, N, D) after the SABs, "embeddings" (B, t, D)); the teacher has one task fewer.

    The patch weights w (Eq. 2) come from the student's newest task embedding e_t (its [CLS] for the current
    task) and its patches, as in the repository's DyTox variant (method-spec 4.6).

    ``pks_form="code"``: ``pks_loss_code`` (weights with ``pks_p``, mean over rows and patches divided by N, no
    [CLS] term). ``pks_form="paper"``: Eq. 3, per row sum_i w_i ||P_t,i - P_t-1,i||_2 plus a [CLS] term, mean over
    rows. Under DyTox the [CLS] term needs a pairing (the paper has one [CLS]): ``cls_pairing="same_token"``
    (default) compares the student's and the teacher's embeddings of the teacher's newest task token,
    ||e_t-1(student) - e_t-1(teacher)||, one token under two models; ``"last"`` compares each model's newest
    embedding, ||e_t(student) - e_t-1(teacher)||, Eq. 3 read literally (``pks_loss`` itself).
    """
    s_cls = student["embeddings"][:, -1]  # (B, D): e_t of the student
    s_patches, t_patches = student["patches"], teacher["patches"]  # (B, N, D)
    if cfg.pks_form == "code":
        return pks_loss_code(s_cls, s_patches, t_patches, weighting=cfg.pks_weighting, p=cfg.pks_p,
                             detach_weights=cfg.pks_detach)
    n_old_tokens = teacher["embeddings"].shape[1]
    t_cls = teacher["embeddings"][:, -1]  # (B, D): e_t-1 of the teacher
    if cfg.cls_pairing == "last":
        return pks_loss(s_cls, s_patches, t_cls, t_patches, weighting=cfg.pks_weighting, p=cfg.pks_p,
                        detach_weights=cfg.pks_detach)
    w = patch_weights(s_cls, s_patches, weighting=cfg.pks_weighting, p=cfg.pks_p, detach=cfg.pks_detach)  # (B, N)
    patch_term = (w * patch_distances(s_patches, t_patches)).sum(dim=1)  # (B,)
    same = student["embeddings"][:, n_old_tokens - 1]  # (B, D): e_t-1 of the student
    cls_term = torch.linalg.vector_norm(same - t_cls, ord=2, dim=-1)  # (B,)
    return (patch_term + cls_term).mean()


def loss_terms(student: dict[str, torch.Tensor], targets: torch.Tensor, cfg: DyToxLossConfig,
               teacher: dict[str, torch.Tensor] | None = None, finetuning: bool = False) -> dict[str, torch.Tensor]:
    """The weighted terms of one step, name -> scalar; their sum is the loss.

    ``student``: the current ``DyToxNet``'s outputs on the batch; ``teacher``: the frozen old model's outputs
    on the same batch (None in task 1, and in balanced fine-tuning, where the released code distils
    nothing: ``finetuning_teacher`` off). ``finetuning=True`` drops the divergence term (``head_div_mode: tr``).

    Terms: "clf" = (1 - alpha) L_clf (alpha = 0 without a teacher); "kd" = alpha L_kd and/or
    "pks" = lambda_pks L_pks, as ``cfg.distillation`` says; "div" = lambda_div L_div when the student has a
    divergence head. DyTox and DyTox + PKS share "clf" and "div" exactly.
    """
    logits = student["logits"]
    n_total = logits.shape[1]
    n_old = teacher["logits"].shape[1] if teacher is not None else 0
    alpha = kd_weight(n_old, n_total)
    terms = {"clf": (1 - alpha) * classification_loss(logits, targets, cfg.classification)}
    if teacher is not None:
        if cfg.distillation in ("kd", "kd+pks"):
            terms["kd"] = alpha * kd_loss(logits, teacher["logits"], cfg.kd_temperature, cfg.kd_reduction)
        if cfg.distillation in ("pks", "kd+pks"):
            terms["pks"] = cfg.pks * dytox_pks_loss(student, teacher, cfg)
    div_logits = student.get("div_logits")
    if div_logits is not None and not finetuning and cfg.divergence > 0:
        n_old_div = n_total - (div_logits.shape[1] - 1)  # the classes before the current task
        terms["div"] = cfg.divergence * divergence_loss(div_logits, targets, n_old_div, cfg.classification)
    return terms


def total_loss(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """The sum of the weighted terms (a scalar tensor, on the terms' device)."""
    return torch.stack(list(terms.values())).sum()

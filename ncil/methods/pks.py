"""Patch-level Knowledge Selection (PKS), paper Eq. 2-3 (method-spec 4.6).

Pure tensor functions. Shapes: B = batch rows, N = patch tokens, D = embedding width.

Paper form (the default; `paper` preset):
    W_i = 1 / (||P_t,cls - P_t,i||_2 + eps)                             (Eq. 2)
    w_i = W_i / max_j W_j
    L_pks = sum_i w_i ||P_t,i - P_t-1,i||_2 + ||P_t,cls - P_t-1,cls||_2  (Eq. 3), averaged over the batch.

Released-code form (`official` preset, method-spec 4.6 [code] and Section 8 D3-D5): the weights use the
L1 distance to the pooled feature, there is no CLS term, and the sum is a mean over (B, N) divided by N again.
"""

from __future__ import annotations

import torch

WEIGHTINGS = ("inverse", "uniform", "direct")
REDUCTIONS = ("paper", "code")


def _check_options(weighting: str, p: int, eps: float) -> None:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")


def _check_tokens(cls: torch.Tensor, patches: torch.Tensor, cls_name: str, patches_name: str) -> None:
    if cls.ndim != 2 or patches.ndim != 3 or patches.shape[0] != cls.shape[0] or patches.shape[2] != cls.shape[1]:
        raise ValueError(
            f"expected {cls_name} (B, D) and {patches_name} (B, N, D), "
            f"got {tuple(cls.shape)} and {tuple(patches.shape)}"
        )


def patch_weights(
    cls: torch.Tensor,
    patches: torch.Tensor,
    *,
    weighting: str = "inverse",
    p: int = 2,
    eps: float = 1e-8,
    detach: bool = False,
) -> torch.Tensor:
    """Per-patch distillation weights w (B, N) from the CLS-to-patch distance (paper Eq. 2).

    cls (B, D), patches (B, N, D). distance_i = ||cls - patch_i||_p, p in {1, 2} (paper: 2; code: 1).

    * ``"inverse"`` (Eq. 2, default): W_i = 1 / (distance_i + eps), then w_i = W_i / max_j W_j. Values lie in
      (0, 1], the row maximum is exactly 1, and the weight decreases with the distance.
    * ``"uniform"``: every w_i = 1 (Table 5, first row).
    * ``"direct"``: w_i = distance_i / max_j distance_j (Table 5, second row: W_i proportional to the distance).
      The maximum is clamped below at ``eps`` so an all-zero row gives zeros instead of NaN.

    ``detach=True`` stops the gradient through the weights. The paper is silent; the released code does not
    detach (method-spec D4), hence the default False.
    """
    _check_options(weighting, p, eps)
    _check_tokens(cls, patches, "cls", "patches")
    if weighting == "uniform":
        return torch.ones(patches.shape[:2], dtype=patches.dtype, device=patches.device)  # (B, N)
    if detach:
        cls, patches = cls.detach(), patches.detach()
    distance = torch.linalg.vector_norm(cls.unsqueeze(1) - patches, ord=p, dim=-1)  # (B, 1, D) - (B, N, D) -> (B, N)
    if weighting == "inverse":
        raw = 1.0 / (distance + eps)  # (B, N), Eq. 2
        return raw / raw.amax(dim=1, keepdim=True)  # (B, N) / (B, 1)
    return distance / distance.amax(dim=1, keepdim=True).clamp_min(eps)  # "direct": (B, N) / (B, 1)


def patch_distances(student_patches: torch.Tensor, teacher_patches: torch.Tensor) -> torch.Tensor:
    """D[b, i] = ||P_t[b, i] - P_t-1[b, i]||_2, a plain (not squared) L2 norm: (B, N, D) x 2 -> (B, N)."""
    if student_patches.ndim != 3 or student_patches.shape != teacher_patches.shape:
        raise ValueError(
            f"expected student_patches and teacher_patches of one shape (B, N, D), "
            f"got {tuple(student_patches.shape)} and {tuple(teacher_patches.shape)}"
        )
    return torch.linalg.vector_norm(student_patches - teacher_patches, ord=2, dim=-1)  # (B, N)


def pks_loss(
    student_cls: torch.Tensor,
    student_patches: torch.Tensor,
    teacher_cls: torch.Tensor,
    teacher_patches: torch.Tensor,
    *,
    weighting: str = "inverse",
    p: int = 2,
    detach_weights: bool = False,
    eps: float = 1e-8,
    reduction: str = "paper",
    row_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_pks of paper Eq. 3, a scalar (unweighted; the caller multiplies by lambda_pks).

    student_* come from the current model F_t, teacher_* from the frozen old model F_t-1;
    *_cls (B, D), *_patches (B, N, D). The weights w (Eq. 2, see ``patch_weights``) come from the student.

    ``reduction="paper"`` (default): per sample, sum_i w_i ||P_t,i - P_t-1,i||_2 + ||P_t,cls - P_t-1,cls||_2,
    then the mean over the batch. ``reduction="code"``: the released code's form, see ``pks_loss_code``
    (teacher_cls is then unused; pass p=1 as well to match the code fully).
    Returns 0 when the student equals the teacher. ``row_mask`` (B,) of 0/1 (static shapes, issue 21): the
    mean over the rows with 1 only (``masked_mean``), as over the compacted batch.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if reduction == "code":
        return pks_loss_code(
            student_cls, student_patches, teacher_patches,
            weighting=weighting, p=p, detach_weights=detach_weights, eps=eps, row_mask=row_mask,
        )
    if student_cls.shape != teacher_cls.shape:
        raise ValueError(f"student_cls and teacher_cls differ in shape: {tuple(student_cls.shape)} vs {tuple(teacher_cls.shape)}")
    w = patch_weights(student_cls, student_patches, weighting=weighting, p=p, eps=eps, detach=detach_weights)  # (B, N)
    patch_term = (w * patch_distances(student_patches, teacher_patches)).sum(dim=1)  # (B, N) -> (B,)
    cls_term = torch.linalg.vector_norm(student_cls - teacher_cls, ord=2, dim=-1)  # (B, D) -> (B,)
    if row_mask is not None:
        return masked_mean(patch_term + cls_term, row_mask)
    return (patch_term + cls_term).mean()  # (B,) -> ()


def pks_loss_code(
    student_cls: torch.Tensor,
    student_patches: torch.Tensor,
    teacher_patches: torch.Tensor,
    *,
    weighting: str = "inverse",
    p: int = 1,
    detach_weights: bool = False,
    eps: float = 1e-8,
    row_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The released code's PKS (method-spec 4.6 [code]; Section 8 D3 and D5), a scalar.

    L = (1 / (B N)) * sum_{b,i} w[b,i] D[b,i] / N, i.e. the mean over (B, N) divided by N again, with
    D[b,i] = ||P_t[b,i] - P_t-1[b,i]||_2 and w from ``patch_weights`` using the L1 distance (p=1 by default).
    There is no CLS term (the code distils the pooled feature through the feature KD instead).
    student_cls (B, D) is the current model's CLS / pooled feature; *_patches (B, N, D). ``row_mask`` (B,) of 0/1
    (static shapes, issue 21): the mean over the rows with 1 only (``masked_mean`` of the rows' means over N).
    """
    w = patch_weights(student_cls, student_patches, weighting=weighting, p=p, eps=eps, detach=detach_weights)  # (B, N)
    n_patches = student_patches.shape[1]
    if row_mask is not None:
        return masked_mean((w * patch_distances(student_patches, teacher_patches)).mean(dim=1), row_mask) / n_patches
    return (w * patch_distances(student_patches, teacher_patches)).mean() / n_patches  # (B, N) -> ()


def masked_mean(values: torch.Tensor, row_mask: torch.Tensor) -> torch.Tensor:
    """sum(row_mask * values) / sum(row_mask) for values (B,) and row_mask (B,) of 0/1, a scalar: the mean over
    the rows with 1, as over a compacted batch (static shapes, issue 21). The count is clamped at 1, so no row
    counted gives 0, not NaN; it stays on the device (no host sync). A row with 0 gets exactly zero gradient."""
    if values.ndim != 1 or row_mask.shape != values.shape:
        raise ValueError(f"expected values (B,) and row_mask (B,), got {tuple(values.shape)} and {tuple(row_mask.shape)}")
    mask = row_mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1)

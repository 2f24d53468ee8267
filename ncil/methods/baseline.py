"""The paper's baseline pieces, taken from PASS (method-spec 2.3, 4.3; protoAug lives in prototypes.py).

Pure tensor functions: rotation self-supervision labels, the rotation-0 evaluation slice, and PASS's
feature distillation.
"""

from __future__ import annotations

import torch

N_ROTATIONS = 4


def rotate_batch(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PASS rotation augmentation (method-spec 2.3): x (B, C, H, W), y (B,) -> x4 (4B, C, H, W), y4 (4B,).

    Sample-major order: row 4i + k is sample i rotated k x 90 degrees in the H-W plane
    (``torch.rot90(x_i, k, dims=(1, 2))`` per sample), with label 4 y_i + k. Needs square images (H == W).
    """
    if x.ndim != 4 or y.shape != (x.shape[0],):
        raise ValueError(f"expected x (B, C, H, W) and y (B,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[2] != x.shape[3]:
        raise ValueError(f"x must have square images (H == W) to stack rotations, got {tuple(x.shape)}")
    rotated = torch.stack([torch.rot90(x, k, dims=(2, 3)) for k in range(N_ROTATIONS)], dim=1)  # (B, 4, C, H, W)
    x4 = rotated.reshape(-1, *x.shape[1:])  # (B, 4, C, H, W) -> (4B, C, H, W), row 4i + k
    ks = torch.arange(N_ROTATIONS, dtype=y.dtype, device=y.device)  # (4,)
    y4 = (N_ROTATIONS * y.unsqueeze(1) + ks).reshape(-1)  # (B, 1) + (4,) -> (B, 4) -> (4B,)
    return x4, y4


def rotation0_logits(logits: torch.Tensor) -> torch.Tensor:
    """Evaluation slice of a rotation-expanded head: logits (B, 4K) -> (B, K), the columns 4c (rotation 0)."""
    if logits.ndim != 2 or logits.shape[1] % N_ROTATIONS != 0:
        raise ValueError(f"expected logits (B, 4K), got {tuple(logits.shape)}")
    return logits[:, ::N_ROTATIONS]  # (B, 4K) -> (B, K)


def feature_distillation(student: torch.Tensor, teacher: torch.Tensor, row_mask: torch.Tensor | None = None) -> torch.Tensor:
    """PASS feature KD (method-spec 4.3): ||student - teacher||_F over the whole (B, D) matrix, a scalar.

    The Frobenius norm is the square root of the sum of squares over all B x D entries, NOT a per-sample mean,
    so it grows with sqrt(B): doubling the batch with duplicated rows multiplies it by sqrt(2).
    Unweighted; the caller multiplies by lambda_fkd (10).

    ``row_mask`` (B,) of 0/1 (static shapes, issue 21): the norm over the rows with 1 only, i.e. the norm of the
    compacted (B_kept, D) matrix; a row with 0 contributes nothing, gradient included (its difference is
    multiplied by 0 before the norm).
    """
    if student.ndim != 2 or student.shape != teacher.shape:
        raise ValueError(f"expected student and teacher of one shape (B, D), got {tuple(student.shape)} and {tuple(teacher.shape)}")
    if row_mask is not None:
        return torch.linalg.vector_norm((student - teacher) * row_mask.to(student.dtype).unsqueeze(1), ord=2)
    return torch.linalg.vector_norm(student - teacher, ord=2)  # (B, D) flattened -> ()

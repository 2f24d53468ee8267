"""Class centers (prototypes) of features: paper Section "Prototype Restoration", mu_k of Eq. 4."""

from __future__ import annotations

import torch


def class_centers(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean feature of every class present: features (N, D), labels (N,) -> (classes (K,), centers (K, D)).

    Classes come back sorted ascending.
    """
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"expected features (N, D) and labels (N,), got {tuple(features.shape)} and {tuple(labels.shape)}")
    classes, inverse = torch.unique(labels, sorted=True, return_inverse=True)  # (K,), (N,)
    onehot = torch.nn.functional.one_hot(inverse, len(classes)).to(features.dtype)  # (N, K)
    sums = onehot.T @ features  # (K, D); a matmul, deterministic on every device
    counts = onehot.sum(0)  # (K,)
    return classes, sums / counts.unsqueeze(1)

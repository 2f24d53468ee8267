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


# --- Prototype Restoration (paper Eq. 4-6, method-spec 4.7) and PASS protoAug (method-spec 4.5, 5.4) ---

OFFSET_REDUCTIONS = ("paper", "code")


def _check_same_2d(a: torch.Tensor, b: torch.Tensor, a_name: str, b_name: str) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"expected {a_name} and {b_name} of one shape (M, D), got {tuple(a.shape)} and {tuple(b.shape)}")


def class_offsets(features: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Prototype offsets O = F(x) - mu_y of paper Eq. 4: features (B, D), centers (B, D) (mu_y per row) -> (B, D)."""
    _check_same_2d(features, centers, "features", "centers")
    return features - centers


def restore_prototypes(old_centers: torch.Tensor, features: torch.Tensor, own_centers: torch.Tensor) -> torch.Tensor:
    """Restored old prototypes of paper Eq. 5: mu_old + (F_t(x) - mu_y), all (B, D) -> (B, D).

    Row b restores one old class: old_centers[b] is that old class's center, features[b] a current sample and
    own_centers[b] the center of that sample's own class. At zero offset the result is old_centers exactly.
    """
    _check_same_2d(old_centers, features, "old_centers", "features")
    return old_centers + class_offsets(features, own_centers)


def offset_loss(student_offsets: torch.Tensor, teacher_offsets: torch.Tensor, *, reduction: str = "paper") -> torch.Tensor:
    """Offset consistency loss L_pr of paper Eq. 4, a scalar.

    student_offsets (M, D): current-model offsets O_t on half S1; teacher_offsets (M, D): old-model offsets
    O_t-1 on half S2; row k of each forms pair (i_k, j_k). Eq. 4 is (1/sz) sum_k MSE(O_t,i_k, O_t-1,j_k) with a
    per-pair MSE averaged over the D dimensions, i.e. the element mean over (M, D). 0 for equal offsets.
    ``reduction="code"`` divides that mean by D again (released code, method-spec 4.7 [code], D7).
    """
    if reduction not in OFFSET_REDUCTIONS:
        raise ValueError(f"reduction must be one of {OFFSET_REDUCTIONS}, got {reduction!r}")
    _check_same_2d(student_offsets, teacher_offsets, "student_offsets", "teacher_offsets")
    loss = (student_offsets - teacher_offsets).pow(2).mean()  # (M, D) -> ()
    return loss / student_offsets.shape[1] if reduction == "code" else loss


def split_halves(n: int, generator: torch.Generator, *, sort: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Random disjoint halves (S1, S2) of rows 0..n-1 for Eq. 4, each of size n // 2, on the generator's device.

    One permutation drawn from ``generator`` (deterministic given its state): S1 = its first n // 2 entries,
    S2 the next n // 2; pair k is (S1[k], S2[k]). For odd n one row is left out. ``sort=True`` sorts each half
    ascending, the released code's pairing (method-spec 4.7 [code]).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n!r}")
    half = n // 2
    perm = torch.randperm(n, generator=generator, device=generator.device)  # (n,)
    idx1, idx2 = perm[:half], perm[half : 2 * half]  # (n//2,), (n//2,)
    if sort:
        idx1, idx2 = idx1.sort().values, idx2.sort().values
    return idx1, idx2


def gaussian_radius(features: torch.Tensor) -> torch.Tensor:
    """One class's PASS radius contribution rho_c = trace(Sigma_c) / D (method-spec 5.4), a 0-dim tensor.

    features (N, D), N >= 2, of one class; Sigma_c is the unbiased (N - 1) sample covariance, so rho_c is the
    mean per-dimension unbiased variance. The global radius is r = sqrt(mean of rho_c over classes), see
    ``global_radius``.
    """
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"expected features (N, D) with N >= 2, got {tuple(features.shape)}")
    return features.var(dim=0, unbiased=True).mean()  # (N, D) -> (D,) -> ()


def global_radius(contributions: torch.Tensor) -> torch.Tensor:
    """PASS global radius r = sqrt(mean_c rho_c) from the per-class ``gaussian_radius`` values (C,) -> ()."""
    if contributions.ndim != 1 or contributions.numel() == 0:
        raise ValueError(f"expected contributions (C,) with C >= 1, got {tuple(contributions.shape)}")
    return contributions.mean().sqrt()


def augment_prototypes(
    centers: torch.Tensor, class_ids: torch.Tensor, radius: float | torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """PASS protoAug (method-spec 4.5): p~_j = mu_{c_j} + r * eps_j with eps_j ~ N(0, I_D).

    centers (K, D) indexed by row; class_ids (M,) row indices into centers; radius r a scalar. The noise
    (M, D) is drawn from ``generator`` on its own device (deterministic given its state) and moved to
    centers' device. At radius 0 the result equals centers[class_ids] exactly. Returns (M, D).
    """
    if centers.ndim != 2 or class_ids.ndim != 1:
        raise ValueError(f"expected centers (K, D) and class_ids (M,), got {tuple(centers.shape)} and {tuple(class_ids.shape)}")
    chosen = centers[class_ids.to(centers.device)]  # (M, D)
    noise = torch.randn(chosen.shape, generator=generator, dtype=centers.dtype, device=generator.device)  # (M, D)
    return chosen + radius * noise.to(centers.device)

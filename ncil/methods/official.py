"""Loss terms and prototype bookkeeping of the `official` preset: the released code's forms (method-spec 4.3-4.8,
5.4; Section 8 D5-D11). Pure functions; randomness only from a passed ``torch.Generator`` or pre-drawn indices.

Terms of one step t >= 1 (4.8): L = L_clf + 10 L_fkd + 10 L_proto + 1 L_tr + lambda_con L_con + 1 L_pks
+ 1 L_off + 0.1 L_rest; task 0: L_clf + lambda_con L_con. The contrastive loss lives in ``contrastive``,
mixup in ``mixup``, the head columns in ``head_layout``; L_fkd is ``baseline.feature_distillation``.

Draw order of the sampling helpers (all on the generator's device):
* ``sample_proto_aug``: ``torch.randint(0, K_old, (n,))`` (classes), then ``torch.randn(n, d)`` (noise, drawn by
  ``prototypes.augment_prototypes``). The released code draws both from NumPy's global RNG instead.
* ``pr_split_official``: one ``torch.randperm(n)`` (``prototypes.split_halves``; the code uses python ``random``).
* ``restoration_draws``: ``torch.randint(0, K_old, (n,))`` (classes), then ``torch.randperm(n)`` (the pairing),
  the code's order.
A caller reproducing one byte stream must fix the order of these calls within a step and document it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ncil.methods.head_layout import HeadLayout, take_columns
from ncil.methods.pks import masked_mean, pks_loss_code
from ncil.methods.prototypes import augment_prototypes, class_centers, gaussian_radius, global_radius, offset_loss, split_halves

# The weight of the restoration CE inside L_pr (the code's ratio_old; 4.7 [code]). The other weights are method
# options, owned by conf/preset/method/official.yaml (the 4.8 table).
PR_RESTORE_WEIGHT = 0.1


# --- transfer layer (3.4, 4.4) ----------------------------------------------------------------------------------


def identity_transfer(d: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> nn.Linear:
    """The transfer layer T as recreated at every task start: Linear(d, d) with W = I, b = 0 (spec 3.4).

    Built with ``nn.utils.skip_init``, so it consumes no random draws (the global RNG is untouched).
    """
    if not isinstance(d, int) or d < 1:
        raise ValueError(f"transfer width d must be a positive int, got {d!r}")
    layer = nn.utils.skip_init(nn.Linear, d, d, device="cpu" if device is None else device, dtype=dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(d, device=layer.weight.device, dtype=layer.weight.dtype))
        layer.bias.zero_()
    return layer


def transfer_loss(features: torch.Tensor, old_features: torch.Tensor, transfer: Callable[[torch.Tensor], torch.Tensor],
                  row_mask: torch.Tensor | None = None) -> torch.Tensor:
    """L_tr' (4.4): (1/R) sum_b ||f_t(x_b) - T(f_{t-1}(x_b))||_2, a scalar; features, old_features (R, d).

    All R = B' rows (rotated and mixed). Gradient reaches ``features`` and T (old_features come from the frozen
    old model). Unweighted (lambda_tr = 1). ``row_mask`` (R,) of 0/1 (static shapes, issue 21): the mean over
    the rows with 1 only (``pks.masked_mean``).
    """
    if features.ndim != 2 or features.shape != old_features.shape:
        raise ValueError(f"expected features and old_features of one shape (R, d), got {tuple(features.shape)} and {tuple(old_features.shape)}")
    norms = torch.linalg.vector_norm(features - transfer(old_features), ord=2, dim=-1)  # (R, d) -> (R,)
    return norms.mean() if row_mask is None else masked_mean(norms, row_mask)  # ()


# --- PKS, code form (4.6 [code]) --------------------------------------------------------------------------------


def pks_official(featuremaps: torch.Tensor, old_featuremaps: torch.Tensor, features: torch.Tensor,
                 row_mask: torch.Tensor | None = None) -> torch.Tensor:
    """L_pks (4.6 [code]): featuremaps, old_featuremaps (R, N, d), features (R, d) = the current pooled feature.

    D = ||M_t - M_{t-1}||_2 and G = ||M_t - f_t||_1 per position, w = (1/(G + 1e-8)) / max_i (1/(G + 1e-8)) with
    no stop-gradient, L = sum(w D) / (R N) / N. No CLS term; weight 1. Over all R rows, rotated and mixed
    (``row_mask`` (R,) of 0/1: over the rows with 1 only; static shapes, issue 21).
    """
    return pks_loss_code(features, featuremaps, old_featuremaps, weighting="inverse", p=1, detach_weights=False, eps=1e-8,
                         row_mask=row_mask)


# --- PR, code form (4.7 [code]) ---------------------------------------------------------------------------------


def pr_centers_official(stored_centers: torch.Tensor, new_centers: torch.Tensor) -> torch.Tensor:
    """PR's class-centre table mu (K_tot, d), frozen for the task (4.7 [code], D8): rows 0..K_old-1 the stored
    prototypes (K_old, d) as they are, rows K_old.. the new classes' mean features (C_t, d) from the model at the
    start of the task (eval mode, test transform, unrotated)."""
    if stored_centers.ndim != 2 or new_centers.ndim != 2 or stored_centers.shape[1] != new_centers.shape[1]:
        raise ValueError(f"expected stored_centers (K_old, d) and new_centers (C_t, d), got {tuple(stored_centers.shape)} and {tuple(new_centers.shape)}")
    return torch.cat([stored_centers.to(new_centers), new_centers])


def pr_offsets(features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor, rotations: int = 4) -> torch.Tensor:
    """O_j = f(x_j) - mu_{y_j // rot} (4.7 [code]): features (n, d) of the valid (rotated) rows, labels (n,)
    rotation-expanded 4y + k, centers (K_tot, d) -> (n, d). Rotated views are measured against the unrotated centre."""
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"expected features (n, d) and labels (n,), got {tuple(features.shape)} and {tuple(labels.shape)}")
    return features - centers[torch.div(labels, rotations, rounding_mode="floor")]


def pr_split_official(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The code's halves (4.7 [code]): S1 = a random n/2-subset of the valid rows sorted ascending, S2 = the
    sorted complement; pair S1[k] with S2[k]. n must be even (it is 4B). One ``torch.randperm(n)`` draw."""
    if n % 2:
        raise ValueError(f"the official PR split needs an even number of valid rows, got {n!r}")
    return split_halves(n, generator, sort=True)


def offset_loss_official(new_offsets: torch.Tensor, old_offsets: torch.Tensor) -> torch.Tensor:
    """L_off (4.7 [code], D7): new_offsets O^s[S1] (n/2, d), old_offsets O^T[S2] (n/2, d) -> element-wise MSE / d."""
    return offset_loss(new_offsets, old_offsets, reduction="code")


def restoration_draws(n: int, n_old: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws of the restoration CE: classes c_j ~ U{0..K_old-1} (n,), then a permutation pi (n,) (the code's order)."""
    if n_old < 1:
        raise ValueError(f"restoration needs at least one old class, got n_old={n_old!r}")
    classes = torch.randint(0, n_old, (n,), generator=generator, device=generator.device)  # (n,)
    perm = torch.randperm(n, generator=generator, device=generator.device)  # (n,)
    return classes, perm


def restoration_official(
    head: Callable[[torch.Tensor], torch.Tensor],
    centers: torch.Tensor,
    offsets: torch.Tensor,
    classes: torch.Tensor,
    perm: torch.Tensor,
    layout: HeadLayout,
) -> torch.Tensor:
    """L_rest' (4.7 [code], D9), unweighted (the total multiplies by ``PR_RESTORE_WEIGHT`` = 0.1), a scalar.

    r_j = mu_{c_j} + O^s_{pi(j)}: centers (K >= K_old, d) as stored (NOT passed through T), offsets O^s (n, d) of
    the current model (gradient flows through them), classes (n,) old classes, perm (n,). The logits h(r_j) are
    read on ``layout.old_rotation0_columns`` only (columns 0, 4, .., 4(K_old-1)); CE against c_j, no temperature.
    """
    if offsets.ndim != 2 or classes.shape != (offsets.shape[0],) or perm.shape != classes.shape:
        raise ValueError(f"expected offsets (n, d), classes (n,), perm (n,), got {tuple(offsets.shape)}, {tuple(classes.shape)}, {tuple(perm.shape)}")
    if centers.shape[0] < layout.n_old:
        raise ValueError(f"centers must hold the {layout.n_old} old classes, got {tuple(centers.shape)}")
    restored = centers[classes.to(centers.device)] + offsets[perm.to(offsets.device)]  # (n, d)
    logits = take_columns(head(restored), layout.old_rotation0_columns)  # (n, K_old)
    return F.cross_entropy(logits, classes.to(logits.device))


# --- protoAug, code form (4.5) ----------------------------------------------------------------------------------


def sample_proto_aug(
    centers: torch.Tensor, radius: float | torch.Tensor, generator: torch.Generator, n: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """The n noisy raw old prototypes p~_j = mu_{c_j} + r eps_j (4.5) -> (protos (n, d), classes (n,)).

    centers (K_old, d) the stored prototypes. Draws: ``torch.randint(0, K_old, (n,))`` then ``torch.randn(n, d)``.
    The same p~ serve as contrastive keys (``contrastive.contrastive_keys``).
    """
    if centers.ndim != 2 or centers.shape[0] < 1:
        raise ValueError(f"expected centers (K_old, d) with K_old >= 1, got {tuple(centers.shape)}")
    classes = torch.randint(0, centers.shape[0], (n,), generator=generator, device=generator.device)  # (n,)
    return augment_prototypes(centers, classes, radius, generator), classes


def proto_aug_loss(
    head: Callable[[torch.Tensor], torch.Tensor],
    transfer: Callable[[torch.Tensor], torch.Tensor],
    protos: torch.Tensor,
    classes: torch.Tensor,
    layout: HeadLayout,
    temperature: float = 0.1,
) -> torch.Tensor:
    """L_proto' (4.5), unweighted (lambda_proto = 10), a scalar, from pre-drawn protos p~ (n, d) and classes (n,).

    u = stopgrad(T(p~)); CE(h(u)[:, real_columns] / temperature, rot * c). Only the head gets gradient.
    """
    if protos.ndim != 2 or classes.shape != (protos.shape[0],):
        raise ValueError(f"expected protos (n, d) and classes (n,), got {tuple(protos.shape)} and {tuple(classes.shape)}")
    mapped = transfer(protos).detach()  # (n, d)
    logits = take_columns(head(mapped), layout.real_columns)  # (n, rot * K_tot)
    return F.cross_entropy(logits / temperature, (layout.rotations * classes).to(logits.device))


def proto_aug_official(
    head: Callable[[torch.Tensor], torch.Tensor],
    transfer: Callable[[torch.Tensor], torch.Tensor],
    centers: torch.Tensor,
    radius: float | torch.Tensor,
    layout: HeadLayout,
    generator: torch.Generator,
    n: int = 64,
    temperature: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``sample_proto_aug`` then ``proto_aug_loss`` -> (loss, protos p~ (n, d), classes (n,)).

    The drawn p~ and classes come back for the contrastive keys of the same step (4.2).
    """
    protos, classes = sample_proto_aug(centers, radius, generator, n)
    return proto_aug_loss(head, transfer, protos, classes, layout, temperature), protos, classes


# --- prototype bookkeeping after a task (5.4, 3.4, D11) ---------------------------------------------------------


def map_prototypes(transfer: Callable[[torch.Tensor], torch.Tensor], centers: torch.Tensor) -> torch.Tensor:
    """T(mu_c) for every stored old prototype (K_old, d) -> (K_old, d), without gradient (5.4 step 1)."""
    with torch.no_grad():
        return transfer(centers).detach()


def update_prototypes_official(
    old_centers: torch.Tensor,
    old_rhos: torch.Tensor,
    new_centers: torch.Tensor,
    new_rhos: torch.Tensor,
    transfer: Callable[[torch.Tensor], torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_build_protos`` after task t (5.4) -> (centers (K_tot, d), rhos (K_tot,), radius ()).

    * old prototypes old_centers (K_old, d) pass through the task's trained transfer layer T (t >= 1; pass
      ``transfer=None`` after task 0, where nothing is mapped);
    * the new task's prototypes new_centers (C_t, d) (mean feature of the trained model, eval mode, test
      transform, unrotated) are appended as they are, NOT mapped;
    * rho: old_rhos (K_old,) are kept, never remapped; new_rhos (C_t,) = trace(Sigma_c) / d
      (``prototypes.gaussian_radius``) appended; radius r = sqrt(mean of all K_tot rhos), recomputed every task.
    """
    if old_centers.ndim != 2 or new_centers.ndim != 2 or old_centers.shape[1] != new_centers.shape[1]:
        raise ValueError(f"expected old_centers (K_old, d) and new_centers (C_t, d), got {tuple(old_centers.shape)} and {tuple(new_centers.shape)}")
    if old_rhos.shape != (old_centers.shape[0],) or new_rhos.shape != (new_centers.shape[0],):
        raise ValueError(f"expected old_rhos (K_old,) and new_rhos (C_t,), got {tuple(old_rhos.shape)} and {tuple(new_rhos.shape)}")
    mapped = map_prototypes(transfer, old_centers) if transfer is not None and old_centers.shape[0] else old_centers
    centers = torch.cat([mapped.to(new_centers), new_centers])  # (K_tot, d)
    rhos = torch.cat([old_rhos.to(new_rhos), new_rhos])  # (K_tot,)
    return centers, rhos, global_radius(rhos)


def class_statistics(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class prototype and radius contribution of the new classes (5.4 step 2): features (N, d) of the trained
    model (eval mode, test transform, unrotated), labels (N,) -> (classes (C,) ascending, centers (C, d), rhos (C,)),
    rho_c = trace(unbiased Sigma_c) / d. Every class needs at least 2 samples."""
    classes, centers = class_centers(features, labels)
    rhos = torch.stack([gaussian_radius(features[labels == c]) for c in classes.tolist()])  # (C,)
    return classes, centers, rhos


# --- classification (4.1) -----------------------------------------------------------------------------------------


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 0.1,
                        row_mask: torch.Tensor | None = None) -> torch.Tensor:
    """L_clf (4.1): CE(z / tau, Y') over all R = B' rows and ALL head columns (real and mixup); logits (R, n_outputs).

    ``row_mask`` (R,) of 0/1 (static shapes, issue 21): the mean of the per-row CE over the rows with 1 only
    (``pks.masked_mean``); the other rows' targets must still be valid columns, and get exactly zero gradient.
    """
    if logits.ndim != 2 or targets.shape != (logits.shape[0],):
        raise ValueError(f"expected logits (R, n_outputs) and targets (R,), got {tuple(logits.shape)} and {tuple(targets.shape)}")
    if row_mask is not None:
        return masked_mean(F.cross_entropy(logits / temperature, targets, reduction="none"), row_mask)
    return F.cross_entropy(logits / temperature, targets)
